"""Quantize a bundle with ONNX Runtime's own tools, check it against its parent, write a new bundle.

| --to           | tool (onnxruntime)                                        | weights            | activations |
|----------------|-----------------------------------------------------------|--------------------|-------------|
| `int8`         | `quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer` | 8-bit, per block   | float       |
| `int4`         | same, 4-bit                                               | 4-bit, per block   | float       |
| `int8-dynamic` | `quantization.quantize_dynamic` (MatMulInteger)           | 8-bit, per tensor  | 8-bit, one scale per tensor per run |
| `fp16`         | `transformers.float16.convert_float_to_float16`           | float16            | float16     |

The only graph edit made here by hand is the documented untie of a tied lm_head
(`--quantize-embeddings`): Optimum's graph computes `Transpose(embed_tokens.weight)` at run time,
so no quantizer sees the lm_head as a constant weight. Untying stores the transposed matrix as its
own initializer (exact, no arithmetic) so that the quantizer can replace that MatMul too; the
embedding Gather is then quantized by the same tool (GatherBlockQuantized, 4-bit only).

Dynamic int8 is batch-dependent: one activation scale per tensor across the whole batch, so a
sequence scores differently next to different batch-mates. Its manifest says
`"batch_invariant": false` and the refiner reads that key.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ortrefine.errors import BundleError, ConfigError, ExportError, MissingExtraError
from ortrefine.export.quality import GateConfig, GateReport, check, measure
from ortrefine.bundle.write import OutputClaim, claim_output, write_manifest
from ortrefine.runtime.bundle import MANIFEST, MODEL_FILE, Bundle, open_bundle, sha256_file

if TYPE_CHECKING:
    import onnx

    from ortrefine.runtime.session import LM

log = logging.getLogger(__name__)

TARGETS = ("int8", "int4", "int8-dynamic", "fp16")
ALGOS = ("rtn", "hqq", "gptq")
WEIGHT_ONLY = {"int8": 8, "int4": 4}
# Checked on onnxruntime 1.32: its GPTQ port (quantization/neural_compressor/weight_only.py, `gptq`)
# propagates each row's rounding error through `Hinv1[i:, i]`, a column of the *upper* Cholesky factor,
# which is zero below the diagonal, so no error is ever propagated: the packed weights come out
# byte-identical to a run with an identity Hessian, i.e. plain round-to-nearest.
GPTQ_REFUSAL = ("--algo gptq is refused: onnxruntime 1.32's GPTQ port propagates no rounding error (it reads a "
                "column of the upper-triangular inverse Hessian, zero below the diagonal), so its weights equal "
                "round-to-nearest; use --algo rtn (same result, no calibration) or --algo hqq")
DEFAULT_ACCURACY_LEVEL = 4  # int8 compute in MatMulNBits: 8-bit without it decodes at 6.7 tok/s (FACTS.md)

@dataclass
class QuantizeConfig:
    """What to quantize, how, and where to write it.

    bundle: the parent bundle (folder or catalog name); it must be fp32.
    to: int8 | int4 (weight-only MatMulNBits) | int8-dynamic (quantize_dynamic) | fp16 (for CUDA).
    out: output folder; default `<parent>-<to>` beside the parent (plus `-<algo>` for a non-rtn
        algorithm and `-emb` with quantize_embeddings).
    block_size: weights per quantization block along K for int4/int8 (power of two >= 16).
    accuracy_level: MatMulNBits compute type (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8). None takes
        4 for rtn; ORT's HQQ quantizer does not set it, so it must stay None with hqq.
    algo: int4/int8 weight rounding: rtn (round to nearest, ORT's default C++ quantizer) or
        hqq (half-quadratic, needs torch; int4 only on CPU). gptq is refused (see GPTQ_REFUSAL).
        Measured on SmolLM2-135M (a dequantized Q4_1 GGUF): hqq's float zero points recover the
        source's 4-bit grid (KL 1e-4 vs 0.33 for rtn) but, with no accuracy_level, MatMulNBits
        takes its slow path on the CPU: 1.6 vs 14.6 tok/s for rtn in the same run.
    quantize_embeddings: also quantize the lm_head (untied from the embedding first) and, at 4 bits
        and with int8-dynamic, the embedding Gather (ORT quantizes Gather tables to 4 bits only:
        int8 leaves the embedding fp32). rtn only.
    head_bits: quantize the (untied) lm_head to this many bits (4 or 8) and leave the embedding
        table fp32: only one of its rows is read per token, while the lm_head is read whole. On
        SmolLM2 int4 with an 8-bit head kept int4's quality (ppl 37.11 vs 37.00, KL 0.329) and decoded
        at 150 vs 102 tok/s (int4 with 4-bit head and embedding: 157, ppl 40.16). rtn, int4/int8 only.
    symmetric: int4/int8 rtn without zero points (each block's grid centred on 0; smaller files).
        On SmolLM2 int8 the gate figures barely moved (ppl 28.13 vs 28.08, KL 0.0039 vs 0.0036);
        int8 decode on the 2-core CPU box was 1.04× (1.07× and 1.01× in the two load orders of
        benchmarks/probes/ab_decode.py), too close to call, so the default stays asymmetric.
    provider: the provider the bundle is meant for: auto (cuda for fp16, else cpu), cpu or cuda.
        Known-bad pairs are refused: fp16 on cpu, int8-dynamic on cuda.
    overwrite: replace an existing output folder.
    force: keep the bundle even when the quality gate fails (the failure is recorded).
    gate: quality gate thresholds and texts (see quality.GateConfig).
    """

    bundle: str | Path
    to: str
    out: Path | None = None
    block_size: int = 32
    accuracy_level: int | None = None
    algo: str = "rtn"
    quantize_embeddings: bool = False
    head_bits: int | None = None
    symmetric: bool = False
    provider: str = "auto"
    overwrite: bool = False
    force: bool = False
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        self.to = str(self.to).lower()
        self.algo = str(self.algo).lower()
        self.provider = str(self.provider).lower()
        self.out = Path(self.out) if self.out is not None else None
        if self.to not in TARGETS:
            raise ConfigError(f"unknown quantization target {self.to!r}; use one of: {', '.join(TARGETS)}")
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown quantization algorithm {self.algo!r}; use one of: {', '.join(ALGOS)}")
        if self.provider not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown provider {self.provider!r}; use one of: auto, cpu, cuda")
        weight_only = self.to in WEIGHT_ONLY
        if not weight_only and self.algo != "rtn":
            raise ConfigError(f"--algo {self.algo} applies to the weight-only targets int4 and int8, not {self.to}")
        if not weight_only and self.accuracy_level is not None:
            raise ConfigError(f"--accuracy-level applies to the weight-only targets int4 and int8, not {self.to}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two >= 16 (MatMulNBits), got {self.block_size}")
        if self.accuracy_level is not None and self.accuracy_level not in range(5):
            raise ConfigError(f"accuracy_level must be 0-4 (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8), got {self.accuracy_level}")
        if self.algo == "gptq":
            raise ConfigError(GPTQ_REFUSAL)
        if self.algo == "hqq" and self.to == "int8":
            raise ConfigError("onnxruntime's HQQ quantizer writes float zero points, which MatMulNBits on the CPU "
                              "does not accept at 8 bits; use --algo rtn for int8, or --to int4 with hqq")
        if self.algo == "hqq" and self.accuracy_level is not None:
            raise ConfigError("onnxruntime's HQQ quantizer does not set accuracy_level; drop --accuracy-level or use --algo rtn")
        if self.quantize_embeddings and self.algo != "rtn":
            raise ConfigError(f"onnxruntime's {self.algo.upper()} quantizer cannot quantize the embedding Gather; "
                              "use --algo rtn with --quantize-embeddings")
        if self.head_bits is not None:
            if self.head_bits not in (4, 8):
                raise ConfigError(f"--head-bits must be 4 or 8, got {self.head_bits}")
            if not weight_only or self.algo != "rtn":
                raise ConfigError("--head-bits applies to --to int4 / int8 with --algo rtn")
            if self.quantize_embeddings:
                raise ConfigError("--head-bits and --quantize-embeddings both set the lm_head's bits; choose one")
        if self.symmetric and (not weight_only or self.algo != "rtn"):
            raise ConfigError("--symmetric applies to --to int4 / int8 with --algo rtn (HQQ fits its own zero points)")
        if self.quantize_embeddings and self.to == "fp16":
            raise ConfigError("--quantize-embeddings does not apply to fp16: every float weight, embedding included, "
                              "is converted already")
        if self.to == "fp16" and self.provider == "cpu":
            raise ConfigError("fp16 bundles are for the CUDA provider: onnxruntime's CPU provider has few fp16 "
                              "kernels and casts around them, so it is no faster than fp32 there; for CPU use "
                              "--to int8 (weight-only, close to fp32) or --to int4, or pass --provider cuda")
        if self.to == "int8-dynamic" and self.provider == "cuda":
            raise ConfigError("int8-dynamic (MatMulInteger / DynamicQuantizeLinear) has no CUDA kernels in "
                              "onnxruntime and would run on the CPU; for CUDA use --to int4, int8 or fp16")

    @property
    def bits(self) -> int | None:
        return WEIGHT_ONLY.get(self.to)

    @property
    def target_provider(self) -> str:
        if self.provider != "auto":
            return self.provider
        return "cuda" if self.to == "fp16" else "cpu"

    @property
    def effective_accuracy_level(self) -> int | None:
        if self.to not in WEIGHT_ONLY or self.algo == "hqq":
            return None
        return DEFAULT_ACCURACY_LEVEL if self.accuracy_level is None else self.accuracy_level

    def default_output(self, parent: Path) -> Path:
        suffix = (self.to + (f"-{self.algo}" if self.algo != "rtn" else "") + ("-emb" if self.quantize_embeddings else "")
                  + (f"-head{self.head_bits}" if self.head_bits else "") + ("-sym" if self.symmetric else ""))
        return parent.parent / f"{parent.name}-{suffix}"


@dataclass
class QuantizeResult:
    """A quantized bundle.

    path: the new bundle folder. manifest: its ortrefine.json.
    gate: the quality gate figures (gate.skipped says why when it could not run).
    ops: counts of the quantized operators / fp16 initializers in the new graph.
    size_bytes / parent_size_bytes: files on disk, new bundle and parent.
    untied: the lm_head weights made constant (empty unless quantize_embeddings).
    seconds: wall time.
    """

    path: Path
    manifest: dict[str, Any]
    gate: GateReport
    ops: dict[str, int]
    size_bytes: int
    parent_size_bytes: int
    untied: list[dict[str, Any]]
    seconds: float


# -- logging hygiene ----------------------------------------------------------------------------
class _DropOrtRootRecords(logging.Filter):
    """ORT's quantizers log advice straight to the root logger (e.g. 'run pre-processing')."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("onnxruntime" in record.pathname and record.levelno < logging.ERROR)


@contextlib.contextmanager
def quiet_ort_logging() -> Iterator[None]:
    """Keep ORT's quantization modules from configuring logging or chattering at INFO.

    matmul_nbits_quantizer calls logging.basicConfig(level=INFO) at import, and module-level
    logging.warning() calls basicConfig too when the root has no handler. A placeholder handler
    makes those calls no-ops; everything is put back as it was on exit.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    if not handlers:
        root.addHandler(logging.NullHandler())
    drop = _DropOrtRootRecords()
    root.addFilter(drop)
    named = {n: logging.getLogger(n) for n in ("onnxruntime.quantization", "neural_compressor")}
    levels = {n: lg.level for n, lg in named.items()}
    for lg in named.values():
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        root.removeFilter(drop)
        for n, lg in named.items():
            lg.setLevel(levels[n])


def _nbits_module() -> Any:
    with quiet_ort_logging():
        try:
            from onnxruntime.quantization import matmul_nbits_quantizer
        except ImportError as e:  # onnx-ir is needed and not declared by the onnxruntime wheel
            raise MissingExtraError(
                f"onnxruntime's MatMulNBits quantizer cannot be imported ({e}); install the export extra: "
                "pip install 'ortrefine[export]' (it brings onnx and onnx-ir)"
            ) from None
    return matmul_nbits_quantizer


# -- graph helpers ------------------------------------------------------------------------------
def op_counts(model: "onnx.ModelProto") -> dict[str, int]:
    """Quantized operators and fp16 initializers in a graph (the proof that it really changed)."""
    from onnx import TensorProto

    counts = {k: 0 for k in ("MatMulNBits", "GatherBlockQuantized", "MatMulInteger", "DynamicQuantizeLinear",
                             "MatMul", "fp16_initializers")}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    counts["fp16_initializers"] = sum(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    return counts


def untie_lm_head(model: "onnx.ModelProto") -> list[dict[str, Any]]:
    """Make every MatMul weight computed as Transpose(initializer) a constant initializer of its own.

    The tied lm_head of Optimum's export is `MatMul(hidden, Transpose(embed_tokens.weight))`; the
    fused graph's (llama_graph.py) is `FusedMatMul(hidden, embed_tokens.weight, transB=1)`. The
    transposed copy is stored (exactly: a copy, no arithmetic) and the Transpose dropped when
    nothing else reads it. Returns what was untied: [{matmul, weight, shape}].
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    made: dict[str, str] = {}
    untied = _untie_fused_matmuls(graph, inits)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        tr = producer.get(node.input[1])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[tr.input[0]])
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
        if weight.ndim != 2 or weight.dtype.kind != "f" or perm not in (None, [1, 0]):
            continue
        if tr.output[0] not in made:
            name = f"{tr.input[0]}.untied_T"
            graph.initializer.append(numpy_helper.from_array(weight.T.copy(), name))
            made[tr.output[0]] = name
        node.input[1] = made[tr.output[0]]
        untied.append({"matmul": node.name, "weight": tr.input[0], "shape": list(weight.T.shape)})
    still_read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in made and n.output[0] not in still_read]
    for n in dead:
        graph.node.remove(n)
    return untied


