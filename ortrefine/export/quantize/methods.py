"""The quantizers: ORT's MatMulNBits (rtn, hqq), quantize_dynamic, the fp16 converter, and
int4 from a GGUF source's own blocks (gguf_quant.py)."""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortrefine.errors import ConfigError, ExportError, MissingExtraError
from ortrefine.export.quantize.config import GPTQ_REFUSAL, QuantizeConfig
from ortrefine.export.quantize.ortlog import _nbits_module, quiet_ort_logging
from ortrefine.export.quantize.graph import _embedding_gathers
from ortrefine.runtime.bundle import MODEL_FILE, Bundle

if TYPE_CHECKING:
    import onnx

    from ortrefine.runtime.session import LM

log = logging.getLogger("ortrefine.export.quantize")


def _weight_only(model: "onnx.ModelProto", cfg: QuantizeConfig, heads: list[str] | None = None) -> "onnx.ModelProto":
    """int4 / int8 through ORT's MatMulNBitsQuantizer (rtn or hqq); `heads` (untied lm_head
    MatMuls) are left out of that pass and quantized to cfg.head_bits afterwards."""
    import numpy as np

    mnq = _nbits_module()
    op_types: tuple[str, ...] = ("MatMul",)
    exclude: list[str] = list(heads or [])
    if cfg.quantize_embeddings:
        op_types = ("MatMul", "Gather")
        _, exclude = _embedding_gathers(model)
    level = cfg.effective_accuracy_level
    if cfg.algo == "rtn":
        algo_config = mnq.DefaultWeightOnlyQuantConfig(
            block_size=cfg.block_size, is_symmetric=cfg.symmetric, accuracy_level=level, op_types_to_quantize=op_types, bits=cfg.bits,
        )
    elif cfg.algo == "hqq":
        try:
            import torch  # noqa: F401  ORT's HQQ quantizer runs in torch
        except ImportError:
            raise MissingExtraError("--algo hqq needs torch (onnxruntime's HQQ quantizer uses it): "
                                    "pip install 'ortrefine[export]', or use --algo rtn") from None
        algo_config = mnq.HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=cfg.bits)
    else:  # refused in QuantizeConfig; kept out of reach on purpose
        raise ConfigError(GPTQ_REFUSAL)
    quantizer = mnq.MatMulNBitsQuantizer(
        model, bits=cfg.bits, block_size=cfg.block_size, is_symmetric=cfg.symmetric, accuracy_level=level,
        nodes_to_exclude=exclude, algo_config=algo_config,
    )
    with quiet_ort_logging(), warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # ORT's 4-bit Gather path divides by zero scales inside np.where; HQQ warns about read-only arrays
        warnings.simplefilter("ignore", UserWarning)
        quantizer.process()
    model = quantizer.model.model
    if heads:
        model = _quantize_nodes(model, heads, cfg.head_bits, cfg.block_size, cfg.effective_accuracy_level, cfg.symmetric)
    return model


def _quantize_nodes(model: "onnx.ModelProto", nodes: list[str], bits: int, block_size: int, level: int | None,
                    symmetric: bool = False) -> "onnx.ModelProto":
    """Round-to-nearest MatMulNBits of just these MatMul nodes.

    ORT's `nodes_to_include` adds to `op_types_to_quantize` rather than narrowing it, so every
    other MatMul (the GGUF path's exact block-sum corrections among them) is excluded by name.
    """
    mnq = _nbits_module()
    wanted = set(nodes)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    algo_config = mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=level,
                                                   op_types_to_quantize=("MatMul",), bits=bits)
    quantizer = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=level,
                                         nodes_to_include=list(nodes), nodes_to_exclude=others, algo_config=algo_config)
    with quiet_ort_logging():
        quantizer.process()
    return quantizer.model.model


