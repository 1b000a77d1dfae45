"""Run a prompt set through several systems and judge every output.

Every system decodes every prompt with the model under test; then each judge bundle scores
every output text (its own tokenizer, see judge.py), and the text-only checks (metrics.py) flag
loops, echoes, lists and half sentences. Aggregates are per system: means with bootstrap
intervals, a paired comparison against the baseline on the prompts where neither output is
degenerate (a loop the judge likes must not count as a win), degenerate counts, the keyword
task's "all concepts in a real sentence" rate, and wall time per prompt.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ortrefine.errors import ConfigError
from ortrefine.evaluate.data import DEFAULT_SYSTEMS, EvalItem, System, check_systems
from ortrefine.evaluate.judge import bundle_identity, judge_context, judge_texts
from ortrefine.evaluate.metrics import ALL_FLAGS, text_report
from ortrefine.evaluate.stats import bootstrap_mean, paired


@dataclass
class EvalConfig:
    """How to run.

    model: the bundle the systems decode with (folder or catalog name).
    judges: bundles that score the outputs (at least one).
    systems: what to run (default DEFAULT_SYSTEMS); baseline: the system the others are paired
        against (default: the first).
    max_new_tokens: length cap of every output unless a system sets its own.
    seed: of the bootstrap (sampling systems take their own seed option).
    provider / threads: for every session.
    """

    model: str
    judges: Sequence[str]
    systems: Sequence[System] = DEFAULT_SYSTEMS
    baseline: str | None = None
    max_new_tokens: int = 32
    seed: int = 0
    provider: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.judges:
            raise ConfigError("give at least one judge bundle (--judge)")
        if not self.systems:
            raise ConfigError("give at least one system")
        check_systems(self.systems, self.baseline)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.baseline is None:
            self.baseline = self.systems[0].name


@dataclass
class Output:
    """One system's output for one prompt, with everything measured on it."""

    id: str
    kind: str
    system: str
    text: str
    tokens: int
    hit_cap: bool
    seconds: float
    own_logprob: float | None
    report: dict[str, Any]
    judges: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "system": self.system, "text": self.text, "tokens": self.tokens,
                "hit_cap": self.hit_cap, "seconds": self.seconds, "own_logprob": self.own_logprob, **self.report,
                "judges": self.judges, **({"extra": self.extra} if self.extra else {})}


def _decode(lm: Any, item: EvalItem, system: System, max_new_tokens: int) -> tuple[str, list[int], float | None, dict[str, Any]]:
    """(text, ids, own log P, extra) of one system on one prompt."""
    if system.strategy == "reference":
        text = item.references[0]
        return text, list(lm.tokenizer.encode_plain(text)), None, {"reference": 0}
    if system.strategy == "refine":
        from ortrefine.runtime.refine import refine

        r = refine(lm, item.prompt, system.refine_config(max_new_tokens, item))
        extra = {"initial": r.initial.text, "gain": r.gain, "edits": len(r.edits), "stop_reason": r.stop_reason}
        return r.final.text, list(r.final.ids), float(sum(r.final.token_logprobs)), extra
    from ortrefine.runtime.decoding import generate

    gen = system.generation_config(max_new_tokens)
    from ortrefine.runtime.examples import encode_with_examples

    ids, _ = encode_with_examples(lm, item.prompt, system.example_turns(item), item.chat, None, gen.max_new_tokens)
    g = generate(lm, ids, gen)
    return g.text, list(g.ids), g.logprob, {"finish_reason": g.finish_reason}


def independence(cfg: EvalConfig, judge: str) -> dict[str, Any]:
    """Whether the judge is a model inside J: the model under test (every system maximises its
    likelihood one way or another) or a bundle named by an objective term of a refine system."""
    ident = bundle_identity(judge)
    reasons = []
    if bundle_identity(cfg.model) == ident:
        reasons.append("the judge is the model under test")
    for s in cfg.systems:
        for obj in s.objectives():
            _, _, opts = obj.partition(":")
            for value in [v.partition("=")[2] for v in opts.split(",")] + [obj.partition("=")[2].partition(":")[0]]:
                value = value.strip()
                if value and _is_bundle(value) and bundle_identity(os.path.expanduser(value)) == ident:
                    reasons.append(f"system {s.name!r} has the judge inside J ({obj})")
    return {"independent": not reasons, "reasons": reasons}