def _plain_transposed_b(node: Any) -> bool:
    """A FusedMatMul that is exactly A @ Bᵀ (no transA, no batch transposes, alpha 1)."""
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
    return (node.op_type == "FusedMatMul" and attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0 and not attrs.get("transBatchA", 0) and not attrs.get("transBatchB", 0))


def _untie_fused_matmuls(graph: Any, inits: dict[str, Any]) -> list[dict[str, Any]]:
    """Replace FusedMatMul(x, W, transB=1) over a 2-D float initializer by MatMul(x, Wᵀ as a constant)."""
    from onnx import helper, numpy_helper

    untied = []
    for idx, node in enumerate(list(graph.node)):
        if not _plain_transposed_b(node) or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.dtype.kind != "f":
            continue
        name = f"{node.input[1]}.untied_T"
        if name not in inits:
            inits[name] = numpy_helper.from_array(weight.T.copy(), name)
            graph.initializer.append(inits[name])
        graph.node.remove(node)
        graph.node.insert(idx, helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name))
        untied.append({"matmul": node.name, "weight": node.input[1], "shape": list(weight.T.shape)})
    return untied


def _embedding_gathers(model: "onnx.ModelProto") -> tuple[list[str], list[str]]:
    """(Gathers over a 2-D float initializer: embedding tables, every other Gather's name).

    ORT's Gather quantizer does not check the table's dtype, so shape Gathers must be excluded.
    """
    from onnx import TensorProto

    tables = {t.name for t in model.graph.initializer
              if len(t.dims) == 2 and t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    return [n.name for n in gathers if n.input[0] in tables], [n.name for n in gathers if n.input[0] not in tables]


def save_model(model: "onnx.ModelProto", folder: Path) -> Path:
    """Write model.onnx with its weights in model.onnx_data beside it (memory-mapped at load:
    writer.save_with_external_data)."""
    from ortrefine.export.writer import save_with_external_data

    path = folder / MODEL_FILE
    save_with_external_data(model, path)
    return path


# -- the quantizers -------------------------------------------------------------------------------
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
    """Round-to-nearest MatMulNBits of just these MatMul nodes."""
    mnq = _nbits_module()
    algo_config = mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=level,
                                                   op_types_to_quantize=("MatMul",), bits=bits)
    quantizer = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=level,
                                         nodes_to_include=list(nodes), algo_config=algo_config)
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


