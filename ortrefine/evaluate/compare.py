"""Compare bundles (fp32, int8, int4, distilled, ...) on the same prompts, judged by one bundle.

For every bundle and prompt: decode Y⁰, refine it to Y* with one config, and judge both with
the judge bundle (J under the judge; the judge's log-prob per token of the text, through the
same judging path as `ortrefine eval`; token agreement with the judge's own outputs); plus decode
and refine latency, peak memory, size on disk, and how much a candidate's score moves when it
is batched with others (dynamic int8 is batch-dependent). Writes report.json, report.md and
report.png (matplotlib, optional).

An evaluation harness, not part of the edge runtime: it lives beside `ortrefine eval` and shares
its judging path (ortrefine.runtime.judging, re-exported by ortrefine.evaluate.judge).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.evaluate.judge import judge_context, judge_texts
from ortrefine.runtime.refine import RefineConfig, evaluate_objective, refine

log = logging.getLogger(__name__)


@dataclass
class PromptItem:
    """One JSONL line: prompt, and optional id, kind ("chat"/"keywords"/... → chat template),
    keywords and reference for the coverage and reference terms."""

    prompt: str
    id: str = ""
    chat: bool = False
    keywords: tuple[str, ...] = ()
    reference: str | None = None


def read_prompts(path: Path) -> list[PromptItem]:
    """JSONL with at least "prompt"; a bad line is an error naming the line."""
    items = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"no prompts file at {path}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            text = d["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{path}:{n}: each line must be a JSON object with a \"prompt\"") from None
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{path}:{n}: empty prompt")
        chat = bool(d.get("chat", d.get("kind", "continue") not in ("continue", None)))
        items.append(PromptItem(text, str(d.get("id", n)), chat, tuple(d.get("keywords") or ()), d.get("reference")))
    if not items:
        raise ConfigError(f"{path} has no prompts")
    return items


@dataclass
class BundleRow:
    """Figures for one bundle over all prompts (means unless named otherwise)."""

    bundle: str
    precision: str
    size_mb: float
    judge_j_before: float
    judge_j_after: float
    judge_gain: float
    judge_lp_before: float | None
    judge_lp_after: float | None
    own_gain: float
    agreement_initial: float
    agreement_final: float
    decode_p50_s: float
    decode_p95_s: float
    refine_p50_s: float
    refine_p95_s: float
    peak_rss_mb: float | None
    batch_dependence: float
    prompts: list[dict[str, Any]] = field(default_factory=list)


def _percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def _agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of positions (over the longer output) where the two outputs have the same token."""
    n = max(len(a), len(b))
    return sum(1 for x, y in zip(a, b) if x == y) / n if n else 1.0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def batch_dependence(lm: Any, prompt_ids: list[int], ids: list[int]) -> float:
    """max |Δ log-prob| of one candidate scored alone vs beside 7 other candidates."""
    rng = np.random.default_rng(0)
    others = [[int(t) for t in rng.integers(3, lm.vocab_size, size=len(ids))] for _ in range(7)]
    alone = lm.score(prompt_ids, [ids]).token_logprobs[0]
    batched = lm.score(prompt_ids, others[:3] + [ids] + others[3:]).token_logprobs[3]
    return float(np.abs(alone - batched).max())


def _item_config(base: RefineConfig, item: PromptItem) -> RefineConfig:
    from dataclasses import replace

    return replace(base, chat=item.chat, keywords=item.keywords or base.keywords, reference=item.reference or base.reference)