def _dynamic(model: "onnx.ModelProto", cfg: QuantizeConfig, folder: Path) -> None:
    """int8-dynamic through ORT's quantize_dynamic (signed int8 weights, per tensor), written to folder."""
    with quiet_ort_logging():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from onnx import TensorProto

        # shape inference cannot type the outputs of contrib ops (the fused graph): they are float
        quantize_dynamic(model, folder / MODEL_FILE, weight_type=QuantType.QInt8, per_channel=False,
                         reduce_range=False, use_external_data_format=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    for data in folder.glob(MODEL_FILE + "*data"):  # written owner-only; give it the graph's mode
        shutil.copymode(folder / MODEL_FILE, data)


def _fp16(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """fp16 through ORT's float16 converter; inputs/outputs stay float32 (keep_io_types)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet_ort_logging():
        return convert_float_to_float16(model, keep_io_types=True)


def gguf_source(bundle: Bundle) -> Path | None:
    """The GGUF file a bundle was exported from, when its manifest names one that is still there."""
    src = bundle.manifest.get("source") or {}
    if not isinstance(src, dict) or src.get("kind") != "gguf" or not src.get("gguf_file"):
        return None
    path = Path(str(src.get("location", ""))) / str(src["gguf_file"])
    return path if path.is_file() else None


def has_blocks(path: Path) -> bool:
    """The file holds tensors in a block type gguf_blocks decodes (an F16 or BF16 GGUF does not)."""
    from ortrefine.export.gguf_blocks import DECODERS

    try:
        import gguf
    except ImportError:
        raise MissingExtraError("--algo gguf reads the file with the gguf package, which is not installed; "
                                "install the export extra: pip install 'ortrefine[export]'") from None
    try:
        return any(t.tensor_type.name in DECODERS for t in gguf.GGUFReader(str(path)).tensors)
    except (ValueError, OSError) as e:
        raise ExportError(f"cannot read the GGUF file {path} ({e}); nothing was written (use --algo rtn)") from None


def resolve_algo(cfg: QuantizeConfig, parent_bundle: Bundle) -> QuantizeConfig:
    """`auto` becomes gguf for a bundle whose GGUF source is at hand, else rtn; `gguf` needs that file."""
    if cfg.algo not in ("auto", "gguf"):
        return cfg
    path = gguf_source(parent_bundle)
    if path is None and cfg.algo == "gguf":
        raise ConfigError(f"--algo gguf: {parent_bundle.path} was not exported from a GGUF file that is still "
                          "on this machine (its manifest's source); use --algo rtn")
    if path is not None and not has_blocks(path):
        if cfg.algo == "gguf":
            raise ConfigError(f"--algo gguf: {path.name} holds no quantized blocks ortrefine reads; use --algo rtn")
        path = None
    src = parent_bundle.manifest.get("source")
    if path is None and isinstance(src, dict) and src.get("kind") == "gguf":
        log.info("the GGUF source of %s is not on this machine: round-to-nearest int4", parent_bundle.path)
    return replace(cfg, algo="gguf" if path else "rtn")


def _from_gguf(model: "onnx.ModelProto", cfg: QuantizeConfig, parent: "LM",
               heads: list[str] | None = None) -> tuple["onnx.ModelProto", dict[str, Any]]:
    """int4 from the GGUF source's blocks; MatMuls the file does not hold go through rtn, an
    untied head at 8 bits (a 4-bit head costs more quality than the rest of int4 together)."""
    from ortrefine.export.gguf_quant import rewrite_from_gguf

    path = gguf_source(parent.bundle)
    assert path is not None  # resolve_algo checked
    report = rewrite_from_gguf(model, path, cfg.gguf_layout, cfg.effective_accuracy_level)
    if report.fallback:
        log.info("%d MatMul weights are not in %s; round-to-nearest for those", len(report.fallback), path.name)
        head_set = set(heads or [])
        for bits, names in ((8, [n for n in report.fallback if n in head_set]), (4, [n for n in report.fallback if n not in head_set])):
            if names:
                model = _quantize_nodes(model, names, bits, 32, cfg.effective_accuracy_level)
    info = {"file": path.name, "layout": cfg.gguf_layout, "types": report.types(), "fallback": report.fallback,
            "correction_matmuls": report.corrections, "max_rounding": report.max_rounding,
            "embedding_gathers": report.gathers}
    return model, info
