"""Helpers shared by every command module (kept apart from main.py so that command modules can be
imported on their own without a circular import)."""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Iterable

import click
from click.core import ParameterSource

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
    fn = click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                      help=f"Intra-op threads (default: all cores; at most {MAX_THREADS}, the CPUs this machine has).")(fn)
    fn = click.option("--provider", type=LibraryChoice(providers), default="auto", show_default=True,
                      help="Execution provider; `cuda` fails when CUDA is unavailable instead of falling back.")(fn)
    fn = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, type=ModelName(),
                      help="Bundle folder or catalog name.")(fn)
    return fn


def load_lm(model: str, provider: str, threads: int | None):
    import ortrefine

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx else {}
    return ortrefine.load(model, provider=provider, threads=threads, pin_threads=bool(meta.get("ortrefine.pin_threads")),
                          hugepages=bool(meta.get("ortrefine.hugepages")))


# -- option types and checks shared by the commands ----------------------------------------------
MAX_THREADS = os.cpu_count() or 1  # more intra-op threads than CPUs only contend (and 10**6 would start 10**6 threads)
PROVIDER_CHOICES = ["auto", "cpu", "cuda"]  # = providers(), for a plain click.Choice (no onnxruntime import)


class FiniteFloat(click.FloatRange):
    """A float option that must be a finite number (click's FloatRange lets nan and inf through)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def _not_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class Text(click.ParamType):
    """User text (a prompt, a message, a stop string): valid UTF-8. With stdin=True, `-` reads it
    from standard input (UTF-8; trailing newlines dropped, as the shell's $(...) does)."""

    name = "text"

    def __init__(self, stdin: bool = False) -> None:
        self.stdin = stdin

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                self.fail("the text is not valid UTF-8; re-encode it as UTF-8 (e.g. with iconv -t UTF-8).", param, ctx)
        if self.stdin and value == "-":
            return read_stdin(param, ctx)
        if not isinstance(value, str):
            return value
        if _not_utf8(value):
            also = ", or pipe it in and pass `-`" if self.stdin else ""
            self.fail("the text is not valid UTF-8 (the shell passed bytes of another encoding); re-encode it as UTF-8 "
                      f"(e.g. with iconv -t UTF-8){also}.", param, ctx)
        return value


def read_stdin(param: click.Parameter | None = None, ctx: click.Context | None = None) -> str:
    """The whole of standard input as UTF-8 text, or a usage error naming the fix."""
    try:
        data = click.get_binary_stream("stdin").read()
    except (OSError, ValueError, AttributeError) as e:
        raise click.BadParameter(f"cannot read standard input ({e}); give the text as an argument", ctx, param) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.BadParameter(f"standard input is not valid UTF-8 (byte {e.start}); re-encode it as UTF-8 "
                                 "(e.g. iconv -t UTF-8)", ctx, param) from None
    text = text.removeprefix("\ufeff").rstrip("\r\n")
    if not text.strip():
        raise click.BadParameter("standard input is empty; pipe the text in (echo 'Once upon a time' | ortrefine generate -) "
                                 "or give it as an argument", ctx, param)
    return text


class ModelName(click.ParamType):
    """A bundle folder or catalog name: not empty."""

    name = "model"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a bundle folder or a catalog name (see `ortrefine models`).", param, ctx)
        return value


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user set option `name` (on the command line or through the environment)."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def only_with(ctx: click.Context, options: Iterable[str], needs: str, active: bool) -> None:
    """Refuse options that would be silently ignored: each of `options` needs `needs` (active says
    whether it holds)."""
    if active:
        return
    for name in options:
        if given(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} only applies with {needs}; add that, or drop --{name.replace('_', '-')}")


class LibraryChoice(click.Choice):
    """A Choice whose choices come from the library, read on first use (parsing or --help), so
    importing the CLI does not import the runtime (numpy, onnxruntime) for every command."""

    def __init__(self, load: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._load, self._choices = load, None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:
        self._choices = tuple(value)


def providers() -> list[str]:
    from ortrefine.runtime.session import PROVIDERS

    return ["auto", *PROVIDERS]


def strategies() -> list[str]:
    from ortrefine.runtime.decoding import STRATEGIES

    return STRATEGIES.names()
