"""Export a causal LM to an ONNX bundle with Optimum's exporter, then validate it against torch."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ortrefine.bundle.write import OutputClaim, claim_output, write_manifest
from ortrefine.errors import ValidationError
from ortrefine.export.sources import Source, load_source, resolve_source

log = logging.getLogger(__name__)
TASK = "text-generation-with-past"


@dataclass
class ExportConfig:
    """What to export and where.

    source: catalog name, hub id, checkpoint folder, .gguf file, or tiny:<arch>.
    output: bundle folder; default models/<catalog name> or models/<last path part>.
    revision: hub revision. opset: ONNX opset (Optimum's default when None).
    atol: max |Δlogits| ONNX vs torch; None takes the catalog's (1e-3 for real models).
    validate: compare with torch before writing (on failure: ValidationError, no bundle).
    overwrite: replace an existing bundle. progress: show a progress bar on stderr.
    graph: "fused" writes ortrefine's own graph of ONNX Runtime contrib ops (GroupQueryAttention,
        rotary inside, SkipSimplifiedLayerNormalization; 353 nodes on SmolLM2; the families in
        export/families.py: llama, gemma3),
        checked against Optimum's export and torch; "optimum" keeps Optimum's graph (7,426 nodes);
        "auto" is fused where supported.
    slim: rewrite Optimum's graph with onnxslim (constant folding, dead nodes, fusions: 7,426 →
        2,848 nodes on SmolLM2), checked against the unslimmed graph before it replaces it.
    """

    source: str
    output: Path | None = None
    revision: str | None = None
    opset: int | None = None
    atol: float | None = None
    validate: bool = True
    overwrite: bool = False
    progress: bool = False
    slim: bool = False
    graph: str = "auto"

    def __post_init__(self) -> None:
        from ortrefine.errors import ConfigError

        if self.graph not in GRAPHS:
            raise ConfigError(f"unknown graph {self.graph!r}; choose one of {', '.join(GRAPHS)}")
        if self.slim and self.graph == "fused":
            raise ConfigError("--slim cleans up Optimum's graph; it does not apply to --graph fused")


GRAPHS = ("auto", "fused", "optimum")


def graph_kind(cfg: ExportConfig, config: Any) -> str:
    """The graph to write: auto means fused for the model types families.py knows (not with --slim)."""
    from ortrefine.export.families import SUPPORTED

    if cfg.graph == "auto":
        return "fused" if config.model_type in SUPPORTED and not cfg.slim else "optimum"
    return cfg.graph


@dataclass
class ExportResult:
    """path: the bundle. max_abs_diff: worst |Δlogits| seen in validation. seconds: wall time."""

    path: Path
    manifest: dict[str, Any]
    max_abs_diff: float | None
    seconds: float
    checks: list[dict[str, Any]] = field(default_factory=list)


def default_output(src: Source, source: str) -> Path:
    from ortrefine.catalog import models_dir

    name = src.catalog_name or Path(source.rstrip("/")).name.removesuffix(".gguf").replace(":", "-")
    return models_dir() / name


def special_tokens(model: Any, tokenizer: Any) -> dict[str, Any]:
    """eos from generation_config first (SmolLM2's tokenizer names the wrong eos: FACTS.md)."""
    gen = model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    bos = gen.bos_token_id if gen.bos_token_id is not None else tokenizer.bos_token_id
    pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
    out: dict[str, Any] = {"eos_ids": eos_ids, "bos_id": bos, "pad_id": pad if pad is not None else (eos_ids[0] if eos_ids else None)}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, str):
            out[name] = value
    return out


