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

Modules: config (QuantizeConfig, QuantizeResult), methods (the quantizers), graph (untie, op
counts, saving), ortlog (ORT's logging kept quiet), api (quantize() and the bundle it writes).
"""

from ortrefine.export.quantize.config import (ALGOS, DEFAULT_ACCURACY_LEVEL, GGUF_LAYOUTS, GPTQ_REFUSAL, TARGETS,
                                              WEIGHT_ONLY, QuantizeConfig, QuantizeResult)
from ortrefine.export.quantize.ortlog import _nbits_module, quiet_ort_logging
from ortrefine.export.quantize.graph import op_counts, save_model, untie_lm_head
from ortrefine.export.quantize.methods import gguf_source, resolve_algo
from ortrefine.export.quantize.api import gate_provider, quantize

__all__ = ["ALGOS", "DEFAULT_ACCURACY_LEVEL", "GGUF_LAYOUTS", "GPTQ_REFUSAL", "TARGETS", "WEIGHT_ONLY", "QuantizeConfig",
           "QuantizeResult", "_nbits_module", "quiet_ort_logging", "op_counts", "save_model", "untie_lm_head",
           "gguf_source", "resolve_algo", "gate_provider", "quantize"]
