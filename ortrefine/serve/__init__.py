"""`ortrefine serve`: an OpenAI-compatible HTTP server over bundles, with continuous batching.

The scheduler (numpy + onnxruntime only) is usable without the `serve` extra; the HTTP layer
(`ortrefine.serve.app`, `ortrefine.serve.server`) needs starlette and uvicorn.
"""
