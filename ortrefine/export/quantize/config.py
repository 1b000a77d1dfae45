"""What to quantize and how (QuantizeConfig, checked on construction), and what came out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortrefine.errors import ConfigError
from ortrefine.export.quality import GateConfig, GateReport


TARGETS = ("int8", "int4", "int8-dynamic", "fp16")


ALGOS = ("auto", "rtn", "hqq", "gptq", "gguf")


GGUF_LAYOUTS = ("exact", "rounded")


WEIGHT_ONLY = {"int8": 8, "int4": 4}


# Checked on onnxruntime 1.32: its GPTQ port (quantization/neural_compressor/weight_only.py, `gptq`)
# propagates each row's rounding error through `Hinv1[i:, i]`, a column of the *upper* Cholesky factor,
# which is zero below the diagonal, so no error is ever propagated: the packed weights come out
# byte-identical to a run with an identity Hessian, i.e. plain round-to-nearest.
GPTQ_REFUSAL = ("--algo gptq is refused: onnxruntime 1.32's GPTQ port propagates no rounding error (it reads a "
                "column of the upper-triangular inverse Hessian, zero below the diagonal), so its weights equal "
                "round-to-nearest; use --algo rtn (same result, no calibration) or --algo hqq")


NO_8BIT_NODES = ("--accuracy-level-8bit was given but the quantized graph has no 8-bit MatMulNBits (--to int8 has only "
                 "those; --to int4 has one with --head-bits 8, or from a GGUF with an 8-bit head); drop it")


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
    accuracy_level_8bit: the compute type of the 8-bit MatMulNBits alone (an 8-bit head, Q8_0
        blocks, every node of --to int8); None: accuracy_level's. onnxruntime's CPU has no fast
        fp32 kernel for 8-bit blocks, so `accuracy_level=1, accuracy_level_8bit=4` is fp32 compute
        where it is fast. On SmolLM2's GGUF-block int4 that leaves int8 activations at the head
        only: its passes agree (3e-5 nats/token, level 4: 0.044) at 0.84x level 4's decode speed.
    algo: int4/int8 weights: gguf (int4 from a GGUF source's own blocks: the model in the file,
        see gguf_quant.py), rtn (round to nearest, ORT's default C++ quantizer), hqq
        (half-quadratic, needs torch; int4 only on CPU) or auto: gguf for --to int4 of a bundle
        exported from a GGUF with quantized blocks and no rtn-only option set, else rtn.
        gptq is refused (see GPTQ_REFUSAL).
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
    gguf_layout: how --algo gguf holds blocks with an offset (Q4_1, Q4_K): exact (a block-sum
        correction MatMul per projection) or rounded (integer zero points, no extra MatMul).
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
    accuracy_level_8bit: int | None = None
    algo: str = "auto"
    quantize_embeddings: bool = False
    head_bits: int | None = None
    symmetric: bool = False
    gguf_layout: str = "exact"
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
        if self.algo == "auto" and not self.wants_rtn_options():
            pass  # decided against the parent bundle in quantize() (resolve_algo)
        elif self.algo == "auto":
            self.algo = "rtn"
        weight_only = self.to in WEIGHT_ONLY
        if self.algo == "gguf":
            self._check_gguf()
        if self.gguf_layout not in GGUF_LAYOUTS:
            raise ConfigError(f"unknown GGUF layout {self.gguf_layout!r}; use one of: {', '.join(GGUF_LAYOUTS)}")
        if not weight_only and self.algo not in ("rtn", "auto"):
            raise ConfigError(f"--algo {self.algo} applies to the weight-only targets int4 and int8, not {self.to}")
        if not weight_only and self.accuracy_level is not None:
            raise ConfigError(f"--accuracy-level applies to the weight-only targets int4 and int8, not {self.to}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two >= 16 (MatMulNBits), got {self.block_size}")
        if self.accuracy_level_8bit is not None and not weight_only:
            raise ConfigError(f"--accuracy-level-8bit applies to the weight-only targets int4 and int8, not {self.to}")
        for name in ("accuracy_level", "accuracy_level_8bit"):
            level = getattr(self, name)
            if level is not None and level not in range(5):
                raise ConfigError(f"{name} must be 0-4 (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8), got {level}")
        if self.algo == "gptq":
            raise ConfigError(GPTQ_REFUSAL)
        self.check_8bit_nodes()
        if self.algo == "hqq" and self.to == "int8":
            raise ConfigError("onnxruntime's HQQ quantizer writes float zero points, which MatMulNBits on the CPU "
                              "does not accept at 8 bits; use --algo rtn for int8, or --to int4 with hqq")
        if self.algo == "hqq" and (self.accuracy_level is not None or self.accuracy_level_8bit is not None):
            given = "--accuracy-level" if self.accuracy_level is not None else "--accuracy-level-8bit"
            raise ConfigError(f"onnxruntime's HQQ quantizer does not set accuracy_level; drop {given} or use --algo rtn")
        if self.quantize_embeddings and self.algo != "rtn":
            raise ConfigError(f"onnxruntime's {self.algo.upper()} quantizer cannot quantize the embedding Gather; "
                              "use --algo rtn with --quantize-embeddings")
        if self.head_bits is not None:
            if self.head_bits not in (4, 8):
                raise ConfigError(f"--head-bits must be 4 or 8, got {self.head_bits}")
            if not weight_only or self.algo not in ("rtn", "auto"):
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

    def check_8bit_nodes(self) -> None:
        """Refuse --accuracy-level-8bit before any work where rtn will write no 8-bit node (int4
        without an 8-bit head); gguf's head comes from the file and is checked on the graph."""
        if self.accuracy_level_8bit is not None and self.algo == "rtn" and self.to == "int4" and self.head_bits != 8:
            raise ConfigError(NO_8BIT_NODES)

    def wants_rtn_options(self) -> bool:
        """An option only the rtn path has was set, so `auto` cannot mean gguf."""
        return (self.to != "int4" or self.head_bits is not None or self.symmetric or self.quantize_embeddings
                or self.block_size != 32)

    def _check_gguf(self) -> None:
        if self.to != "int4":
            raise ConfigError(f"--algo gguf writes the file's own blocks (4-bit, and 8-bit where the file has more "
                              f"bits) and applies to --to int4, not {self.to}")
        if self.wants_rtn_options():
            raise ConfigError("--algo gguf takes its blocks, head and zero points from the file; drop --block-size, "
                              "--head-bits, --symmetric and --quantize-embeddings, or use --algo rtn")

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
            return None  # ORT's HQQ path leaves it unset
        return DEFAULT_ACCURACY_LEVEL if self.accuracy_level is None else self.accuracy_level

    def default_output(self, parent: Path) -> Path:
        suffix = (self.to + (f"-{self.algo}" if self.algo not in ("rtn", "auto", "gguf") else "") + ("-emb" if self.quantize_embeddings else "")
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
