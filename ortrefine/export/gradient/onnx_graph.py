"""From torch to an ONNX graph: trace the gradient function into core aten ops, then export it
with the dynamo exporter, whose onnxscript translation covers the decomposed backward ops."""

from __future__ import annotations

from typing import Any

from ortrefine.errors import ExportError
from ortrefine.export.gradient.function import gradient_function
from ortrefine.runtime.gradient import INPUT_NAMES, OUTPUT_NAMES

TRACE_LENGTH = 7  # sequence length of the example inputs; the exported axis is dynamic


def trace_gradient(model: Any) -> tuple[Any, tuple[Any, ...]]:
    """(FX graph of plain core-aten ops, example inputs): backward ops decomposed, symbolic in T."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    fn = gradient_function(model)
    H = model.get_input_embeddings().weight.shape[1]
    example = (torch.zeros(1, TRACE_LENGTH, H), torch.zeros(1, TRACE_LENGTH, dtype=torch.int64), torch.ones(1, TRACE_LENGTH))
    return make_fx(
        fn,
        tracing_mode="symbolic",
        decomposition_table=torch._decomp.core_aten_decompositions(),
        _allow_non_fake_inputs=True,
    )(*example), example


def export_onnx(graph_module: Any, example: tuple[Any, ...], context_length: int) -> Any:
    """Dynamo ONNX export of the traced graph → onnx.ModelProto with the weights in memory."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, gm: Any) -> None:
            super().__init__()
            self.gm = gm

        def forward(self, inputs_embeds: Any, labels: Any, loss_mask: Any) -> Any:
            return self.gm(inputs_embeds, labels, loss_mask)

    seq = torch.export.Dim("seq", min=2, max=max(context_length, TRACE_LENGTH + 1))
    try:
        program = torch.onnx.export(
            Wrapped(graph_module),
            example,
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({1: seq}, {1: seq}, {1: seq}),
            optimize=False,  # onnxscript's optimizer is very slow on real models; ORT folds constants at load
            verbose=False,
        )
    except Exception as e:  # torch.onnx raises many types; all mean "this model does not export"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the gradient graph does not export to ONNX ({type(e).__name__}: {first}); the bundle was left unchanged") from None
    return program.model_proto

