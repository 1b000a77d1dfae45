"""`ortrefine bench`: speed figures of one bundle on this machine, with onnxruntime alone (no torch).

    ortrefine bench decode    [-m MODEL] [--tokens 64] [--reps 3]      # tok/s, time to first token, memory bandwidth
    ortrefine bench scoring   [-m MODEL] [--batch 16 --prefix 32 --suffix 16] [--reps 3]
    ortrefine bench coldstart [-m MODEL] [--reps 5]                   # `import ortrefine`, start to first token

The side-by-side suite (torch, Optimum, onnxruntime-genai) is in benchmarks/ of the repository; it
measures with the functions below, so both report the same quantities. Each command does one
warm-up, then `--reps` timed repetitions, and prints medians (min–max).
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

import click

from ortrefine.cli.common import Text, domain_errors, load_lm, model_options

if TYPE_CHECKING:
    import numpy as np

    from ortrefine.runtime.session import LM

DECODE_PROMPT = "The history of the printing press begins in"  # 9 tokens + BOS with SmolLM2's tokenizer
BANDWIDTH_MB = 512


# -- measuring (also imported by benchmarks/*.py) ------------------------------------------------
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
    threads). numpy's sum, used before, is pairwise and compute-limited here (24.8 GB/s against 33
    for max and 36 for a 2-thread ONNX Runtime ReduceSum: benchmarks/probes/bandwidth.py), so it
    made bandwidth shares look ~30 % better than they are."""
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
    nodes (an untied embedding table: one row per token) are left out. With `--head-bits 8` the
    fp32 embedding is 113 of SmolLM2's 216 MB, and counting it made the bandwidth share ~2× too high.
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


