"""Measuring shared by `ortrefine bench` and the side-by-side suite in benchmarks/, so that both
report the same quantities measured the same way.

Kept out of the CLI module so that benchmark scripts need not import click, and torch-free:
numpy and onnx are imported inside the functions that use them, so importing this stays cheap
and a runtime-only install can run it (`weight_bytes` falls back to file sizes without onnx).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

    from ortrefine.runtime.session import LM

DECODE_PROMPT = "The history of the printing press begins in"  # 9 tokens + BOS with SmolLM2's tokenizer
BANDWIDTH_MB = 512


@dataclass
class DecodeRun:
    """One greedy decode of a fixed number of tokens.

    ids: the generated tokens. ttft: seconds from the call to the first token (prefill + argmax).
    seconds: wall time of the whole decode (first token included).
    """

    ids: list[int]
    ttft: float
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.ids) / self.seconds


def decode_fixed(lm: "LM", prompt_ids: Sequence[int], n: int) -> DecodeRun:
    """Greedy decode of exactly `n` tokens over `lm.prefill` / `lm.steps` (no eos or stop check,
    so every bundle does the same work; the per-token work is that of ortrefine's greedy loop)."""
    t0 = time.perf_counter()
    out = lm.prefill(prompt_ids, keep_last=1)      # logits: (1, 1, vocab) float32
    ids = [int(out.logits[0, -1].argmax())]
    ttft = time.perf_counter() - t0
    steps = lm.steps(out.kv, n)
    for _ in range(n - 1):
        ids.append(int(steps.step(ids[-1]).argmax()))  # one token on the cache
    return DecodeRun(ids, ttft, time.perf_counter() - t0)


def memory_bandwidth(megabytes: int = BANDWIDTH_MB, reps: int = 3) -> float:
    """Memory read bandwidth in bytes/s over a float32 array of `megabytes` MB: the best of `reps`
    rounds of numpy's max (one thread, SIMD) and a matrix-vector product over the same array (BLAS
    threads). Not numpy's sum: it is pairwise and compute-limited on such an array, so it reads
    slower than memory allows and made bandwidth shares look better than they are
    (benchmarks/probes/bandwidth.py compares the ways of reading)."""
    import numpy as np

    a = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)  # np.ones touches every page
    rows = a.reshape(-1, 256) if a.size % 256 == 0 else a.reshape(1, -1)
    v = np.ones(rows.shape[1], dtype=np.float32)
    best = float("inf")
    for read in (a.max, lambda: rows @ v):
        read()
        for _ in range(reps):
            t0 = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def weight_bytes(model_file: Path, per_token: bool = False) -> int:
    """Bytes of the graph's initializers; without the `onnx` package installed, the size of
    model.onnx (+ model.onnx_data), which is within a few kB of it.

    per_token: only what a decode step reads whole — initializers consumed by nothing but Gather
    nodes (an untied embedding table: one row per token) are left out. An fp32 embedding beside
    quantized layers (`--head-bits 8`) can be half of the file, and counting it would overstate
    the bandwidth share.
    """
    model_file = Path(model_file)
    try:
        import onnx
        from onnx.helper import tensor_dtype_to_np_dtype
    except ImportError:
        data = model_file.with_name(model_file.name + "_data")
        return model_file.stat().st_size + (data.stat().st_size if data.exists() else 0)
    import numpy as np

    model = onnx.load(str(model_file), load_external_data=False)
    gathered_only = _gathered_only(model.graph) if per_token else set()
    total = 0
    for init in model.graph.initializer:
        if init.name in gathered_only:
            continue
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in init.external_data if e.key == "length"), 0))
        else:
            total += int(np.prod(init.dims, dtype=np.int64)) * np.dtype(tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return total


def _gathered_only(graph) -> set[str]:
    """Names of initializers whose every consumer is a Gather reading them as its data input."""
    uses: dict[str, list[bool]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            uses.setdefault(name, []).append(node.op_type == "Gather" and k == 0)
    return {name for name, gathered in uses.items() if gathered and all(gathered)}


@dataclass
class ScoringRun:
    """One scoring of `batch` candidates of prefix + suffix tokens, both ways.

    plain_seconds: one (batch, prefix + suffix) pass with no past.
    reuse_seconds: one (1, prefix) pass, then one (batch, suffix) pass on its KV repeated to batch.
    max_abs_diff: max |Δ logits| of the suffix positions between the two ways.
    """

    batch: int
    prefix: int
    suffix: int
    plain_seconds: float
    reuse_seconds: float
    max_abs_diff: float

    @property
    def scored_tokens(self) -> int:
        return self.batch * (self.prefix + self.suffix)

    @property
    def plain_tps(self) -> float:
        return self.scored_tokens / self.plain_seconds

    @property
    def reuse_tps(self) -> float:
        """Effective tokens/s: the same scored tokens, in the time of the reuse path."""
        return self.scored_tokens / self.reuse_seconds

    @property
    def ceiling(self) -> float:
        """Token-count ceiling of the speed-up: (prefix + suffix) / suffix."""
        return (self.prefix + self.suffix) / self.suffix


def scoring_ids(lm: "LM", batch: int, prefix: int, suffix: int, seed: int = 0) -> tuple["np.ndarray", "np.ndarray"]:
    """Random ordinary-token ids: one shared prefix (prefix,) and (batch, suffix) suffixes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = lm.vocab_size
    low = min(100, vocab // 4)  # skip the special tokens at the start of the vocabulary
    return rng.integers(low, vocab, size=prefix), rng.integers(low, vocab, size=(batch, suffix))


def scoring_once(lm: "LM", shared: "np.ndarray", suffixes: "np.ndarray") -> ScoringRun:
    """Time the plain and the prefix-reuse scoring of the same candidates (forward passes only)."""
    import numpy as np

    batch, suffix = suffixes.shape
    full = np.concatenate([np.repeat(shared[None], batch, axis=0), suffixes], axis=1)  # (batch, prefix + suffix)
    t0 = time.perf_counter()
    plain = lm.forward(full)
    t1 = time.perf_counter()
    head = lm.prefill(shared, keep_last=1)              # (1, prefix) and its KV; last logits only
    out, _ = lm.extend(head.kv, suffixes.tolist())      # (batch, suffix) on the KV repeated to batch
    t2 = time.perf_counter()
    diff = float(np.abs(plain.logits[:, len(shared):] - out.logits).max())
    return ScoringRun(batch, len(shared), suffix, t1 - t0, t2 - t1, diff)


def run_python(args: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of `python ARGS` in a fresh process (raises when it fails)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def ortrefine_command() -> list[str]:
    """How a user starts the CLI: the console script next to this interpreter, else `-m`."""
    script = Path(sys.executable).with_name("ortrefine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ortrefine.cli.main"]


@dataclass
class ColdStart:
    """Seconds per repetition. bare: `python -c pass`; imported: `python -c 'import ortrefine'`;
    first_token: `ortrefine generate PROMPT -m MODEL --max-new-tokens 1` (process start to exit
    after printing the first token)."""

    bare: list[float] = field(default_factory=list)
    imported: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)

    @property
    def import_seconds(self) -> float:
        return statistics.median(self.imported) - statistics.median(self.bare)


def coldstart(model: str, reps: int, prompt: str = DECODE_PROMPT, provider: str = "cpu", threads: int | None = None) -> ColdStart:
    """Bare start, import and first token in fresh processes, taking turns (after one warm-up each)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    gen = [*ortrefine_command(), "generate", prompt, "-m", model, "--max-new-tokens", "1", "--provider", provider]
    gen += ["--threads", str(threads)] if threads else []
    result = ColdStart()
    for rep in range(reps + 1):
        bare = run_python(["-c", "pass"], env)
        imported = run_python(["-c", "import ortrefine"], env)
        t0 = time.perf_counter()
        subprocess.run(gen, check=True, capture_output=True, env=env)
        first = time.perf_counter() - t0
        if rep:  # rep 0 warms the page cache and the interpreter's bytecode cache
            result.bare.append(bare)
            result.imported.append(imported)
            result.first_token.append(first)
    return result


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'median (min–max)'."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def physical_memory() -> int | None:
    """Bytes of RAM, or None where the OS does not say: callers size their arrays against it
    rather than meet a MemoryError or the OOM killer half-way through a benchmark."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
