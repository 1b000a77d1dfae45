"""`ortrefine quantize`: a quantized bundle beside its parent, checked by the quality gate.

Module level stays torch- and onnx-free (click and the numpy-only gate config); the quantizer,
which pulls in onnx and onnxruntime.quantization, is imported inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ortrefine.cli.common import FiniteFloat, LibraryChoice, domain_errors, providers
from ortrefine.cli.quiet import verbose_option
from ortrefine.export.quality import GateConfig  # numpy only: no torch, no onnx


def _quantize():
    """The quantizer module (imports onnx/onnxruntime: only when its choices are needed)."""
    import ortrefine.export.quantize as q

    return q


@click.command()
@click.argument("bundle")
@click.option("--to", "to", required=True, type=LibraryChoice(lambda: _quantize().TARGETS),
              help="int8/int4: weight-only MatMulNBits; int8-dynamic: quantize_dynamic (batch-dependent); fp16: for CUDA.")
@click.option("--block-size", type=int, default=32, show_default=True, help="Weights per block for int4/int8 (power of two >= 16).")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=None,
              help="MatMulNBits compute type (4 = int8, the default for rtn; 1 = fp32; 0 = unset).")
@click.option("--accuracy-level-8bit", type=click.IntRange(0, 4), default=None,
              help="Compute type of the 8-bit MatMulNBits alone (default: --accuracy-level's). The CPU has no fast "
                   "fp32 kernel for 8-bit blocks: --accuracy-level 1 --accuracy-level-8bit 4 is fp32 where it is fast.")
@click.option("--algo", type=LibraryChoice(lambda: _quantize().ALGOS), default="auto", show_default=True,
              help="int4/int8 weights: gguf (from a GGUF source's own blocks), rtn, hqq; auto = gguf for int4 "
                   "of a GGUF-exported bundle, else rtn (gptq is refused: see the message).")
@click.option("--gguf-layout", type=LibraryChoice(lambda: _quantize().GGUF_LAYOUTS), default="exact", show_default=True,
              help="--algo gguf, blocks with an offset (Q4_1, Q4_K): exact (a small block-sum MatMul per "
                   "projection) or rounded (integer zero points, approximate).")
@click.option("--quantize-embeddings", is_flag=True, help="Untie the lm_head and quantize it and the embedding table too.")
@click.option("--head-bits", type=click.Choice(["4", "8"]), default=None,
              help="Untie the lm_head and quantize it to this many bits; the embedding table stays fp32.")
@click.option("--symmetric", is_flag=True,
              help="int4/int8 rtn without zero points (grids centred on 0).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: <bundle>-<to> beside it).")
@click.option("--provider", type=LibraryChoice(providers), default="auto", show_default=True,
              help="Provider the bundle is for (auto: cuda for fp16, else cpu). The gate runs on the CPU (fp16: on CUDA if present).")
@click.option("--max-kl", type=FiniteFloat(0), default=GateConfig.max_kl, show_default=True,
              help="Gate: max mean KL(parent || quantized), nats/token.")
@click.option("--max-ppl-ratio", type=FiniteFloat(1), default=GateConfig.max_ppl_ratio, show_default=True,
              help="Gate: max perplexity ratio quantized / parent.")
@click.option("--min-top1", type=FiniteFloat(0, 1), default=GateConfig.min_top1, show_default=True,
              help="Gate: min fraction of positions whose top-1 next token agrees.")
@click.option("--force", is_flag=True, help="Keep the bundle even if the quality gate fails (recorded in the manifest).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbose_option
@domain_errors
def quantize(bundle: str, to: str, block_size: int, accuracy_level: int | None, accuracy_level_8bit: int | None, algo: str, quantize_embeddings: bool,
             head_bits: str | None, symmetric: bool, gguf_layout: str, out: Path | None, provider: str, max_kl: float, max_ppl_ratio: float, min_top1: float,
             force: bool, overwrite: bool, as_json: bool) -> None:
    """Quantize BUNDLE with ONNX Runtime's quantizers and check it against BUNDLE on built-in text."""
    from ortrefine.export.quantize import QuantizeConfig, quantize as run

    cfg = QuantizeConfig(bundle, to, out=out, block_size=block_size, accuracy_level=accuracy_level,
                         accuracy_level_8bit=accuracy_level_8bit, algo=algo,
                         quantize_embeddings=quantize_embeddings, head_bits=int(head_bits) if head_bits else None, symmetric=symmetric, gguf_layout=gguf_layout, provider=provider, overwrite=overwrite, force=force,
                         gate=GateConfig(max_kl=max_kl, max_ppl_ratio=max_ppl_ratio, min_top1=min_top1))
    r = run(cfg)
    if as_json:
        click.echo(json.dumps({"path": str(r.path), "precision": to, "size_bytes": r.size_bytes,
                               "parent_size_bytes": r.parent_size_bytes, "ops": r.ops, "gate": r.gate.to_dict(),
                               "seconds": r.seconds, "algo": (r.manifest.get("quantization") or {}).get("algo"),
                               "gguf": (r.manifest.get("quantization") or {}).get("gguf")}))
        return
    click.echo(f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB, parent {r.parent_size_bytes / 1e6:.1f} MB, {r.seconds:.1f}s)")
    gguf = (r.manifest.get("quantization") or {}).get("gguf")
    if gguf:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(gguf["types"].items()))
        rest = f"; {len(gguf['fallback'])} MatMuls not taken from the file: round-to-nearest" if gguf["fallback"] else ""
        moved = f", weights moved by up to {gguf['max_rounding']:.3g}" if gguf["max_rounding"] else ""
        shared = "; embedding stored once, in 8 bits" if any(gguf.get("embedding_gathers", {}).values()) else ""
        click.echo(f"weights from {gguf['file']}'s own blocks ({kinds}; layout {gguf['layout']}{moved}){shared}{rest}")
    g = r.gate
    if g.skipped:
        click.echo(f"quality gate skipped: {g.skipped}")
    elif g.forced:
        click.echo(f"quality gate FAILED, bundle kept because of --force: {'; '.join(g.failures)}")
        click.echo(f"  {g.summary()}")
    else:
        click.echo(f"quality gate passed: {g.summary()}")
    if to == "int8-dynamic":
        click.echo("note: int8-dynamic scores depend on batch-mates (one activation scale per tensor per batch); "
                   "its manifest says batch_invariant: false")


commands = [quantize]
