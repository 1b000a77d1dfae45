"""quantize(): resolve the parent, quantize its graph, gate it, write the bundle atomically."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortrefine.bundle.write import OutputClaim, claim_output, write_manifest
from ortrefine.errors import BundleError, ConfigError, ExportError, MissingExtraError
from ortrefine.export.quality import GateReport, check, measure
from ortrefine.export.quantize.config import NO_8BIT_NODES, WEIGHT_ONLY, QuantizeConfig, QuantizeResult
from ortrefine.export.quantize.graph import op_counts, save_model, set_accuracy_level, untie_lm_head
from ortrefine.export.quantize.methods import _dynamic, _fp16, _from_gguf, _weight_only, resolve_algo
from ortrefine.runtime.bundle import MODEL_FILE, Bundle, open_bundle, sha256_file

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM

log = logging.getLogger("ortrefine.export.quantize")


def _settings(cfg: QuantizeConfig, untied: list[dict[str, Any]], ops: dict[str, int],
              gguf_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The quantization section of the manifest."""
    common = {"to": cfg.to, "target_provider": cfg.target_provider, "quantize_embeddings": cfg.quantize_embeddings,
              "untied": untied, "ops": ops}
    if cfg.accuracy_level_8bit is not None:
        common["accuracy_level_8bit"] = cfg.accuracy_level_8bit
    if gguf_info is not None:
        return {**common, "tool": "ortrefine.export.gguf_quant", "op": "MatMulNBits", "algo": "gguf",
                "accuracy_level": cfg.effective_accuracy_level, "gguf": gguf_info}
    if cfg.to in WEIGHT_ONLY:
        return {**common, "tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
                "op": "MatMulNBits", "bits": cfg.bits, "block_size": cfg.block_size, "symmetric": cfg.symmetric,
                "accuracy_level": cfg.effective_accuracy_level, "algo": cfg.algo,
                "embedding_bits": 4 if cfg.quantize_embeddings and cfg.bits == 4 else None,
                "head_bits": cfg.head_bits or (cfg.bits if cfg.quantize_embeddings else None)}
    if cfg.to == "int8-dynamic":
        return {**common, "tool": "onnxruntime.quantization.quantize_dynamic", "op": "MatMulInteger",
                "weight_type": "QInt8", "per_channel": False, "reduce_range": False}
    return {**common, "tool": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True}


# Manifest sections of the parent that describe files a quantized bundle does not get.
_NOT_INHERITED = ("files", "created", "versions", "format", "validation", "gradient")


def _copy_side_files(src: Path, dst: Path, manifest: dict[str, Any]) -> None:
    """Tokenizer, configs, chat template: every file the parent's manifest lists but graphs,
    arrays of the fp32 weights (a gradient export's embeddings.npy and the files it lists) and
    the manifest. Only listed regular files: whatever else sits in the parent's folder (a
    symlink to a secret, the user's notes) is not the bundle's and does not travel with it."""
    from ortrefine.bundle.format import regular_file

    skip = set((manifest.get("gradient") or {}).get("files", []))
    for name in sorted(manifest.get("files", {})):
        if ".onnx" in name or name.endswith(".npy") or name in skip or regular_file(src, name) is None:
            continue
        shutil.copy2(src / name, dst / name, follow_symlinks=False)


def _quantize_graph(cfg: QuantizeConfig, parent: "LM", folder: Path) -> tuple[dict[str, int], list[dict[str, Any]], dict[str, Any] | None]:
    """Write the quantized model.onnx into folder; return (op counts, untied lm_head weights, the
    GGUF rewrite's record or None)."""
    import onnx

    model = onnx.load(str(parent.bundle.model_file))
    untied = untie_lm_head(model) if cfg.quantize_embeddings or cfg.head_bits or cfg.algo == "gguf" else []
    gguf_info = None
    if cfg.algo == "gguf":
        model, gguf_info = _from_gguf(model, cfg, parent, [u["matmul"] for u in untied])
        save_model(_levels(model, cfg), folder)
    elif cfg.to == "int8-dynamic":
        _dynamic(model, cfg, folder)
    else:
        heads = [u["matmul"] for u in untied] if cfg.head_bits else []
        save_model(_levels(_weight_only(model, cfg, heads), cfg) if cfg.to in WEIGHT_ONLY else _fp16(model), folder)
    del model
    ops = op_counts(onnx.load(str(folder / MODEL_FILE), load_external_data=False))
    changed = {"int8": "MatMulNBits", "int4": "MatMulNBits", "int8-dynamic": "MatMulInteger", "fp16": "fp16_initializers"}[cfg.to]
    if ops[changed] == 0:
        hint = "; try --quantize-embeddings to quantize the tied lm_head and embeddings" if cfg.to in WEIGHT_ONLY else ""
        raise ExportError(
            f"{parent.bundle.path}: onnxruntime's quantizer changed nothing (no MatMul with a constant weight; "
            f"GPT-2 style exports use Gemm, which it does not handle); nothing was written{hint}"
        )
    return ops, untied, gguf_info


