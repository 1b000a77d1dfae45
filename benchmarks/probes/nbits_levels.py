"""Which MatMulNBits compute types are fast on this CPU, and are they the same row by row?

One-node graphs with random codes at SmolLM2-135M's shapes (a 576 -> 1536 projection, the 576 ->
49152 head at 8 and at 4 bits), each at accuracy level 4 (int8 activations) and 1 (fp32), one
intra-op thread: milliseconds per call at M = 1 (a decode step) and M = 64 (a scoring pass), and
whether a row's output depends on the other rows of its batch (it must not: the refiner compares
rows of different batches).

    python benchmarks/probes/nbits_levels.py
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = [(576, 1536, 4), (576, 49152, 8), (576, 49152, 4)]


def session(k: int, n: int, bits: int, level: int, block: int = 32) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(n, k // block, block * bits // 8), dtype=np.uint8)
    scales = (rng.random((n, k // block)) * 0.02).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
                              initializer=[numpy_helper.from_array(codes, "B"), numpy_helper.from_array(scales.reshape(-1), "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ms_per_call(s: ort.InferenceSession, a: np.ndarray, reps: int = 5) -> float:
    s.run(None, {"A": a})
    t = time.perf_counter()
    for _ in range(reps):
        s.run(None, {"A": a})
    return (time.perf_counter() - t) / reps * 1000


def main() -> None:
    rng = np.random.default_rng(1)
    print("| K -> N | bits | level | ms, M = 1 | ms, M = 64 | max |row alone - row in a batch of 64| |")
    print("|---|---|---|---|---|---|")
    for k, n, bits in SHAPES:
        for level in (4, 1):
            s = session(k, n, bits, level)
            a = rng.standard_normal((64, k)).astype(np.float32)
            batch = s.run(None, {"A": a})[0]
            alone = np.stack([s.run(None, {"A": a[i:i + 1]})[0][0] for i in range(0, 64, 8)])
            diff = float(np.abs(alone - batch[::8]).max())
            print(f"| {k} -> {n} | {bits} | {level} | {ms_per_call(s, a[:1]):.2f} | {ms_per_call(s, a):.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
