"""`ortrefine batch`: every prompt of a JSONL file through one loaded model, resumable; `--ray` for a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ortrefine.cli.common import FiniteFloat, LibraryChoice, Text, domain_errors, given, model_options, strategies

# options whose values go to BatchConfig.from_dict when the user set them (else the config file's or the default)
SETTINGS = ("task", "model", "provider", "threads", "chat", "system", "max_new_tokens", "seed", "top_k", "batch_size", "strategy",
            "temperature", "top_p", "num_beams", "length_penalty", "early_stopping", "stop", "objectives", "keywords", "reference",
            "mode", "sweeps", "positions_per_batch", "order", "edits", "budget_seconds", "budget_tokens", "initial_strategy", "tol",
            "min_prob", "screen", "screen_keep", "draft", "no_prune", "no_end_repair")


@click.command()
@click.argument("input_path", metavar="IN.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output_path", metavar="OUT.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML or JSON file of these settings (keys as the options, with underscores); options given here win.")
@click.option("--task", type=click.Choice(["generate", "refine"]), default="generate", show_default=True)
@model_options
@click.option("--chat", is_flag=True, help="Wrap each prompt in the chat template.")
@click.option("--system", default=None, type=Text(), help="System message for --chat (a record's own \"system\" wins).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="generate: sampling seed; refine: as `ortrefine refine --seed`.")
@click.option("--top-k", default=None, help="generate: sampling top-k (0: off); refine: proposals per position (or 'all').")
@click.option("--strategy", type=LibraryChoice(strategies), default="greedy", show_default=True, help="generate only.")
@click.option("--temperature", type=FiniteFloat(0, min_open=True), default=None, help="generate, --strategy sample.")
@click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=None, help="generate, --strategy sample.")
@click.option("--num-beams", type=click.IntRange(min=1), default=None, help="generate, --strategy beam.")
@click.option("--length-penalty", type=FiniteFloat(), default=None, help="generate, --strategy beam.")
@click.option("--early-stopping", type=click.Choice(["false", "true", "never"]), default=None, help="generate, --strategy beam.")
@click.option("--stop", multiple=True, type=Text(), help="generate: stop string (repeatable).")
@click.option("--objective", "objectives", multiple=True, type=Text(), help="refine: term NAME[=WEIGHT][:key=value,...] (repeatable).")
@click.option("--keywords", default=None, type=Text(), help="refine: comma-separated keywords (the keyword J and guide, as refine --keywords).")
@click.option("--reference", default=None, type=Text(), help="refine: reference text for the reference term.")
@click.option("--mode", default=None, help="refine: keep | regenerate.")
@click.option("--sweeps", type=click.IntRange(min=1), default=None, help="refine.")
@click.option("--positions-per-batch", type=click.IntRange(min=1), default=None, help="refine.")
@click.option("--order", default=None, help="refine: l2r | r2l | random | worst-first.")
@click.option("--edits", default=None, type=Text(), help="refine: comma-separated substitute,insert,delete.")
@click.option("--budget-seconds", type=FiniteFloat(0, min_open=True), default=None, help="refine, per record.")
@click.option("--budget-tokens", type=click.IntRange(min=1), default=None, help="refine, per record.")
@click.option("--initial-strategy", type=LibraryChoice(strategies), default=None, help="refine: how Y⁰ is decoded.")
@click.option("--tol", type=FiniteFloat(0), default=None, help="refine.")
@click.option("--min-prob", type=FiniteFloat(0, 1, max_open=True), default=None, help="refine.")
@click.option("--screen", type=click.IntRange(min=0), default=None, help="refine (approximate).")
@click.option("--screen-keep", type=click.IntRange(min=1), default=None, help="refine.")
@click.option("--draft", type=click.IntRange(min=0), default=None, help="refine, --mode regenerate.")
@click.option("--no-prune", is_flag=True, help="refine.")
@click.option("--no-end-repair", is_flag=True, help="refine: as `ortrefine refine --no-end-repair`.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="generate (greedy/sample): records decoded together in shared passes; with --ray, records per batch.")
@click.option("--ray", "use_ray", is_flag=True, help="Run on Ray Data (the `ray` extra): an actor pool, each actor loading the model once.")
@click.option("--address", default=None, help="--ray: a running cluster (`auto`, or HEAD:6379); default: a local Ray instance.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="--ray: actors (model copies).")
@click.option("--cpus-per-worker", type=FiniteFloat(0, min_open=True), default=1.0, show_default=True, help="--ray: CPUs per actor.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
@domain_errors
def batch(ctx: click.Context, input_path: Path, output_path: Path, config_file: Path | None, use_ray: bool, address: str | None,
          workers: int, cpus_per_worker: float, no_progress: bool, **kw: Any) -> None:
    """Decode (or refine) every record of IN.jsonl into OUT.jsonl, one model load for all.

    A record is {"id": ..., "prompt": "..."} (plus "system"; for refine "initial", "keywords",
    "reference"); a line without an id gets its line number. Each output line keeps the id. Run
    again after an interruption (kill -9 included), it skips the ids already in OUT.jsonl.
    Exits 1 while a record of IN.jsonl is an error record in OUT.jsonl (this run's or an earlier
    one's: a rerun skips it too; delete its line to try it again).
    """
    from ortrefine.batch.config import BatchConfig, read_config_file

    for name in ("address", "workers", "cpus_per_worker"):
        if given(ctx, name) and not use_ray:
            raise click.UsageError(f"--{name.replace('_', '-')} only applies with --ray; add that, or drop it")
    options = read_config_file(config_file) if config_file else {}
    for name in SETTINGS:
        if given(ctx, name):
            value = kw[name]
            if name in ("no_prune", "no_end_repair"):
                name, value = name.removeprefix("no_"), not value
            elif name in ("stop", "objectives"):
                value = list(value)
            options[name] = value
    options.setdefault("model", kw["model"])
    for switch in ("pin_threads", "hugepages"):  # model_options keeps these in ctx.meta
        if ctx.meta.get(f"ortrefine.{switch}"):
            options[switch] = True
    cfg = BatchConfig.from_dict(options)
    try:
        if use_ray:
            from ortrefine.batch.ray_job import run_ray

            s = run_ray(input_path, output_path, cfg, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                        progress=not no_progress)
        else:
            from ortrefine.batch.job import run_batch

            s = run_batch(input_path, output_path, cfg, progress=not no_progress)
    except KeyboardInterrupt as e:  # SIGINT/SIGTERM: ortrefine.cli.entry prints this hint
        e.hint = f"the records in {output_path} are kept; run the same command again to resume"  # type: ignore[attr-defined]
        raise
    repaired = f", cut a torn last line ({s.repaired} bytes) and redid it" if s.repaired else ""
    click.echo(f"{output_path}: {s.written} records written ({s.errors} errors), {s.skipped} already there{repaired}; "
               f"{s.total} in {input_path}, {s.seconds:.1f}s", err=True)
    failed = s.errors + s.failed_before
    if failed:  # every other record is written; a script (or a retry loop) must still learn that some were not done
        earlier = f" ({s.failed_before} by an earlier run)" if s.failed_before else ""
        click.echo(f"Error: {failed} record(s) failed{earlier}; their lines in {output_path} carry \"error\" (a rerun "
                   "skips them: delete those lines to try them again)", err=True)
        ctx.exit(1)


commands = [batch]
