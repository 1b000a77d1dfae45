"""Keeping ONNX Runtime's quantization modules from configuring logging or chattering."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from ortrefine.errors import MissingExtraError


class _DropOrtRootRecords(logging.Filter):
    """ORT's quantizers log advice straight to the root logger (e.g. 'run pre-processing')."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("onnxruntime" in record.pathname and record.levelno < logging.ERROR)


@contextlib.contextmanager
def quiet_ort_logging() -> Iterator[None]:
    """Keep ORT's quantization modules from configuring logging or chattering at INFO.

    matmul_nbits_quantizer calls logging.basicConfig(level=INFO) at import, and module-level
    logging.warning() calls basicConfig too when the root has no handler. A placeholder handler
    makes those calls no-ops; everything is put back as it was on exit.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    if not handlers:
        root.addHandler(logging.NullHandler())
    drop = _DropOrtRootRecords()
    root.addFilter(drop)
    named = {n: logging.getLogger(n) for n in ("onnxruntime.quantization", "neural_compressor")}
    levels = {n: lg.level for n, lg in named.items()}
    for lg in named.values():
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        root.removeFilter(drop)
        for n, lg in named.items():
            lg.setLevel(levels[n])


def _nbits_module() -> Any:
    with quiet_ort_logging():
        try:
            from onnxruntime.quantization import matmul_nbits_quantizer
        except ImportError as e:  # onnx-ir is needed and not declared by the onnxruntime wheel
            raise MissingExtraError(
                f"onnxruntime's MatMulNBits quantizer cannot be imported ({e}); install the export extra: "
                "pip install 'ortrefine[export]' (it brings onnx and onnx-ir)"
            ) from None
    return matmul_nbits_quantizer