def _is_bundle(value: str) -> bool:
    """Whether an objective's option names a bundle: a folder (`~` expanded) or a catalog name."""
    from ortrefine.catalog import resolve_bundle_path

    try:
        folder = resolve_bundle_path(os.path.expanduser(value))
    except Exception:  # noqa: BLE001 - not a bundle name; the objective says what it is when it runs
        return False
    return Path(folder, "ortrefine.json").is_file()


def _judge_name(path: str, all_paths: Sequence[str]) -> str:
    name = Path(str(path).rstrip("/")).name or str(path)
    return name if sum(Path(str(p).rstrip("/")).name == name for p in all_paths) == 1 else str(path)


def run_eval(cfg: EvalConfig, items: Sequence[EvalItem], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Decode, judge and aggregate; returns the report as a dict (see write_report)."""
    import ortrefine

    if not items:
        raise ConfigError("no prompts to evaluate")
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    judge_names = _check_inputs(cfg)
    _check_references(cfg, items)
    indep = {judge_names[j]: independence(cfg, j) for j in cfg.judges}
    lm = ortrefine.load(cfg.model, provider=cfg.provider, threads=cfg.threads)
    outputs = _decode_all(lm, cfg, items, say)
    _judge_all(lm, cfg, items, outputs, judge_names, say)
    summary = summarize(outputs, items, cfg, list(judge_names.values()))
    return {
        "meta": {
            "model": str(lm.bundle.path),
            "judges": [{"name": judge_names[j], "bundle": str(j), **indep[judge_names[j]]} for j in cfg.judges],
            "independent": all(v["independent"] for v in indep.values()),
            "n_prompts": len(items), "kinds": dict(sorted(Counter(i.kind for i in items).items())),
            "max_new_tokens": cfg.max_new_tokens, "baseline": cfg.baseline, "bootstrap": {"seed": cfg.seed, "resamples": 2000, "level": 0.95},
            "degenerate_flags": [f for f in ALL_FLAGS if f != "cut_off"], "seconds": time.perf_counter() - t_start,
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        },
        "systems": [s.to_dict() for s in cfg.systems],
        "summary": summary,
        "outputs": [o.to_dict() for o in outputs],
    }


def _check_inputs(cfg: EvalConfig) -> dict[str, str]:
    """Every system and judge checked before any decoding: a missing or broken judge must stop the
    run before hours of work, not after. Returns each judge's display name."""
    from ortrefine.catalog import resolve_bundle_path
    from ortrefine.runtime import open_bundle

    for s in cfg.systems:
        s.check(cfg.max_new_tokens)
    for j in cfg.judges:
        open_bundle(resolve_bundle_path(j))
    return {j: _judge_name(j, cfg.judges) for j in cfg.judges}


def _check_references(cfg: EvalConfig, items: Sequence[EvalItem]) -> None:
    """A reference system needs a reference on every prompt: refused before any decoding."""
    if any(s.strategy == "reference" for s in cfg.systems):
        missing = [i.id for i in items if not i.references]
        if missing:
            raise ConfigError(f"a system of strategy reference needs a reference on every prompt; {len(missing)} have none "
                              f"(first: {missing[0]!r})")


def _decode_all(lm: Any, cfg: EvalConfig, items: Sequence[EvalItem], say: Callable[[str], None]) -> list[Output]:
    """Every system on every prompt, with the text statistics that need no model."""
    outputs: list[Output] = []
    for n, item in enumerate(items, 1):
        for system in cfg.systems:
            t = time.perf_counter()
            text, ids, own, extra = _decode(lm, item, system, cfg.max_new_tokens)
            seconds = time.perf_counter() - t
            cap = system.options.get("max_new_tokens", cfg.max_new_tokens)
            hit_cap = system.strategy != "reference" and len(ids) >= cap and not (ids and ids[-1] in lm.eos_ids)
            fields = _text_fields(text, item, hit_cap)
            outputs.append(Output(item.id, item.kind, system.name, text, len(ids), hit_cap, seconds, own, fields, extra=extra))
            say(f"[{n}/{len(items)}] {item.id} {system.name}: {seconds:.1f}s{' (degenerate)' if fields['degenerate'] else ''}")
    return outputs


def _text_fields(text: str, item: EvalItem, hit_cap: bool) -> dict[str, Any]:
    """What the model-free checks say of one output, as the report stores it."""
    rep = text_report(text, item.prompt, hit_cap, item.keywords, item.references)
    return {"flags": rep.flags, "degenerate": rep.degenerate, "stats": rep.stats, "keywords_covered": rep.keywords_covered,
            "coverage": rep.coverage, "all_covered": rep.all_covered, "real_sentence": rep.real_sentence, "chrf": rep.chrf}


def reflag(report: dict[str, Any], items: Sequence[EvalItem]) -> dict[str, Any]:
    """A stored report with its flags, keyword checks and summary recomputed by today's text
    checks: a new or mended flag counted over a run that took an hour to decode and judge, without
    decoding or judging again. Texts, seconds and judge scores stay as stored; `items` must be the
    prompts the run used (the flags read the prompt)."""
    try:
        return _reflag(report, items)
    except ConfigError:
        raise
    except (KeyError, IndexError) as e:
        raise ConfigError(f"not a whole `ortrefine eval` report: {e} is missing") from None
    except (TypeError, ValueError, AttributeError, statistics.StatisticsError) as e:
        raise ConfigError(f"not a well-formed `ortrefine eval` report ({type(e).__name__}: {e})") from None


def _reflag(report: dict[str, Any], items: Sequence[EvalItem]) -> dict[str, Any]:
    meta, stored = report["meta"], report["outputs"]
    by_id = {i.id: i for i in items}
    missing = sorted({o["id"] for o in stored} - by_id.keys())
    if missing:
        raise ConfigError(f"the prompts file lacks {len(missing)} of the report's prompts (first: {missing[0]}): "
                          "give the prompts file the run used")
    other = next((o["id"] for o in stored if o["kind"] != by_id[o["id"]].kind), None)
    if other is not None:
        raise ConfigError(f"prompt {other!r} has another kind in the prompts file than in the report: "
                          "give the prompts file the run used")
    # names are all the summary reads; a stored system's options may predate today's checks
    systems = [System(s["name"], s["strategy"], {k: v for k, v in s.items() if k not in ("name", "strategy")})
               for s in report["systems"]]
    judge_names = [j["name"] for j in meta["judges"]]
    ids = list(dict.fromkeys(o["id"] for o in stored))
    have = {(o["system"], o["id"]) for o in stored}
    gap = next(((s.name, i) for s in systems for i in ids if (s.name, i) not in have), None)
    if gap is not None or not ids:
        raise ConfigError("not a whole `ortrefine eval` report: " +
                          (f"system {gap[0]!r} has no output for prompt {gap[1]!r}" if gap else "it holds no outputs"))
    lost = next(((o["id"], j) for o in stored for j in judge_names if j not in o["judges"]), None)
    if lost is not None:
        raise ConfigError(f"not a whole `ortrefine eval` report: prompt {lost[0]!r} has no score from judge {lost[1]!r}")
    outputs = [Output(o["id"], o["kind"], o["system"], o["text"], o["tokens"], o["hit_cap"], o["seconds"], o["own_logprob"],
                      _text_fields(o["text"], by_id[o["id"]], o["hit_cap"]), judges=o["judges"], extra=o.get("extra", {}))
               for o in stored]
    boot = meta.get("bootstrap") or {}
    cfg = EvalConfig(model=meta["model"], judges=[j["bundle"] for j in meta["judges"]], systems=systems,
                     baseline=meta["baseline"], max_new_tokens=meta["max_new_tokens"], seed=boot.get("seed", 0))
    summary = summarize(outputs, [by_id[i] for i in ids], cfg, judge_names)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"meta": {**meta, "degenerate_flags": [f for f in ALL_FLAGS if f != "cut_off"], "reflagged_utc": now},
            "systems": report["systems"], "summary": summary, "outputs": [o.to_dict() for o in outputs]}


