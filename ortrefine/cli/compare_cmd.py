"""`ortrefine compare`: the same prompts through several bundles, judged by one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ortrefine.cli.common import MAX_THREADS, LibraryChoice, ModelName, Text, domain_errors, providers


def _modes() -> tuple[str, ...]:
    from ortrefine.runtime.refine import MODES

    return MODES


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=ModelName())
@click.option("--prompts", "prompts_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL: prompt, optional kind/chat, keywords, reference.")
@click.option("--judge", default=None, type=ModelName(), help="Bundle whose log-probs judge every output (default: the first bundle).")
@click.option("--out", default="report", show_default=True, type=click.Path(path_type=Path),
              help="Folder for report.json, report.md, report.png: new, empty, or one ortrefine wrote a report into "
                   "(nothing else in it is replaced).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--objective", "objectives", multiple=True, type=Text(), help="Terms of J (default: refine's).")
@click.option("--mode", type=LibraryChoice(_modes), default="regenerate", show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--positions-per-batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--sweeps", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N prompts.")
@click.option("--provider", type=LibraryChoice(providers), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None)
@domain_errors
def compare(bundles: tuple[str, ...], prompts_file: Path, judge: str | None, out: Path, limit: int | None,
            provider: str, threads: int | None, objectives: tuple[str, ...], **kw: Any) -> None:
    """Refine the same prompts with every bundle and judge the outputs with one bundle."""
    from ortrefine.reports import check_report_folder
    from ortrefine.evaluate.compare import REPORT_FILES, compare as run, markdown_table, read_prompts, write_report
    from ortrefine.runtime.refine import RefineConfig

    try:
        prompts = read_prompts(prompts_file)[:limit]
    except UnicodeDecodeError as e:
        raise click.BadParameter(f"{prompts_file} is not UTF-8 text (byte {e.start}); re-encode it as UTF-8",
                                 param_hint="'--prompts'") from None
    cfg = RefineConfig(objectives=list(objectives), **kw) if objectives else RefineConfig(**kw)
    judge = judge or bundles[0]
    check_report_folder(out, REPORT_FILES)  # before the long run: a folder with the user's files in the way is refused now
    with click.progressbar(length=len(prompts) * len(bundles), label="compare", file=click.get_text_stream("stderr")) as bar:
        rows = run(bundles, prompts, judge, cfg, provider=provider, threads=threads, progress=bar.update)
    meta = {"judge": judge, "prompts": str(prompts_file), "n_prompts": len(prompts),
            "config_short": {"objectives": list(objectives), **kw}}
    files = write_report(rows, out, meta)
    click.echo(markdown_table(rows))
    click.echo("wrote " + ", ".join(str(f) for f in files))


commands = [compare]