def _levels(model: Any, cfg: QuantizeConfig) -> Any:
    """The 8-bit nodes' own compute type, where one was asked for (QuantizeConfig.accuracy_level_8bit).

    A graph with no MatMulNBits at all is left to the "changed nothing" refusal, the real cause.
    """
    if cfg.accuracy_level_8bit is None or not any(n.op_type == "MatMulNBits" for n in model.graph.node):
        return model
    if set_accuracy_level(model, 8, cfg.accuracy_level_8bit) == 0:
        raise ConfigError(NO_8BIT_NODES)
    return model


def _gate(cfg: QuantizeConfig, parent_bundle: Bundle, parent: "LM", folder: Path) -> GateReport:
    """Measure the staged graph against the parent on the gate texts (CPU, or CUDA for fp16 if present)."""
    from ortrefine.runtime.session import LM

    staged = replace(parent_bundle, path=folder)
    try:
        candidate = LM(staged, provider=parent.provider)
    except BundleError as e:
        if cfg.to != "fp16":
            raise ExportError(f"onnxruntime cannot load the quantized graph ({e}); nothing was written") from None
        return GateReport(skipped=f"the fp16 graph does not run on the {parent.provider} provider here ({e})",
                          thresholds=cfg.gate.thresholds())
    return measure(parent, candidate, cfg.gate)


def gate_provider(cfg: QuantizeConfig) -> str:
    """CPU, except fp16 meant for CUDA when CUDA is there (ORT's CPU provider can run fp16 graphs too)."""
    from ortrefine.runtime.session import PROVIDERS, available_providers

    if cfg.to == "fp16" and cfg.target_provider == "cuda" and PROVIDERS["cuda"] in available_providers():
        return "cuda"
    return "cpu"


def quantize(cfg: QuantizeConfig) -> QuantizeResult:
    """Quantize cfg.bundle, gate it against its parent, and write the new bundle atomically.

    Raises ConfigError (bad combination), ExportError (nothing quantizable, output exists),
    QualityGateError (past a threshold without force). On any error or interrupt no folder is left.
    """
    from ortrefine.catalog import resolve_bundle_path
    from ortrefine.runtime.session import LM

    _require_onnx()
    t0 = time.perf_counter()
    parent_bundle = open_bundle(resolve_bundle_path(cfg.bundle))
    cfg = resolve_algo(cfg, parent_bundle)
    cfg.check_8bit_nodes()
    if parent_bundle.precision != "fp32":
        grand = parent_bundle.manifest.get("parent")
        where = (grand.get("path") if isinstance(grand, dict) else grand) or "the exported bundle"
        raise ConfigError(f"{parent_bundle.path} is already {parent_bundle.precision}; quantize from its fp32 parent ({where})")
    out = cfg.out or cfg.default_output(parent_bundle.path)
    if out.resolve() == parent_bundle.path.resolve():
        raise ConfigError(f"the output {out} is the parent bundle itself; choose another --out")
    with claim_output(out, cfg.overwrite, protect=[parent_bundle.path]) as claim:
        parent = LM(parent_bundle, provider=gate_provider(cfg))
        manifest, report, ops, untied = _write_quantized(cfg, parent_bundle, parent, claim)
    size = sum(f["bytes"] for f in manifest["files"].values())
    log.info("quantized %s -> %s (%s) in %.1fs", parent_bundle.path, out, cfg.to, time.perf_counter() - t0)
    parent_size = sum(f["bytes"] for f in parent_bundle.manifest.get("files", {}).values()) or parent_bundle.size_bytes()
    return QuantizeResult(out, manifest, report, ops, size, parent_size, untied, time.perf_counter() - t0)


def _write_quantized(cfg: QuantizeConfig, parent_bundle: Bundle, parent: Any, claim: OutputClaim) -> tuple[dict[str, Any], Any, Any, Any]:
    """Quantize, gate and write the manifest inside the claimed staging folder."""
    out = claim.final
    with claim.staging() as tmp:
        ops, untied, gguf_info = _quantize_graph(cfg, parent, tmp)
        _copy_side_files(parent_bundle.path, tmp, parent_bundle.manifest)
        report = _gate(cfg, parent_bundle, parent, tmp)
        check(report, cfg.gate, cfg.force)
        parent_files = parent_bundle.manifest.get("files", {})
        keep = {k: v for k, v in parent_bundle.manifest.items() if k not in _NOT_INHERITED}
        manifest = {
            **keep,
            "name": out.name,
            "precision": cfg.to,
            "opset": _opset(tmp / MODEL_FILE),
            "parent": {
                "name": parent_bundle.name,
                "path": str(parent_bundle.path),
                "precision": parent_bundle.precision,
                "sha256": parent_files.get(MODEL_FILE, {}).get("sha256") or sha256_file(parent_bundle.model_file),
                # the graph file only references the weights when they live beside it
                "weights_sha256": parent_files.get(MODEL_FILE + "_data", {}).get("sha256"),
            },
            "quantization": _settings(cfg, untied, ops, gguf_info),
            "quality_gate": report.to_dict(),
            "batch_invariant": cfg.to != "int8-dynamic",
            "target_provider": cfg.target_provider,
        }
        manifest = write_manifest(tmp, manifest)
    return manifest, report, ops, untied


def _require_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnx_ir") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"quantizing needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed; install the export extra: pip install 'ortrefine[export]'")


def _opset(model_file: Path) -> int | None:
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
