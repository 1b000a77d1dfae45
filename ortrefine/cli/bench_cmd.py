"""`ortrefine bench`: speed figures of one bundle on this machine, with onnxruntime alone (no torch).

    ortrefine bench decode    [-m MODEL] [--tokens 64] [--reps 3]      # tok/s, time to first token, memory bandwidth
    ortrefine bench scoring   [-m MODEL] [--batch 16 --prefix 32 --suffix 16] [--reps 3]
    ortrefine bench coldstart [-m MODEL] [--reps 5]                   # `import ortrefine`, start to first token

The side-by-side suite (torch, Optimum, onnxruntime-genai) is in benchmarks/ of the repository; it
measures with ortrefine.bench, as these commands do, so both report the same quantities. Each
command does one warm-up, then `--reps` timed repetitions, and prints medians (min–max).
"""

from __future__ import annotations

import statistics

import click

from ortrefine.bench import (
    BANDWIDTH_MB,
    DECODE_PROMPT,
    coldstart,
    decode_fixed,
    markdown_table,
    memory_bandwidth,
    physical_memory,
    scoring_ids,
    scoring_once,
    spread,
    weight_bytes,
)
from ortrefine.cli.common import Text, domain_errors, load_lm, model_options


def _check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse a benchmark whose arrays would not fit in half the machine's memory (a MemoryError
    or the OOM killer otherwise)."""
    total = physical_memory()
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