def _settings(cfg: QuantizeConfig, untied: list[dict[str, Any]], ops: dict[str, int]) -> dict[str, Any]:
    """The quantization section of the manifest."""
    common = {"to": cfg.to, "target_provider": cfg.target_provider, "quantize_embeddings": cfg.quantize_embeddings,
              "untied": untied, "ops": ops}
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


def _quantize_graph(cfg: QuantizeConfig, parent: "LM", folder: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Write the quantized model.onnx into folder; return (op counts, untied lm_head weights)."""
    import onnx

    model = onnx.load(str(parent.bundle.model_file))
    untied = untie_lm_head(model) if cfg.quantize_embeddings or cfg.head_bits else []
    if cfg.to == "int8-dynamic":
        _dynamic(model, cfg, folder)
    else:
        heads = [u["matmul"] for u in untied] if cfg.head_bits else []
        save_model(_weight_only(model, cfg, heads) if cfg.to in WEIGHT_ONLY else _fp16(model), folder)
    del model
    ops = op_counts(onnx.load(str(folder / MODEL_FILE), load_external_data=False))
    changed = {"int8": "MatMulNBits", "int4": "MatMulNBits", "int8-dynamic": "MatMulInteger", "fp16": "fp16_initializers"}[cfg.to]
    if ops[changed] == 0:
        hint = "; try --quantize-embeddings to quantize the tied lm_head and embeddings" if cfg.to in WEIGHT_ONLY else ""
        raise ExportError(
            f"{parent.bundle.path}: onnxruntime's quantizer changed nothing (no MatMul with a constant weight; "
            f"GPT-2 style exports use Gemm, which it does not handle); nothing was written{hint}"
        )
    return ops, untied


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
        ops, untied = _quantize_graph(cfg, parent, tmp)
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
            "quantization": _settings(cfg, untied, ops),
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
        raise MissingExtraError(f"quantizing needs {', '.join(missing)}, which is not installed; install the export extra: pip install 'ortrefine[export]'")


def _opset(model_file: Path) -> int | None:
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
