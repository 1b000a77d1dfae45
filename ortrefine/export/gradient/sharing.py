"""Weights shared with the bundle's main graph: the gradient graph stores each weight under the
name and layout of the identical tensor in model.onnx, so the two sessions can be handed one
buffer instead of holding a copy each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ortrefine.export.gradient.dedupe import dedupe_weight_transposes
from ortrefine.export.writer import save_with_external_data
from ortrefine.runtime.gradient import GRADIENT_DATA, GRADIENT_FILE


class MainGraphLayout:
    """layout() for dedupe_weight_transposes: store each weight under the name and orientation
    of the identical initializer in the bundle's main graph, when there is one (by content).

    `shared` collects the names so matched: the two sessions can then be handed one buffer
    per name (SessionOptions.add_initializer) instead of holding a copy each.
    """

    def __init__(self, model_file: Path, min_elements: int = 4096) -> None:
        import hashlib

        import onnx
        from onnx import TensorProto

        main = onnx.load(str(model_file), load_external_data=True)
        self.by_hash: dict[str, str] = {}
        for t in main.graph.initializer:
            if len(t.dims) == 2 and t.dims[0] * t.dims[1] >= min_elements and t.data_type == TensorProto.FLOAT and t.raw_data:
                self.by_hash.setdefault(hashlib.sha256(t.raw_data).hexdigest(), t.name)
        self.shared: set[str] = set()

    def __call__(self, name: str, W: np.ndarray) -> tuple[str, bool]:
        import hashlib

        if W.dtype != np.float32:
            return name, False
        for transposed, arr in ((True, W.T), (False, W)):
            found = self.by_hash.get(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
            if found and found not in self.shared:
                self.shared.add(found)
                return found, transposed
        return name, False


def _write_graph(proto: Any, main_model_file: Path, staged: Path) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """Save the graph with each weight stored once, under the main graph's name where the two
    hold the same tensor so the sessions can share it: (surgery report, shared initializers, opset)."""
    layout = MainGraphLayout(main_model_file)
    surgery = dedupe_weight_transposes(proto, layout)
    index = save_with_external_data(proto, staged / GRADIENT_FILE, GRADIENT_DATA)
    shared = {name: index[name] for name in sorted(layout.shared) if name in index}
    surgery["shared_with_main_graph"] = len(shared)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return surgery, shared, opset