def _judge_all(lm: Any, cfg: EvalConfig, items: Sequence[EvalItem], outputs: list[Output],
               judge_names: dict[str, str], say: Callable[[str], None]) -> None:
    """Each judge scores every output in its own tokenizer; one judge loaded at a time."""
    import ortrefine

    model_ident = bundle_identity(cfg.model)
    by_item: dict[str, list[Output]] = {}
    for o in outputs:
        by_item.setdefault(o.id, []).append(o)
    for judge in cfg.judges:
        name = judge_names[judge]
        jlm = lm if bundle_identity(judge) == model_ident else ortrefine.load(judge, provider=cfg.provider, threads=cfg.threads)
        t = time.perf_counter()
        for item in items:
            outs = by_item[item.id]
            scores = judge_texts(jlm, judge_context(item.prompt, item.chat), [o.text for o in outs])
            for o, sc in zip(outs, scores):
                o.judges[name] = sc.to_dict()
        say(f"judged {len(outputs)} outputs with {name} in {time.perf_counter() - t:.1f}s")
        if jlm is not lm:
            del jlm


def machine() -> dict[str, Any]:
    """Where the figures were measured (speeds only compare within one machine and run)."""
    import onnxruntime

    import ortrefine

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                            "onnxruntime": onnxruntime.__version__, "ortrefine": ortrefine.__version__}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def summarize(outputs: Sequence[Output], items: Sequence[EvalItem], cfg: EvalConfig, judges: Sequence[str]) -> dict[str, Any]:
    """Per system: counts, rates and means; per judge: means and the paired comparison."""
    seed = cfg.seed
    table: dict[tuple[str, str], Output] = {(o.system, o.id): o for o in outputs}
    ids = [i.id for i in items]
    keyword_ids = [i.id for i in items if i.keywords]
    base = cfg.baseline
    out: dict[str, Any] = {}
    for s in cfg.systems:
        mine = [table[(s.name, i)] for i in ids]
        degenerate = [o for o in mine if o.report["degenerate"]]
        new = [o for o in degenerate if not table[(base, o.id)].report["degenerate"]]
        row: dict[str, Any] = {
            "n": len(mine),
            "degenerate": len(degenerate),
            "degenerate_new_vs_baseline": len(new) if s.name != base else 0,
            "degenerate_ids": [o.id for o in degenerate],
            "flags": {f: sum(bool(o.report["flags"][f]) for o in mine) for f in ALL_FLAGS},
            "seconds_per_prompt": bootstrap_mean([o.seconds for o in mine], seed).to_dict(),
            "seconds_p50": statistics.median(o.seconds for o in mine),
        }
        if keyword_ids:
            kw = [table[(s.name, i)] for i in keyword_ids]
            row["keywords"] = {
                "n": len(kw),
                "coverage": bootstrap_mean([o.report["coverage"] for o in kw], seed).to_dict(),
                "all_covered": bootstrap_mean([float(o.report["all_covered"]) for o in kw], seed).to_dict(),
                "real_sentence": bootstrap_mean([float(o.report["real_sentence"]) for o in kw], seed).to_dict(),
                "lists": sum(bool(o.report["flags"]["keyword_list"]) for o in kw),
            }
        with_refs = [o for o in mine if o.report["chrf"] is not None]
        if with_refs:
            row["chrf"] = bootstrap_mean([o.report["chrf"] for o in with_refs], seed).to_dict()
        row["judges"] = {}
        for j in judges:
            means = [o.judges[j]["mean"] for o in mine]
            jrow: dict[str, Any] = {
                "mean_logprob": bootstrap_mean(means, seed).to_dict(),
                "total_logprob": bootstrap_mean([o.judges[j]["total"] for o in mine if o.judges[j]["mean"] is not None], seed).to_dict(),
                "mean_logprob_nondegenerate": bootstrap_mean([o.judges[j]["mean"] for o in mine if not o.report["degenerate"]], seed).to_dict(),
            }
            if s.name != base:
                pairs = [(o, table[(base, o.id)]) for o in mine
                         if not o.report["degenerate"] and not table[(base, o.id)].report["degenerate"]
                         and o.judges[j]["mean"] is not None and table[(base, o.id)].judges[j]["mean"] is not None]
                jrow["paired_vs_baseline"] = paired([a.judges[j]["mean"] for a, _ in pairs], [b.judges[j]["mean"] for _, b in pairs],
                                                    seed).to_dict()
                jrow["paired_ids"] = [a.id for a, _ in pairs]
            row["judges"][j] = jrow
        out[s.name] = row
    return out
