"""`ortrefine export-gradient`: add the gradient graph (for gradient-guided refinement) to a bundle.

Module level stays torch-free; the export imports torch inside the command.
"""

from __future__ import annotations

import click

from ortrefine.cli.common import FiniteFloat, domain_errors
from ortrefine.cli.quiet import verbose_option


@click.command("export-gradient")
@click.argument("bundle")
@click.option("--rtol", type=FiniteFloat(0, min_open=True), default=None,
              help="Max relative error (max|Δ| / max|torch|) of each output vs torch autograd "
                   "[default: the source's tolerance, 1e-4 for tiny models, 1e-3 for real ones].")
@click.option("--overwrite", is_flag=True, help="Replace the bundle's existing gradient graph.")
@verbose_option
@domain_errors
def export_gradient(bundle: str, rtol: float | None, overwrite: bool) -> None:
    """Add gradient.onnx (log-probs and ∂log P/∂embeddings) to BUNDLE (folder or catalog name).

    Loads the checkpoint recorded in the bundle's manifest, so it needs the export extra.
    """
    from ortrefine.export.gradient import GradientExportConfig, export_gradient as run

    r = run(GradientExportConfig(bundle=bundle, rtol=rtol, overwrite=overwrite, progress=True))
    v = r.manifest["gradient"]["validation"]
    click.echo(
        f"wrote {r.path / 'gradient.onnx'} (+{r.bytes / 1e6:.1f} MB; ∂/∂embeddings vs torch: max rel. error "
        f"{r.max_rel_error:.1e}; log-probs vs the bundle's graph: max |Δ| {v['bundle_logprob_max_abs_diff']:.1e}; {r.seconds:.1f}s)"
    )


commands = [export_gradient]
