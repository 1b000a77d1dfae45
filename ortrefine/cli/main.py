"""The `ortrefine` command. Each command parses options, calls the library, prints the result.

Domain errors (OrtRefineError) become one line and exit 1; usage errors exit 2 (click).
Heavy imports (torch, optimum) happen only inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click


from ortrefine.cli.common import (DEFAULT_MODEL, FiniteFloat, LibraryChoice, ModelName, Text, domain_errors, load_lm,  # noqa: F401  (re-exported)
                                  model_options, only_with, providers, strategies)
from ortrefine.cli.quiet import verbose_option

# Options of one decoding strategy (refused with another: they would be silently ignored).
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "seed")
BEAM_OPTIONS = ("num_beams", "length_penalty", "early_stopping")
# opsets the export can write: up to torch's TorchScript exporter's maximum (what Optimum runs;
# torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, 20 in torch 2.13), from 14, the lowest the
# catalog's architectures export at (below it ops such as arange or triu have no ONNX form: a traceback)
OPSET_RANGE = (14, 20)


def _early_stopping() -> list[str]:
    from ortrefine.runtime.decoding import EARLY_STOPPING

    return list(EARLY_STOPPING)


def generation_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--stop", multiple=True, type=Text(), help="Stop string (repeatable, not empty)."),
        click.option("--early-stopping", type=LibraryChoice(_early_stopping), default="false", show_default=True,
                     help="Beam search only."),
        click.option("--length-penalty", type=FiniteFloat(), default=1.0, show_default=True, help="Beam search only."),
        click.option("--num-beams", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Beam search only (at most ortrefine.runtime.decoding.MAX_BEAMS, 256)."),
        click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for sampling (a whole number >= 0)."),
        click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=1.0, show_default=True, help="Sampling only."),
        click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Sampling only (0: off)."),
        click.option("--temperature", type=FiniteFloat(0, min_open=True), default=1.0, show_default=True, help="Sampling only."),
        click.option("--strategy", type=LibraryChoice(strategies), default="greedy", show_default=True),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--system", default=None, type=Text(), help="System message for --chat."),
        click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template."),
    ]
    for opt in opts:
        fn = opt(fn)
    return fn


def check_generation_options(ctx: click.Context, strategy: str, chat: bool) -> None:
    """Refuse options the chosen strategy (or the missing --chat) would silently ignore."""
    only_with(ctx, SAMPLING_OPTIONS, "--strategy sample", strategy == "sample")
    only_with(ctx, BEAM_OPTIONS, "--strategy beam", strategy == "beam")
    only_with(ctx, ("system",), "--chat", chat)


def generation_config(kw: dict[str, Any]):
    from ortrefine.runtime.decoding import EARLY_STOPPING, GenerationConfig

    es = EARLY_STOPPING[kw.pop("early_stopping")]
    return GenerationConfig(
        strategy=kw.pop("strategy"), max_new_tokens=kw.pop("max_new_tokens"), temperature=kw.pop("temperature"),
        top_k=kw.pop("top_k"), top_p=kw.pop("top_p"), seed=kw.pop("seed"), num_beams=kw.pop("num_beams"),
        length_penalty=kw.pop("length_penalty"), early_stopping=es, stop=tuple(kw.pop("stop")),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ortrefine")
def cli() -> None:
    """Export small causal LMs to ONNX and refine their outputs at inference time."""


@cli.command()
@click.argument("source")
@click.argument("output", required=False, type=click.Path(path_type=Path))
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--opset", type=click.IntRange(OPSET_RANGE[0], OPSET_RANGE[1]), default=None,
              help=f"ONNX opset, {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (Optimum's default if unset).")
@click.option("--atol", type=FiniteFloat(0, min_open=True), default=None, help="Max |Δlogits| ONNX vs torch.")
@click.option("--no-validate", is_flag=True, help="Skip the comparison with torch.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option("--graph", type=click.Choice(["auto", "fused", "optimum"]), default="auto", show_default=True,
              help="fused: ortrefine's graph of ONNX Runtime contrib ops (llama and gemma3 families; faster); optimum: Optimum's export; "
                   "auto: fused where supported.")
@click.option("--slim", is_flag=True, help="Clean Optimum's graph up with onnxslim (validated against the unslimmed one).")
@verbose_option
@domain_errors
def export(source: str, output: Path | None, revision: str | None, opset: int | None, atol: float | None, no_validate: bool,
           overwrite: bool, graph: str, slim: bool) -> None:
    """Export SOURCE (catalog name, hub id, folder, .gguf, tiny:ARCH) to a bundle at OUTPUT."""
    from ortrefine.export.onnx_export import ExportConfig, export_bundle

    r = export_bundle(ExportConfig(source, output, revision, opset, atol, not no_validate, overwrite, progress=True, slim=slim, graph=graph))
    diff = "not validated" if r.max_abs_diff is None else f"max |Δlogits| vs torch {r.max_abs_diff:.2e}"
    g = r.manifest["graph"]
    kind = g["kind"] + " graph" + (f" of {g['nodes_after']} nodes" if "nodes_after" in g else "")
    click.echo(f"wrote {r.path} ({sum(f['bytes'] for f in r.manifest['files'].values()) / 1e6:.1f} MB, {kind}, {diff}, {r.seconds:.1f}s)")


@cli.command()
@click.argument("prompt", type=Text(stdin=True))
@model_options
@generation_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@domain_errors
def generate(ctx: click.Context, prompt: str, model: str, provider: str, threads: int | None, chat: bool, system: str | None,
             as_json: bool, **kw: Any) -> None:
    """Decode a continuation of PROMPT (`-`: read it from standard input)."""
    check_generation_options(ctx, kw["strategy"], chat)
    cfg = generation_config(kw)
    lm = load_lm(model, provider, threads)
    from ortrefine.runtime.decoding import generate as run

    ids = lm.encode_prompt(prompt, chat=chat, max_new_tokens=cfg.max_new_tokens, system=system)
    r = run(lm, ids, cfg)
    if as_json:
        click.echo(json.dumps({**r.to_dict(), "provider": lm.provider, "model": str(lm.bundle.path)}))
    else:
        click.echo(r.text)
        click.echo(f"[{r.strategy}, {len(r.ids)} tokens, log P {r.logprob:.2f}, {r.finish_reason}, {r.seconds:.2f}s, {lm.provider}]", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@domain_errors
def models(as_json: bool) -> None:
    """Catalog entries and the bundles found under the models folder."""
    from ortrefine.inventory import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"{r['precision']:>12} {r['size_mb']:8.1f} MB  {r['path']}" if r["path"] else "   not exported (ortrefine export " + r["name"] + ")"
        click.echo(f"{r['name']:<28} {r['kind']:<8} {state}")


@cli.command()
@click.option("--model", "-m", default=None, type=ModelName(), help="Also open this bundle and report the provider a session really gets.")
@click.option("--provider", type=LibraryChoice(providers), default="auto", show_default=True)
@domain_errors
def doctor(model: str | None, provider: str) -> None:
    """Versions, available execution providers, and which provider a session really got."""
    from ortrefine.inventory import doctor_report

    for key, value in doctor_report(model, provider).items():
        click.echo(f"{key}: {value}")


# Commands that live in their own modules (each defines `commands: list[click.Command]`). Their
# module level must stay torch-free: heavy imports go inside the command bodies.
SUBCOMMAND_MODULES = ["ortrefine.cli.refine_cmd", "ortrefine.cli.compare_cmd", "ortrefine.cli.quantize_cmd", "ortrefine.cli.distill_cmd",
                      "ortrefine.cli.gradient_cmd", "ortrefine.cli.bench_cmd", "ortrefine.cli.bundle_cmd", "ortrefine.cli.eval_cmd", "ortrefine.cli.serve_cmd", "ortrefine.cli.batch_cmd"]


def _register_subcommands() -> None:
    import importlib
    import importlib.util

    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            for command in importlib.import_module(name).commands:
                cli.add_command(command)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    from ortrefine.cli.entry import run

    run()