def validation_inputs(vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(prefix, continuation) pairs: a plain pass and a KV-cache step, of uneven lengths."""
    rng = np.random.default_rng(seed)
    draw = lambda n: rng.integers(3, vocab, size=n).tolist()  # noqa: E731
    return [(draw(9), draw(1)), (draw(13), draw(4)), (draw(3), draw(7))]


def validate_bundle(folder: Path, model: Any, atol: float) -> list[dict[str, Any]]:
    """Logits of the ONNX graph (prefix pass, then a cached step) vs torch on the same ids.

    Collects every check, then raises ValidationError naming the ones past tolerance.
    """
    import torch

    from ortrefine.runtime.bundle import open_bundle
    from ortrefine.runtime.session import LM

    lm = LM(open_bundle(folder), provider="cpu")
    checks = []
    for prefix, cont in validation_inputs(lm.vocab_size):
        with torch.no_grad():
            ref = model(torch.tensor([prefix + cont])).logits[0].float().numpy()
        head = lm.prefill(prefix)
        step = lm.forward(np.array([cont]), head.kv)
        got = np.concatenate([head.logits[0], step.logits[0]])
        diff = float(np.abs(got - ref).max())
        checks.append({"prefix_len": len(prefix), "cached_len": len(cont), "max_abs_diff": diff, "ok": diff <= atol})
    bad = [c for c in checks if not c["ok"]]
    if bad:
        raise ValidationError(f"ONNX logits differ from torch beyond atol={atol}: {bad}; the bundle was not written")
    return checks


def _onnx_opset(model_file: Path) -> int | None:
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


def write_bundle(model: Any, tokenizer: Any, src: Source, out: Path, cfg: ExportConfig, claim: OutputClaim | None = None) -> ExportResult:
    """Export an already-loaded model: stage, export, validate, manifest, rename into place.

    `claim`: the caller's hold on `out` (taken before loading the model, so that a second writer
    fails at once); without one it is taken here."""
    from optimum.exporters.onnx import onnx_export_from_model
    from tqdm import tqdm

    t0 = time.perf_counter()
    atol = cfg.atol if cfg.atol is not None else src.validate_atol
    steps = tqdm(total=3, desc=f"export {out.name}", disable=not cfg.progress, leave=False)
    with ExitStack() as stack:
        if claim is None:
            claim = stack.enter_context(claim_output(out, cfg.overwrite))
        tmp = stack.enter_context(claim.staging())
        steps.set_postfix_str("onnx")
        onnx_export_from_model(model, tmp, opset=cfg.opset, task=TASK, do_validation=False)
        tokenizer.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        graph = None
        kind = graph_kind(cfg, model.config)
        if kind == "fused":
            from ortrefine.export.llama_graph import replace_with_fused

            steps.set_postfix_str("fuse")
            graph = replace_with_fused(model, tmp / "model.onnx", atol)
        elif cfg.slim:
            from ortrefine.export.fuse import slim_bundle_graph

            steps.set_postfix_str("slim")
            graph = slim_bundle_graph(tmp / "model.onnx", tmp / "model.onnx").to_dict()
        if kind == "optimum":
            externalize_weights(tmp / "model.onnx")
        steps.update()
        checks: list[dict[str, Any]] = []
        if cfg.validate:
            steps.set_postfix_str("validate")
            checks = validate_bundle_prepared(tmp, model, tokenizer, src, atol)
        steps.update()
        config = model.config
        manifest = {
            "name": out.name,
            "source": src.describe(),
            "task": TASK,
            "architecture": config.model_type,
            "precision": "fp32",
            "parent": None,
            "opset": _onnx_opset(tmp / "model.onnx"),
            "special_tokens": special_tokens(model, tokenizer),
            "context_length": int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)),
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "validation": {"atol": atol, "checks": checks},
            "graph": {"kind": kind, **(graph or {})},
        }
        manifest = write_manifest(tmp, manifest)
        steps.update()
    steps.close()
    worst = max((c["max_abs_diff"] for c in checks), default=None)
    return ExportResult(out, manifest, worst, time.perf_counter() - t0, checks)


def externalize_weights(model_file: Path) -> None:
    """Move the weights of a single-file graph into model.onnx_data beside it (memory-mapped at load,
    like the fused and quantized bundles: writer.save_with_external_data)."""
    import onnx

    from ortrefine.export.writer import save_with_external_data

    if model_file.with_name(model_file.name + "_data").exists():
        return
    save_with_external_data(onnx.load(str(model_file)), model_file)


def validate_bundle_prepared(tmp: Path, model: Any, tokenizer: Any, src: Source, atol: float) -> list[dict[str, Any]]:
    """Validation needs a manifest to open the staged folder: write a provisional one first."""
    write_manifest(tmp, {"special_tokens": special_tokens(model, tokenizer), "context_length": 1 << 20})
    return validate_bundle(tmp, model, atol)


def export_bundle(cfg: ExportConfig) -> ExportResult:
    """Resolve the source, load it in torch, and write a validated bundle."""
    from ortrefine.export.sources import require_export_extra

    require_export_extra()  # before any torch import: a runtime-only install gets the pip command, not a traceback
    import torch

    src = resolve_source(cfg.source, cfg.revision)
    out = Path(cfg.output) if cfg.output else default_output(src, cfg.source)
    protect = {"local": [Path(src.location)], "gguf": [Path(src.location) / (src.gguf_file or "")]}.get(src.kind, [])
    with claim_output(out, cfg.overwrite, protect) as claim:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        model, tokenizer = load_source(src)
        return write_bundle(model, tokenizer, src, out, cfg, claim)
