"""The endpoint handlers, one module per endpoint family; `ortrefine.serve.app` maps URLs to them.

Handlers only validate, encode and format: decoding happens on each model's scheduler thread
(`ortrefine.serve.runs` brings the results back to the event loop).
"""