def compare(
    bundles: Sequence[str | Path],
    prompts: Sequence[PromptItem],
    judge: str | Path,
    cfg: RefineConfig,
    provider: str = "cpu",
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[BundleRow]:
    """Run every prompt through every bundle; judge with `judge`. One bundle is loaded at a time,
    so that each bundle's peak RSS is its own (beside the judge, which stays loaded)."""
    import ortrefine

    judge_lm = ortrefine.load(judge, provider=provider, threads=threads)
    judge_ref = _judge_references(judge_lm, prompts, cfg)
    rows = []
    for path in bundles:
        _reset_peak_rss()
        lm = judge_lm if Path(path).resolve() == Path(judge).resolve() else ortrefine.load(path, provider=provider, threads=threads)
        same_tok = _same_tokenizer(lm, judge_lm)
        per = []
        for item in prompts:
            per.append(_judge_prompt(lm, judge_lm, same_tok, item, _item_config(cfg, item), judge_ref[item.id]))
            if progress:
                progress(1)
        rows.append(_bundle_row(str(path), lm, per, _first_prompt_batch_dependence(lm, prompts[0])))
        if lm is not judge_lm:
            del lm
    return rows


def _judge_references(judge_lm: Any, prompts: Sequence[PromptItem], cfg: RefineConfig) -> dict[str, tuple[list[int], list[int]]]:
    """The judge's own Y⁰ and Y* per prompt id: what token agreement is measured against."""
    ref = {}
    for item in prompts:
        jr = refine(judge_lm, item.prompt, _item_config(cfg, item))
        ref[item.id] = (jr.initial.ids, jr.final.ids)
    return ref


def _same_tokenizer(lm: Any, judge_lm: Any) -> bool:
    return (lm.bundle.path / "tokenizer.json").read_bytes() == (judge_lm.bundle.path / "tokenizer.json").read_bytes()


def _judge_prompt(lm: Any, judge_lm: Any, same_tok: bool, item: PromptItem, c: RefineConfig,
                  judge_ref: tuple[list[int], list[int]]) -> dict[str, Any]:
    """Decode and refine one prompt with `lm` (timing both), then judge Y⁰ and Y* with `judge_lm`.
    The judge reads them in its own tokens when the tokenizers differ: J and agreement are only
    comparable across bundles if every output is scored the same way."""
    t = time.perf_counter()
    lm.generate(item.prompt, max_new_tokens=c.max_new_tokens, chat=c.chat)
    decode_s = time.perf_counter() - t
    r = refine(lm, item.prompt, c)
    ini, fin = r.initial.ids, r.final.ids
    if not same_tok:
        tok = judge_lm.tokenizer
        ini, fin = (tok.encode_plain(out.text) + ([judge_lm.eos_ids[0]] if out.ids and out.ids[-1] in lm.eos_ids else [])
                    for out in (r.initial, r.final))  # an output that ended still ends: the finish and length terms see it
    jb = evaluate_objective(judge_lm, item.prompt, ini, c, initial_len=len(ini))
    ja = evaluate_objective(judge_lm, item.prompt, fin, c, initial_len=len(ini))  # J's length term measures against Y⁰
    lp0, lp1 = judge_texts(judge_lm, judge_context(item.prompt, item.chat), [r.initial.text, r.final.text])
    j0, j1 = judge_ref
    return {
        "id": item.id, "initial": r.initial.text, "final": r.final.text,
        "judge_before": jb["total"], "judge_after": ja["total"], "own_gain": r.gain,
        "judge_lp_before": lp0.mean, "judge_lp_after": lp1.mean,
        "agreement_initial": _agreement(ini, j0), "agreement_final": _agreement(fin, j1),
        "decode_s": decode_s, "refine_s": r.cost.seconds, "edits": len(r.edits),
    }


def _first_prompt_batch_dependence(lm: Any, first: PromptItem) -> float:
    pid = lm.encode_prompt(first.prompt, chat=first.chat)
    return batch_dependence(lm, pid, lm.generate(pid, max_new_tokens=8).ids or [pid[-1]])


def _bundle_row(bundle: str, lm: Any, per: list[dict[str, Any]], dep: float) -> BundleRow:
    """Means and percentiles over the prompts; peak RSS is read now, while the bundle is loaded."""
    mean = lambda k: statistics.mean(p[k] for p in per)  # noqa: E731
    lps = [(p["judge_lp_before"], p["judge_lp_after"]) for p in per if None not in (p["judge_lp_before"], p["judge_lp_after"])]
    dec_t, ref_t = [p["decode_s"] for p in per], [p["refine_s"] for p in per]
    return BundleRow(
        bundle=bundle, precision=lm.bundle.precision, size_mb=lm.bundle.size_bytes() / 1e6,
        judge_j_before=mean("judge_before"), judge_j_after=mean("judge_after"),
        judge_gain=mean("judge_after") - mean("judge_before"),
        judge_lp_before=statistics.mean(b for b, _ in lps) if lps else None,
        judge_lp_after=statistics.mean(a for _, a in lps) if lps else None, own_gain=mean("own_gain"),
        agreement_initial=mean("agreement_initial"), agreement_final=mean("agreement_final"),
        decode_p50_s=_percentile(dec_t, 50), decode_p95_s=_percentile(dec_t, 95),
        refine_p50_s=_percentile(ref_t, 50), refine_p95_s=_percentile(ref_t, 95),
        peak_rss_mb=_peak_rss_mb(), batch_dependence=dep, prompts=per,
    )


COLUMNS = [
    ("bundle", "{}"), ("precision", "{}"), ("size_mb", "{:.0f}"), ("judge_j_before", "{:.2f}"), ("judge_j_after", "{:.2f}"),
    ("judge_gain", "{:+.2f}"), ("judge_lp_before", "{:.3f}"), ("judge_lp_after", "{:.3f}"), ("agreement_initial", "{:.2f}"), ("agreement_final", "{:.2f}"), ("decode_p50_s", "{:.2f}"),
    ("decode_p95_s", "{:.2f}"), ("refine_p50_s", "{:.2f}"), ("refine_p95_s", "{:.2f}"), ("peak_rss_mb", "{:.0f}"),
    ("batch_dependence", "{:.2g}"),
]


def markdown_table(rows: Sequence[BundleRow]) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = []
    for r in rows:
        d = asdict(r)
        body.append("| " + " | ".join("-" if d[c] is None else fmt.format(d[c]) for c, fmt in COLUMNS) + " |")
    return "\n".join([head, sep, *body])


REPORT_FILES = ("report.json", "report.md", "report.png")


def write_report(rows: Sequence[BundleRow], out: Path, meta: dict[str, Any]) -> list[Path]:
    """report.json, report.md and (with matplotlib) report.png into `out`: a new or empty folder,
    or one ortrefine wrote a report into (ortrefine.reports); nothing else in it is replaced."""
    from ortrefine.reports import claim_report_folder

    folder = claim_report_folder(out, REPORT_FILES)
    written = [folder.write_text("report.json", json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))]
    md = ["# ortrefine compare", "", f"judge: {meta.get('judge')}; prompts: {meta.get('prompts')}; "
          f"refine config: {json.dumps(meta.get('config_short', {}))}", "", markdown_table(rows), "",
          "judge_j_*: J of Y⁰ / Y* under the judge bundle (mean over prompts); judge_lp_*: the judge's mean log-prob per "
          "token of the text of Y⁰ / Y* given the prompt text, in its own tokens (ortrefine.evaluate.judge, as `ortrefine eval`); agreement_*: share of positions equal "
          "to the judge's own Y⁰ / Y*; peak_rss_mb: the process's peak RSS while that bundle ran (the judge stays loaded "
          "too); batch_dependence: max |Δ log-prob| of one candidate scored alone vs in a batch of 8."]
    written.append(folder.write_text("report.md", "\n".join(md) + "\n"))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no report.png (pip install 'ortrefine[plot]')")
        folder.discard("report.png")  # an earlier run's plot would not match this report
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r.refine_p50_s, r.judge_gain)
        ax.annotate(Path(r.bundle).name, (r.refine_p50_s, r.judge_gain), fontsize=8)
    ax.set_xlabel("refine latency p50 (s)")
    ax.set_ylabel("gain in J under the judge (mean)")
    ax.set_title("quality gain vs latency, one point per bundle")
    fig.tight_layout()
    try:
        written.append(folder.write("report.png", lambda f: fig.savefig(f, format="png", dpi=100)))
    finally:
        plt.close(fig)
    return written
