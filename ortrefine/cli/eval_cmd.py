"""`ortrefine eval`: a prompt set through several systems, judged by other bundles."""

from __future__ import annotations

from pathlib import Path

import click

from ortrefine.cli.common import DEFAULT_MODEL, MAX_THREADS, PROVIDER_CHOICES, ModelName, domain_errors

KIND_CHOICES = ["continue", "chat", "keywords", "reference"]  # = ortrefine.evaluate.data.KINDS (no import at module level)


@click.command("eval")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL: id, kind (continue|chat|keywords|reference), prompt, keywords, references.")
@click.option("--systems", "systems_file", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON or TOML list of systems (name, strategy greedy|beam|sample|refine, options); "
                   "default: greedy, beam-4, refine (the library default J), refine-logprob (log P alone).")
@click.option("--judge", "judges", multiple=True, type=ModelName(),
              help="Bundle that scores every output under its own tokenizer (repeatable; required unless --reflag).")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, type=ModelName(), help="The bundle the systems decode with.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for report.json, report.md, report.png: new, empty, or one ortrefine wrote a report into "
                   "(nothing else in it is replaced).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N prompts (after --kind).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KIND_CHOICES), help="Only prompts of this kind (repeatable).")
@click.option("--baseline", default=None, help="System the others are paired against (default: the first).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the bootstrap intervals.")
@click.option("--provider", type=click.Choice(PROVIDER_CHOICES), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on standard error.")
@click.option("--reflag", "reflag_file", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A stored report.json: recount its flags and summary from its texts with today's checks (no decoding, "
                   "no judging) and write the result to OUT. --prompts must be the file the run used.")
@domain_errors
def eval_command(prompts_file: Path, systems_file: Path | None, judges: tuple[str, ...], model: str, out: Path, limit: int | None,
                 kinds: tuple[str, ...], baseline: str | None, max_new_tokens: int, seed: int, provider: str, threads: int | None,
                 quiet: bool, reflag_file: Path | None) -> None:
    """Decode PROMPTS with every system, judge the outputs, write a report to OUT."""
    from ortrefine.evaluate.data import DEFAULT_SYSTEMS, read_items, read_systems
    from ortrefine.evaluate.report import REPORT_FILES, markdown, write_report
    from ortrefine.evaluate.run import EvalConfig, run_eval
    from ortrefine.reports import check_report_folder

    items = read_items(prompts_file)
    if reflag_file is not None:
        _reflag(reflag_file, prompts_file, items, out)
        return
    if kinds:
        items = [i for i in items if i.kind in kinds]
        if not items:
            raise click.UsageError(f"{prompts_file} has no prompts of kind {', '.join(kinds)}")
    items = items[:limit]
    systems, file_baseline = read_systems(systems_file) if systems_file else (list(DEFAULT_SYSTEMS), None)
    cfg = EvalConfig(model=model, judges=list(judges), systems=systems, baseline=baseline or file_baseline,
                     max_new_tokens=max_new_tokens, seed=seed, provider=provider, threads=threads)
    check_report_folder(out, REPORT_FILES)  # before the long run: a folder with the user's files in the way is refused now
    report = run_eval(cfg, items, progress=None if quiet else (lambda msg: click.echo(msg, err=True)))
    report["meta"]["prompts"] = str(prompts_file)
    files = write_report(report, out)
    click.echo(markdown(report).split("## Flags")[0].rstrip())
    click.echo("wrote " + ", ".join(str(f) for f in files))


def _reflag(report_file: Path, prompts_file: Path, items: list, out: Path) -> None:
    from ortrefine.errors import ConfigError
    from ortrefine.evaluate.report import REPORT_FILES, markdown, read_report, write_report
    from ortrefine.evaluate.run import reflag
    from ortrefine.reports import check_report_folder

    stored = read_report(report_file)
    if out.resolve() == report_file.resolve().parent:
        raise ConfigError(f"--out {out} holds the report being recounted: give a new folder, so the stored run stays as it was")
    check_report_folder(out, REPORT_FILES)
    report = reflag(stored, items)
    report["meta"]["prompts"] = str(prompts_file)
    files = write_report(report, out)
    click.echo(markdown(report).split("## Flags")[0].rstrip())
    click.echo("wrote " + ", ".join(str(f) for f in files))


@click.command("eval-kept")
@click.option("--full", "full_reports", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="report.json of a run on the full-precision bundle (repeatable: one per prompt set, paired with --quant in order).")
@click.option("--quant", "quant_reports", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="report.json of the same run on the quantized bundle.")
@click.option("--system", "systems", multiple=True, help="The system whose gain is compared (default: refine); once for all "
              "pairs, or once per --full where the stored runs name it differently.")
@click.option("--quant-system", "quant_systems", multiple=True, help="Its name in the --quant reports, where that differs "
              "(default: --system); once, or once per --quant.")
@click.option("--baseline", default=None, help="The system the gain is measured from (default: the reports' baseline).")
@click.option("--judge", default=None, help="Judge name (default: the one judge every report has).")
@click.option("--threshold", type=float, default=0.8, show_default=True, help="Share of the full-precision gain to test for.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the bootstrap intervals.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@domain_errors
def eval_kept_command(full_reports: tuple[Path, ...], quant_reports: tuple[Path, ...], systems: tuple[str, ...], quant_systems: tuple[str, ...],
                      baseline: str | None, judge: str | None, threshold: float, seed: int, as_json: bool) -> None:
    """How much of the judged gain of SYSTEM over BASELINE a quantized bundle keeps, from stored eval reports."""
    import json

    from ortrefine.evaluate.kept import gain_kept, markdown, read_report

    if len(full_reports) != len(quant_reports):
        raise click.UsageError(f"give one --quant per --full (got {len(full_reports)} and {len(quant_reports)})")
    pairs = [(read_report(a), read_report(b)) for a, b in zip(full_reports, quant_reports)]
    result = gain_kept(pairs, system=systems or "refine", baseline=baseline, judge=judge, threshold=threshold, seed=seed,
                       quant_system=quant_systems or None,
                       names=[(str(a), str(b)) for a, b in zip(full_reports, quant_reports)])
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else markdown(result))


commands = [eval_command, eval_kept_command]
