"""Memory read bandwidth with 1 and 2 threads: ONNX Runtime ReduceSum over a 512 MiB float32 input.

Says whether a 2-thread decode could read weights faster than the 1-thread numpy figure that
bench_decode divides by.

    python benchmarks/probes/bandwidth.py
"""
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def reduce_graph() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    g = helper.make_graph([node], "bw", [x], [y], [axes])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def main() -> None:
    a = np.ones((4096, 32768), np.float32)  # 512 MiB
    model = reduce_graph()
    for threads in (1, 2, 1, 2):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        s.run(None, {"x": a})
        best = min(_timed(lambda: s.run(None, {"x": a})) for _ in range(5))
        print(f"ORT ReduceSum, {threads} thread(s): {a.nbytes / best / 1e9:.1f} GB/s")
    best = min(_timed(lambda: a.sum()) for _ in range(5))
    print(f"numpy sum (1 thread): {a.nbytes / best / 1e9:.1f} GB/s")


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