# -- commands ------------------------------------------------------------------------------------


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse a benchmark whose arrays would not fit in half the machine's memory (a MemoryError
    or the OOM killer otherwise)."""
    total = _physical_memory()
    if total and nbytes > total // 2:
        raise click.UsageError(f"{what} needs about {nbytes / 2**30:.1f} GiB, more than half of this machine's "
                               f"{total / 2**30:.1f} GiB; {fix}")


def _reps_option(default: int):
    return click.option("--reps", type=click.IntRange(min=1), default=default, show_default=True,
                        help="Timed repetitions after one warm-up.")


@click.group()
def bench() -> None:
    """Speed of a bundle on this machine (onnxruntime alone; the side-by-side suite is benchmarks/)."""


@bench.command("decode")
@model_options
@click.option("--tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Tokens to decode (no eos stop).")
@click.option("--prompt", default=DECODE_PROMPT, show_default=True, type=Text(stdin=True), help="`-`: read it from standard input.")
@click.option("--bandwidth-mb", type=click.IntRange(min=1), default=BANDWIDTH_MB, show_default=True,
              help="Size of the array summed to measure memory read bandwidth (at most half the machine's memory).")
@_reps_option(3)
@domain_errors
def decode_cmd(model: str, provider: str, threads: int | None, tokens: int, prompt: str, bandwidth_mb: int, reps: int) -> None:
    """Greedy decode speed, time to first token, and the share of memory bandwidth it uses."""
    _check_memory(bandwidth_mb << 20, "--bandwidth-mb", "lower --bandwidth-mb")
    lm = load_lm(model, provider, threads)
    ids = lm.encode_prompt(prompt, max_new_tokens=tokens)
    decode_fixed(lm, ids, tokens)  # warm-up
    runs, bandwidths = [], []
    for _ in range(reps):  # decode and bandwidth take turns, so machine load hits both alike
        runs.append(decode_fixed(lm, ids, tokens))
        bandwidths.append(memory_bandwidth(bandwidth_mb))
    wbytes = weight_bytes(lm.bundle.model_file, per_token=True)
    tps = [r.tokens_per_second for r in runs]
    bw = statistics.median(bandwidths)
    share = wbytes * statistics.median(tps) / bw
    rows = [
        ["decode", f"{spread(tps)} tok/s"],
        ["time to first token", f"{spread([1e3 * r.ttft for r in runs], '{:.0f}')} ms ({len(ids)}-token prompt)"],
        ["weights read per token", f"{wbytes / 1e6:.1f} MB"],
        ["memory read bandwidth (numpy max / sgemv)", f"{spread([b / 1e9 for b in bandwidths])} GB/s"],
        ["weights × tok/s / bandwidth", f"{100 * share:.0f}%"],
    ]
    click.echo(f"{lm.bundle.path} ({lm.bundle.precision}, {lm.provider}), {tokens} tokens, median of {reps}")
    click.echo(markdown_table(["figure", "value"], rows))


@bench.command("scoring")
@model_options
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Candidates.")
@click.option("--prefix", type=click.IntRange(min=1), default=32, show_default=True, help="Shared prefix tokens.")
@click.option("--suffix", type=click.IntRange(min=1), default=16, show_default=True, help="New tokens per candidate.")
@_reps_option(3)
@domain_errors
def scoring_cmd(model: str, provider: str, threads: int | None, batch: int, prefix: int, suffix: int, reps: int) -> None:
    """Batched scoring tokens/s, without and with reuse of a shared prefix's KV cache."""
    lm = load_lm(model, provider, threads)
    context = lm.bundle.context_length
    if prefix + suffix > context:
        raise click.UsageError(f"--prefix {prefix} + --suffix {suffix} is more than the model's context of {context} tokens; "
                               "lower them")
    # the plain pass's logits dominate: batch × (prefix + suffix) × vocab float32, twice over
    _check_memory(2 * 4 * batch * (prefix + suffix) * lm.vocab_size, "--batch × (--prefix + --suffix)", "lower --batch")
    shared, suffixes = scoring_ids(lm, batch, prefix, suffix)
    scoring_once(lm, shared, suffixes)  # warm-up
    runs = [scoring_once(lm, shared, suffixes) for _ in range(reps)]
    plain, reuse = [r.plain_tps for r in runs], [r.reuse_tps for r in runs]
    speedup = statistics.median(r.plain_seconds / r.reuse_seconds for r in runs)
    rows = [
        [f"plain: {batch} × {prefix + suffix}", f"{spread(plain)}", "1.00×", ""],
        [f"prefix reuse: 1 × {prefix} + {batch} × {suffix}", f"{spread(reuse)}", f"{speedup:.2f}×",
         f"{speedup / runs[0].ceiling:.0%} of {runs[0].ceiling:.2f}×"],
    ]
    click.echo(f"{lm.bundle.path} ({lm.bundle.precision}, {lm.provider}), median of {reps}; "
               f"max |Δlogits| reuse vs plain {max(r.max_abs_diff for r in runs):.2g}")
    click.echo(markdown_table(["scoring", "scored tok/s", "speed-up", "vs ceiling"], rows))


@bench.command("coldstart")
@model_options
@_reps_option(5)
@domain_errors
def coldstart_cmd(model: str, provider: str, threads: int | None, reps: int) -> None:
    """`import ortrefine` time and process start to first token of `ortrefine generate`."""
    from ortrefine.catalog import resolve_bundle_path
    from ortrefine.runtime.bundle import open_bundle

    path = open_bundle(resolve_bundle_path(model)).path  # fail here, with the fix, if the bundle is missing
    c = coldstart(str(path), reps, provider=provider, threads=threads)
    rows = [
        ["python -c pass", f"{spread(c.bare, '{:.3f}')} s"],
        ["import ortrefine (minus bare start)", f"{c.import_seconds:.3f} s"],
        ["generate, start to first token", f"{spread(c.first_token, '{:.2f}')} s"],
    ]
    click.echo(f"{path}, fresh processes, median of {reps} (page cache warm)")
    click.echo(markdown_table(["figure", "value"], rows))


commands = [bench]
