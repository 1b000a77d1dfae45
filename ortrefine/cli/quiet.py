"""Library chatter off by default for the heavy commands (export, quantize, distill, export-gradient).

torch's tracer, Optimum and transformers print dozens of warnings per export that are about their
internals, not the user's model; the one line a user needs is ortrefine's own. `-v` shows them all.
Errors still surface: they are raised, not logged.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

NOISY_LOGGERS = ("torch", "torch.onnx", "torch._dynamo", "torch.export", "optimum", "transformers", "onnxscript",
                 "onnx_ir", "onnxruntime", "onnxslim", "accelerate", "root")


@contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Silence Python warnings and the libraries' loggers below ERROR for the duration (unless verbose)."""
    if verbose:
        yield
        return
    saved = {name: logging.getLogger(None if name == "root" else name).level for name in NOISY_LOGGERS}
    env = {k: os.environ.get(k) for k in ("TRANSFORMERS_VERBOSITY", "TORCH_LOGS")}
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in NOISY_LOGGERS:
                logging.getLogger(None if name == "root" else name).setLevel(logging.ERROR)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(None if name == "root" else name).setLevel(level)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def verbose_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`-v/--verbose` on a command: its body runs inside quiet_libraries unless it is given."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: bool = False, **kwargs: Any) -> Any:
        with quiet_libraries(verbose):
            return fn(*args, **kwargs)

    return click.option("--verbose", "-v", is_flag=True, help="Show the libraries' warnings and notices (hidden by default).")(wrapper)
