"""How much of refinement's judged gain a quantized bundle keeps: two `ortrefine eval` reports
(full precision, quantized) of the same prompts, systems and judge, compared prompt by prompt.

Each report's own paired Δ is taken over the prompts where *its* two outputs are clean, so the
fp32 and int4 figures come from different prompt sets, and a ratio of the two mixes the bundles'
differences with the sets' differences. Here every figure is over the prompts where all four
outputs (full baseline, full system, quantized baseline, quantized system) are clean, and the
question "does int4 keep ≥ 80 % of the gain" is answered by the interval of
mean(gain_quant − 0.8 · gain_full), which stays finite where the ratio's denominator nears 0.
Several report pairs (prompt sets) can be pooled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.evaluate.report import read_report
from ortrefine.evaluate.stats import Interval, bootstrap_mean

__all__ = ["GainKept", "Ratio", "gain_kept", "markdown", "read_report"]


@dataclass
class Ratio:
    """A ratio of two means with its paired percentile-bootstrap interval (prompts resampled)."""

    value: float | None
    low: float | None
    high: float | None


@dataclass
class GainKept:
    """The quantized bundle's judged gain against the full-precision bundle's, on common clean prompts.

    gain_full: full system − full baseline; gain_quant: quantized system − quantized baseline (each
    bundle against its own start); gain_quant_vs_full_baseline: quantized system − full baseline
    (what a user switching to int4 gets against the fp32 greedy they had).
    kept / kept_vs_full_baseline: the ratios of those means to gain_full.
    margin / margin_vs_full_baseline: mean(gain − threshold · gain_full); verdict: "met" when its
    interval lies above 0, "not met" when below, else "undecided".
    degenerate: per bundle and system, how many outputs the report's checks call degenerate.
    """

    judge: str
    system: str
    baseline: str
    threshold: float
    reports: list[dict[str, str]]
    n_prompts: int
    n_clean: int
    gain_full: Interval
    gain_quant: Interval
    gain_quant_vs_full_baseline: Interval
    kept: Ratio
    kept_vs_full_baseline: Ratio
    margin: Interval
    margin_vs_full_baseline: Interval
    verdict: str
    verdict_vs_full_baseline: str
    degenerate: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gain_kept(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], system: str | Sequence[str] = "refine",
              baseline: str | None = None, judge: str | None = None, threshold: float = 0.8, seed: int = 0, resamples: int = 2000,
              names: Sequence[tuple[str, str]] | None = None, quant_system: str | Sequence[str] | None = None) -> GainKept:
    """Pool (full, quantized) report pairs and compare their judged gains on common clean prompts.

    system: the compared system's name in the full reports: one for all pairs, or one per pair
    (stored runs of different days name the same default differently). quant_system: its name
    in the quantized reports where that differs (default `system`), likewise one or one per pair.
    baseline: default the reports' own baseline (they must agree); judge: default the one judge
    every report has. names: a label for each report (its path), used in errors and the result.
    """
    if not pairs:
        raise ConfigError("give at least one pair of reports (full precision, quantized)")
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold is a share of the full-precision gain, in (0, 1], got {threshold}")
    names = list(names) if names is not None else [(f"full[{k}]", f"quant[{k}]") for k in range(len(pairs))]
    full_systems = _per_pair(system, len(pairs), "--system")
    quant_systems = _per_pair(quant_system, len(pairs), "--quant-system") if quant_system else full_systems
    system = ", ".join(dict.fromkeys(full_systems))  # the result's label
    baseline = baseline or _common_baseline(pairs)
    judge = judge or _common_judge(pairs)
    rows: list[tuple[float, float, float]] = []
    degenerate = {f"{b}/{s}": 0 for b in ("full", "quant") for s in (baseline, system)}
    n_prompts = 0
    for (full, quant), (full_name, quant_name), f_sys, q_sys in zip(pairs, names, full_systems, quant_systems):
        if baseline in (f_sys, q_sys):
            raise ConfigError(f"the compared system and the baseline are both {baseline!r}: name another --system or --baseline")
        f_out = {(i, system if s == f_sys else s): o for (i, s), o in _outputs(full, full_name, (baseline, f_sys), judge).items()}
        q_out = {(i, system if s == q_sys else s): o for (i, s), o in _outputs(quant, quant_name, (baseline, q_sys), judge).items()}
        if set(f_out) != set(q_out):
            raise ConfigError(f"{full_name} and {quant_name} are not runs of the same prompts and systems")
        _check_same_run(full, quant, full_name, quant_name)
        ids = sorted({i for i, _ in f_out})
        n_prompts += len(ids)
        for i in ids:
            four = {(bundle, s): out[(i, s)] for bundle, out in (("full", f_out), ("quant", q_out)) for s in (baseline, system)}
            for (bundle, s), o in four.items():
                degenerate[f"{bundle}/{s}"] += bool(o["degenerate"])
            if any(o["degenerate"] for o in four.values()):
                continue
            score = {key: float(o["judges"][judge]["mean"]) for key, o in four.items()}
            rows.append((score["full", system] - score["full", baseline], score["quant", system] - score["quant", baseline],
                         score["quant", system] - score["full", baseline]))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    full_gain, quant_gain, quant_vs_full = arr[:, 0], arr[:, 1], arr[:, 2]
    margin = bootstrap_mean(quant_gain - threshold * full_gain, seed, resamples)
    margin_vs = bootstrap_mean(quant_vs_full - threshold * full_gain, seed, resamples)
    return GainKept(
        judge=judge, system=system, baseline=baseline, threshold=threshold,
        reports=[{"full": a, "quant": b} for a, b in names], n_prompts=n_prompts, n_clean=len(rows),
        gain_full=bootstrap_mean(full_gain, seed, resamples), gain_quant=bootstrap_mean(quant_gain, seed, resamples),
        gain_quant_vs_full_baseline=bootstrap_mean(quant_vs_full, seed, resamples),
        kept=_ratio(quant_gain, full_gain, seed, resamples), kept_vs_full_baseline=_ratio(quant_vs_full, full_gain, seed, resamples),
        margin=margin, margin_vs_full_baseline=margin_vs, verdict=_verdict(margin), verdict_vs_full_baseline=_verdict(margin_vs),
        degenerate=degenerate)


def _outputs(report: dict[str, Any], name: str, systems: Sequence[str], judge: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The report's outputs of `systems`, keyed by (prompt id, system), each checked for what is read."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for o in report["outputs"]:
        if not isinstance(o, dict) or o.get("system") not in systems:
            continue
        key = (str(o.get("id")), o["system"])
        if key in found:
            raise ConfigError(f"{name}: prompt {key[0]!r} has two outputs of system {key[1]!r}")
        scored = (o.get("judges") or {}).get(judge) or {}
        if not isinstance(o.get("degenerate"), bool) or not isinstance(scored.get("mean"), (int, float)):
            raise ConfigError(f"{name}: output {key[0]!r} of {key[1]!r} has no degenerate flag or no {judge} score: a partial report")
        found[key] = o
    for s in systems:
        if not any(k[1] == s for k in found):
            have = sorted({str(o.get("system")) for o in report["outputs"] if isinstance(o, dict)})
            raise ConfigError(f"{name} has no system {s!r} (it has: {', '.join(have) or 'none'})")
    ids = {k[0] for k in found}
    if len(found) != len(ids) * len(systems):
        raise ConfigError(f"{name}: not every prompt has an output of every compared system")
    return found


def _per_pair(value: str | Sequence[str], n: int, option: str) -> list[str]:
    """A name for every report pair: one given for all, or exactly one per pair."""
    values = [value] if isinstance(value, str) else list(value)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ConfigError(f"give {option} once, or once per pair of reports ({n}); got {len(values)}")
    return values


def _common_baseline(pairs: Sequence[tuple[dict, dict]]) -> str:
    seen = {r["meta"].get("baseline") for pair in pairs for r in pair}
    if len(seen) != 1 or None in seen:
        raise ConfigError(f"the reports' baselines differ or are missing ({', '.join(sorted(map(str, seen)))}): pass --baseline")
    return str(seen.pop())


def _common_judge(pairs: Sequence[tuple[dict, dict]]) -> str:
    common: set[str] | None = None
    for pair in pairs:
        for report in pair:
            judges = {j.get("name") for j in report["meta"].get("judges", []) if isinstance(j, dict)}
            common = judges if common is None else common & judges
    if not common:
        raise ConfigError("the reports share no judge")
    if len(common) > 1:
        raise ConfigError(f"the reports share several judges ({', '.join(sorted(common))}): pass --judge")
    return common.pop()


def _check_same_run(full: dict, quant: dict, full_name: str, quant_name: str) -> None:
    a, b = full["meta"].get("max_new_tokens"), quant["meta"].get("max_new_tokens")
    if a != b:
        raise ConfigError(f"{full_name} decoded {a} new tokens and {quant_name} {b}: their gains are not comparable")


def _ratio(num: np.ndarray, den: np.ndarray, seed: int, resamples: int) -> Ratio:
    if num.size == 0 or den.mean() == 0:
        return Ratio(None, None, None)
    value = float(num.mean() / den.mean())
    if num.size == 1:
        return Ratio(value, value, value)
    idx = np.random.default_rng(seed).integers(0, num.size, size=(resamples, num.size))
    d = den[idx].mean(axis=1)
    r = num[idx].mean(axis=1)[d != 0] / d[d != 0]
    low, high = np.percentile(r, [2.5, 97.5])
    return Ratio(value, float(low), float(high))


def _verdict(margin: Interval) -> str:
    if margin.n == 0:
        return "undecided"
    if margin.low > 0:
        return "met"
    if margin.high < 0:
        return "not met"
    return "undecided"


def markdown(result: GainKept) -> str:
    """A short table a person reads: the gains, the share kept, and the verdict on the threshold."""
    def iv(x: Interval) -> str:
        return "–" if x.mean is None else f"{x.mean:+.3f} [{x.low:+.3f}, {x.high:+.3f}]"

    def rt(x: Ratio) -> str:
        return "–" if x.value is None else f"{x.value * 100:.0f} % [{x.low * 100:.0f} %, {x.high * 100:.0f} %]"

    pct = f"{result.threshold * 100:g} %"
    lines = [
        f"judge `{result.judge}`, {result.system} against {result.baseline}; {result.n_clean} of {result.n_prompts} prompts "
        f"have all four outputs clean (not degenerate)",
        "",
        "| | judge log-prob / token, Δ [95 % CI] | share of the full-precision gain | "
        f"kept ≥ {pct}: gain − {pct} × full gain [95 % CI] |",
        "|---|---|---|---|",
        f"| full precision: {result.system} − its {result.baseline} | {iv(result.gain_full)} | 100 % | – |",
        f"| quantized: {result.system} − its own {result.baseline} | {iv(result.gain_quant)} | {rt(result.kept)} | "
        f"{iv(result.margin)}: {result.verdict} |",
        f"| quantized {result.system} − full-precision {result.baseline} | {iv(result.gain_quant_vs_full_baseline)} | "
        f"{rt(result.kept_vs_full_baseline)} | {iv(result.margin_vs_full_baseline)}: {result.verdict_vs_full_baseline} |",
        "",
        "degenerate outputs: " + ", ".join(f"{k} {v}/{result.n_prompts}" for k, v in result.degenerate.items()),
    ]
    return "\n".join(lines)
