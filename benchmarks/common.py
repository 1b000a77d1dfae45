"""Helpers shared by the benchmark scripts: machine description, load, statistics, RESULTS.md.

Every script runs its contenders alternately in one process (or beside a worker process), after
a warm-up, and reports medians and ratios: these VMs are shared and their speed drifts 10–40 %
between runs, so only figures taken side by side compare. Each appended section records the CPU,
thread count, library versions and the load average at its start and end.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MODELS = ROOT / "models"
DEV_PROMPTS = ROOT / "data" / "prompts-dev.jsonl"  # the repository's copy (data/README.md)

if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The SIMD features that decide which kernels MLAS / OpenBLAS pick."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                return " ".join(f for f in wanted if f in flags)
    except OSError:
        pass
    return "?"


def load_average() -> str:
    """`uptime`'s 1/5/15-minute load averages, e.g. '3.21 5.40 4.93'."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def versions(extra: Iterable[str] = ()) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("ortrefine", "onnxruntime", "onnx", "numpy", "tokenizers", *extra):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out) + f"; Python {platform.python_version()}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'median (min–max)'."""
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def mean_ci(values: Sequence[float], seed: int = 0) -> str:
    """"mean [low, high]": the mean with its 95 % percentile-bootstrap interval, as the eval reports it."""
    import numpy as np

    from ortrefine.evaluate.stats import bootstrap_mean

    iv = bootstrap_mean(np.asarray(values, dtype=np.float64), seed, 2000)
    return "–" if iv.mean is None else f"{iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "—"


def verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    """'met (+12%)' / 'NOT met (−30%)' relative to the goal; for a limit (lower is better):
    'met (40% of the limit)' / 'NOT met (11.4× the limit)'."""
    if higher_is_better:
        margin = (value - goal) / goal
        return f"met (+{margin:.0%})" if margin >= 0 else f"NOT met (−{-margin:.0%})"
    return f"met ({value / goal:.0%} of the limit)" if value <= goal else f"NOT met ({value / goal:.1f}× the limit)"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Run:
    """The context of one benchmark run: start time and load, for its RESULTS.md section."""

    def __init__(self, name: str, threads: str, extra_versions: Iterable[str] = ()) -> None:
        self.name, self.threads = name, threads
        self.extra_versions = tuple(extra_versions)
        self.started = datetime.now(timezone.utc)
        self.load_start = load_average()
        self.command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])

    def header(self) -> str:
        return "\n".join([
            f"Machine: {cpu_model()} ({os.cpu_count()} cores; {cpu_flags()}), threads {self.threads}",
            f"Versions: {versions(self.extra_versions)}",
            f"Load average (1/5/15 min): {self.load_start} at start, {load_average()} at end "
            "(machine shared with other jobs: compare ratios, not absolute speeds)",
            f"Command: `{self.command}`",
        ])


def goals_section(columns: Sequence[str], goals: Sequence[Sequence[object]], title: str = "Goals (issue 5), from this run:") -> list[str]:
    """The goal-verdict table every benchmark ends its report with."""
    return [title, "", markdown_table(columns, goals), ""]


def publish(title: str, text: str, run: Run, append: bool) -> None:
    """Print the report and, unless told not to, append it to RESULTS.md."""
    print(text)
    if append:
        append_results(title, text, run)


def append_results(title: str, markdown: str, run: Run | None = None, path: Path = RESULTS) -> str:
    """Append a dated `## title — date` section (with the run's machine header) to RESULTS.md.

    Only ever appends: other scripts write to the same file. Returns the section's text.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"## {title} — {stamp}", ""]
    if run is not None:
        parts += [run.header(), ""]
    text = "\n".join(parts) + "\n" + markdown.rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n\n")
    with open(path, "rb") as f:  # one blank line between sections, whatever the last writer left
        f.seek(max(0, path.stat().st_size - 2))
        tail = f.read()
    sep = "" if tail.endswith(b"\n\n") else ("\n" if tail.endswith(b"\n") else "\n\n")
    with open(path, "a") as f:
        f.write(sep + text)
    return text


def bundle(name: str) -> Path:
    """A bundle by folder or by name under models/."""
    p = Path(name)
    return p if p.exists() else MODELS / name


class VenvWorker:
    """A peer's Python process in its own venv, asked over a pipe, one JSON line each way: the peer
    keeps its own libraries (another transformers, llama.cpp) and never shares this process's
    threads, yet takes turns with the other contenders.

    script: the worker's source; it answers each request with {"ok": true, ...} or
    {"ok": false, "error": "..."} and exits on {"op": "quit"}. what: its name in errors.
    """

    def __init__(self, venv: Path, script: str, what: str) -> None:
        import subprocess

        python = venv / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"no venv at {venv} (see this script's docstring for the setup)")
        self.what = what
        self.proc = subprocess.Popen([str(python), "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, **req) -> dict:
        import json

        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.what} worker died: " + self.proc.stderr.read()[-2000:])
        out = json.loads(line)
        if not out.get("ok"):
            raise RuntimeError(out.get("error", "unknown error"))
        return out

    def close(self) -> None:
        import json

        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)

