"""report.json (everything, every output), report.md (the tables a reader needs) and report.png
(judge gain against time per prompt, with intervals)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any, Callable

from ortrefine.errors import ConfigError

log = logging.getLogger(__name__)


def read_report(path: Path) -> dict[str, Any]:
    """A stored report.json, or a one-line ConfigError saying why it is not one."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON report ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("outputs"), list) or not isinstance(report.get("meta"), dict):
        raise ConfigError(f"{path}: not an `ortrefine eval` report (no meta and outputs)")
    return report


def _ci(d: dict[str, Any] | None, fmt: str = "{:+.2f}") -> str:
    if not d or d.get("mean") is None:
        return "–"
    if d["n"] <= 1 or d["low"] == d["high"]:
        return fmt.format(d["mean"])
    return f"{fmt.format(d['mean'])} [{fmt.format(d['low'])}, {fmt.format(d['high'])}]"


def _pct(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{100 * d['mean']:.0f} % [{100 * d['low']:.0f}, {100 * d['high']:.0f}]"


def markdown(report: dict[str, Any]) -> str:
    meta, summary = report["meta"], report["summary"]
    base = meta["baseline"]
    lines = ["# ortrefine eval", "",
             f"model: `{meta['model']}`; prompts: {meta['n_prompts']} ({', '.join(f'{k} {v}' for k, v in meta['kinds'].items())}); "
             f"max new tokens: {meta['max_new_tokens']}; baseline: {base}; {meta['date_utc']}; "
             f"{meta['machine'].get('cpu', meta['machine'].get('platform'))}, {meta['machine'].get('cpus')} CPUs, "
             f"load average {meta['machine'].get('load_average', '–')}."
             + (f" Flags recounted from the stored texts on {meta['reflagged_utc']}." if meta.get("reflagged_utc") else ""), ""]
    for j in meta["judges"]:
        status = "independent" if j["independent"] else "**not independent**: " + "; ".join(j["reasons"])
        lines.append(f"- judge `{j['name']}` ({j['bundle']}): {status}")
    lines.append("")
    has_kw = any("keywords" in row for row in summary.values())
    has_chrf = any("chrf" in row for row in summary.values())
    for j in meta["judges"]:
        name = j["name"]
        lines += [f"## Judge {name}" + ("" if j["independent"] else " (not independent)"), ""]
        head = ["system", "degenerate (new vs baseline)", "judge log-prob / token", f"Δ vs {base}, paired [95 % CI]", "win rate (W-T-L)"]
        if has_kw:
            head.append("all concepts in a real sentence")
        if has_chrf:
            head.append("chrF")
        head.append("s / prompt")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for sname, row in summary.items():
            jr = row["judges"][name]
            pv = jr.get("paired_vs_baseline")
            cells = [sname, f"{row['degenerate']}/{row['n']}" + ("" if sname == base else f" ({row['degenerate_new_vs_baseline']})"),
                     _ci(jr["mean_logprob"], "{:.2f}"),
                     "–" if pv is None else f"{_ci(pv['delta'])} (n {pv['n']})",
                     "–" if pv is None or pv["win_rate"] is None else f"{100 * pv['win_rate']:.0f} % ({pv['wins']}-{pv['ties']}-{pv['losses']})"]
            if has_kw:
                kw = row.get("keywords")
                cells.append("–" if not kw else f"{_pct(kw['real_sentence'])} (lists {kw['lists']}/{kw['n']})")
            if has_chrf:
                cells.append(_ci(row.get("chrf"), "{:.1f}"))
            cells.append(_ci(row["seconds_per_prompt"], "{:.2f}"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    flags = list(next(iter(summary.values()))["flags"])
    lines += ["## Flags (outputs per system)", "", "| system | " + " | ".join(flags) + " |", "|" + "---|" * (len(flags) + 1)]
    for sname, row in summary.items():
        lines.append(f"| {sname} | " + " | ".join(str(row["flags"][f]) for f in flags) + " |")
    lines += ["", "Degenerate = any of " + ", ".join(meta["degenerate_flags"]) + " (cut_off is counted but not degenerate: "
              "most continuations stop at the token cap). The paired Δ and win rate are over prompts where neither output is "
              "degenerate; intervals are seeded percentile bootstraps. A judge's log-prob rewards predictable text (loops, comma "
              "lists): read it only with the flags.", ""]
    lines += ["## Systems", "", "```json", json.dumps(report["systems"], indent=1), "```", ""]
    return "\n".join(lines)


REPORT_FILES = ("report.json", "report.md", "report.png")
NO_MATPLOTLIB = "matplotlib is not installed: no report.png (pip install 'ortrefine[plot]')"


def _figure(report: dict[str, Any]) -> Any:
    """The matplotlib figure of judge gain against time (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    judges = [j["name"] for j in report["meta"]["judges"]]
    fig, axes = plt.subplots(1, len(judges), figsize=(5.5 * len(judges), 4), squeeze=False)
    for ax, name in zip(axes[0], judges):
        for sname, row in report["summary"].items():
            x = row["seconds_per_prompt"]["mean"]
            pv = row["judges"][name].get("paired_vs_baseline")
            d = pv["delta"] if pv else {"mean": 0.0, "low": 0.0, "high": 0.0}
            if d["mean"] is None:
                continue
            ax.errorbar([x], [d["mean"]], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o", capsize=3)
            ax.annotate(f"{sname} ({row['degenerate']} deg.)", (x, d["mean"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("seconds per prompt")
        ax.set_ylabel(f"Δ judge log-prob/token vs {report['meta']['baseline']}")
        ax.set_title(f"judge {name}" + ("" if all(j["independent"] for j in report["meta"]["judges"] if j["name"] == name) else " (not independent)"),
                     fontsize=9)
    fig.tight_layout()
    return fig


def _save_png(report: dict[str, Any], write: Callable[[Callable[[IO[bytes]], object]], object]) -> str | None:
    """Draw the figure and hand `write` the callback that saves it into a file object; the reason
    there is no PNG, or None."""
    fig = _figure(report)
    if fig is None:
        return NO_MATPLOTLIB
    import matplotlib.pyplot as plt

    try:
        write(lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return None


def write_plot(report: dict[str, Any], path: Path) -> str | None:
    """The PNG at `path` (via a temp file; a symlink or non-file there is refused), or the reason there is none."""
    from ortrefine.reports import write_file

    return _save_png(report, lambda fill: write_file(path, fill))


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """report.json, report.md and, with matplotlib, report.png into `out`: a new or empty folder,
    or one ortrefine wrote a report into (ortrefine.reports); nothing else in it is replaced."""
    from ortrefine.reports import claim_report_folder

    out = Path(out)
    folder = claim_report_folder(out, REPORT_FILES)
    note = _save_png(report, lambda fill: folder.write("report.png", fill))
    if note:
        log.warning(note)
        folder.discard("report.png")  # an earlier run's plot would not match this report
        report = {**report, "meta": {**report["meta"], "plot": note}}
    md = markdown(report) + ("" if not note else f"\n{note}\n")
    folder.write_text("report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    folder.write_text("report.md", md + "\n")
    return [out / "report.json", out / "report.md"] + ([] if note else [out / "report.png"])
