"""`ortrefine distill`: a smaller student from a bundle's teacher checkpoint (torch, export extra).

Module level stays torch-free: the library is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from ortrefine.cli.common import domain_errors
from ortrefine.cli.quiet import verbose_option


def parse_layers(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of layer indices, e.g. 0,3,6,29") from None


@click.command()
@click.argument("bundle")
@click.option("--layers", callback=parse_layers, default=None,
              help="Teacher layers the student keeps, e.g. 0,3,6,9,12,15,18,21,24,29 (default: every third plus the last).")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Optimizer steps.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help='Training text: .jsonl ("text" or "prompt" per line) or a text file (blank-line paragraphs).')
@click.option("--self-generated", type=click.IntRange(min=1), default=None,
              help="Train on this many sequences sampled from the teacher (default 256 when --data is not given).")
@click.option("--prompts", type=click.Path(path_type=Path), default=None, help="Seed prompts for --self-generated (.jsonl or text).")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None, help="Held-out text for perplexity (default: a split).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=4), default=64, show_default=True, help="Max tokens per sequence.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True, help="Micro-batches per step.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=3e-4, show_default=True, help="Peak learning rate.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True, help="KD temperature T.")
@click.option("--alpha-kd", type=click.FloatRange(0), default=0.5, show_default=True, help="Weight of T²·KL(teacher‖student).")
@click.option("--alpha-ce", type=click.FloatRange(0), default=0.5, show_default=True, help="Weight of the cross-entropy on the text.")
@click.option("--train-embeddings", is_flag=True, help="Also train the token embeddings (frozen by default).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in <out>.ckpt/.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Student bundle folder (default: <bundle>-student).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing student bundle and discard an earlier run's checkpoint (only folders ortrefine wrote).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads (1 is often faster on a busy box).")
@verbose_option
@domain_errors
def distill(bundle: str, layers: tuple[int, ...] | None, **kw) -> None:
    """Distil a student with fewer layers from BUNDLE's teacher checkpoint and export it."""
    from ortrefine.export.distill import DistillConfig, distill as run

    cfg = DistillConfig(bundle=bundle, layers=layers, progress=True, **kw)
    try:
        r = run(cfg)
    except KeyboardInterrupt as e:  # ortrefine.cli.entry prints this and exits 128 + signal
        e.hint = (f"no bundle was written. Checkpoints are saved every {cfg.checkpoint_every} steps: "
                  "rerun the same command with --resume to continue")
        raise
    size = sum(f["bytes"] for f in r.manifest["files"].values()) / 1e6
    click.echo(
        f"wrote {r.path} ({size:.1f} MB; {r.student_params / 1e6:.1f} M params vs teacher {r.teacher_params / 1e6:.1f} M; "
        f"layers {','.join(map(str, r.layers))})"
    )
    click.echo(
        f"loss {r.losses[0]:.3f} -> {r.losses[-1]:.3f} over {len(r.losses)} steps; held-out ppl teacher {r.teacher_ppl:.2f}, "
        f"student {r.student_ppl:.2f} (before training {r.student_ppl_before:.2f}) on {r.eval_tokens} tokens; {r.seconds:.1f}s"
    )


commands = [distill]
