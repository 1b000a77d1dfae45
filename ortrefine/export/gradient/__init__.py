"""A second ONNX graph in a bundle: log-probs and their gradient w.r.t. the input embeddings.

The runtime (ortrefine.runtime.gradient) runs it with ONNX Runtime alone, so HotFlip/GCG-style
proposals need no torch on the edge box. The route (../shared/FACTS.md, "A gradient graph that
ONNX Runtime can run"): eager attention (the SDPA backward has no ONNX mapping), frozen
parameters, a plain function that calls `torch.autograd.grad`, traced by `make_fx` into core
aten ops, then the dynamo ONNX exporter with a dynamic sequence axis.

Graph interface (T = sequence length, dynamic; H = hidden size; V = vocab):

    inputs   inputs_embeds  (1, T, H) float32   rows of the input embedding matrix (embeddings.npy)
             labels         (1, T)    int64     labels[t] = the token whose log-prob position t's
                                                logits give, i.e. ids[t + 1] (caller shifts; the
                                                last label is any valid id, masked out)
             loss_mask      (1, T)    float32   weight of each position's term: 1 on the positions
                                                whose label belongs to Y, 0 on the prompt
    outputs  logprob_sum    ()        float32   S = Σ_t loss_mask[t] · log p(labels[t] | e_≤t)
             token_logprobs (1, T)    float32   log p(labels[t] | e_≤t) at every position (unmasked)
             grad_embeds    (1, T, H) float32   ∂S/∂inputs_embeds
             log_probs      (1, T, V) float32   the whole next-token log-softmax at every position

Position ids are 0..T-1: one unpadded sequence, batch 1. The gradient is of the log-prob
(a quantity to MAXIMISE), not of a loss.

Modules: config (GradientExportConfig, GradientExportResult), function (the torch computation),
onnx_graph (trace and dynamo export), dedupe (one copy of each weight), sharing (weights stored
as the main graph's), preflight (refusals before the load), validate (parity with torch and the
bundle), commit (manifest entry and renames), api (export_gradient()).
"""

from ortrefine.export.gradient.config import GradientExportConfig, GradientExportResult
from ortrefine.export.gradient.function import gradient_function, prepare_model
from ortrefine.export.gradient.onnx_graph import TRACE_LENGTH, export_onnx, trace_gradient
from ortrefine.export.gradient.dedupe import dedupe_weight_transposes
from ortrefine.export.gradient.sharing import MainGraphLayout
from ortrefine.export.gradient.preflight import bundle_source
from ortrefine.export.gradient.validate import check_against_torch, relative_error, validation_cases
from ortrefine.export.gradient.commit import _commit
from ortrefine.export.gradient.api import export_gradient

__all__ = ["GradientExportConfig", "GradientExportResult", "gradient_function", "prepare_model", "TRACE_LENGTH",
           "export_onnx", "trace_gradient", "dedupe_weight_transposes", "MainGraphLayout", "bundle_source",
           "check_against_torch", "relative_error", "validation_cases", "_commit", "export_gradient"]
