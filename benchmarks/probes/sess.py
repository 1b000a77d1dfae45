"""Session creation time of one graph under one setting (run in a fresh process each time).

    python benchmarks/probes/sess.py models/smollm2-135m/model.onnx default|noopt|basic|noprepack|bytes
"""
import sys, time, onnxruntime as ort
path = sys.argv[1]; mode = sys.argv[2]
so = ort.SessionOptions(); so.log_severity_level = 3
if mode == "noopt": so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
if mode == "basic": so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
if mode == "noprepack": so.add_session_config_entry("session.disable_prepacking", "1")
if mode == "bytes":
    data = open(path, "rb").read()
t = time.perf_counter()
s = ort.InferenceSession(data if mode == "bytes" else path, so, providers=["CPUExecutionProvider"])
print(mode, round(time.perf_counter() - t, 3))
