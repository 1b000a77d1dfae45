"""Build-machine side: sources, ONNX export, quantization. Needs the `export` extra (torch)."""
