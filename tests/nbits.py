"""What a quantized graph's MatMulNBits nodes were given, for the quantize tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def levels(path: Path) -> Counter:
    """(bits, accuracy_level) of every MatMulNBits in a bundle's graph (None: no attribute)."""
    import onnx

    m = onnx.load(str(Path(path) / "model.onnx"), load_external_data=False)
    got: Counter = Counter()
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            got[(a["bits"], a.get("accuracy_level"))] += 1
    return got
