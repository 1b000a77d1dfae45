"""Helpers shared by every command module (kept apart from main.py so that command modules can be
imported on their own without a circular import)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from ortrefine.errors import ConfigError, OrtRefineError

DEFAULT_MODEL = "smollm2-135m"


def domain_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into `Error: <message>` and exit 1 (invalid option values: exit 2),
    never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            raise click.UsageError(str(e)) from None
        except OrtRefineError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a file or disk the user named: unreadable, unwritable, full
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None
        # KeyboardInterrupt (SIGINT/SIGTERM) passes through to ortrefine.cli.entry: exit 128 + signal

    return wrapper


def _remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Session switches travel in ctx.meta, so every command's signature stays free of them."""
    ctx.meta[f"ortrefine.{param.name}"] = value
    return value


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--hugepages", is_flag=True, expose_value=False, callback=_remember,
                      help="Move the weights onto transparent huge pages after loading (Linux 6.1+; decode a few % "
                           "faster, load slower: worth it for long runs).")(fn)
    fn = click.option("--pin-threads", is_flag=True, expose_value=False, callback=_remember,
                      help="Pin onnxruntime's worker threads one per physical core (CPU; no gain measured on 2 cores).")(fn)
    fn = click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: all cores).")(fn)
    fn = click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                      help="Execution provider; `cuda` fails when CUDA is unavailable instead of falling back.")(fn)
    fn = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Bundle folder or catalog name.")(fn)
    return fn


def load_lm(model: str, provider: str, threads: int | None):
    import ortrefine

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx else {}
    return ortrefine.load(model, provider=provider, threads=threads, pin_threads=bool(meta.get("ortrefine.pin_threads")),
                          hugepages=bool(meta.get("ortrefine.hugepages")))


