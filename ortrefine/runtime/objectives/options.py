"""Options of objective terms: each term declares them as `Option`s, and this shared code converts
and checks the values, so a term never parses strings and every term words a bad value alike."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ortrefine.errors import ConfigError


def opt_float(term: str, key: str, value: Any, low: float | None = None) -> float:
    """An option as a finite float (>= low when given); a string is parsed."""
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise ConfigError(f"objective {term!r}: option {key}={value!r} is not a number") from None
    if not math.isfinite(x):
        raise ConfigError(f"objective {term!r}: option {key} must be a finite number, got {value!r}")
    if low is not None and x < low:
        raise ConfigError(f"objective {term!r}: option {key} must be >= {low:g}, got {value!r}")
    return x


def opt_int(term: str, key: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An option as a whole number (>= low when given); "3" and 3.0 are 3, "2.5" is refused."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"[+-]?\d+", text):
            n = int(text)
        else:
            x = opt_float(term, key, value)
            if not x.is_integer():
                raise ConfigError(f"objective {term!r}: option {key} must be a whole number, got {value!r}")
            n = int(x)
    if low is not None and n < low:
        raise ConfigError(f"objective {term!r}: option {key} must be >= {low}, got {value!r}")
    if high is not None and n > high:
        raise ConfigError(f"objective {term!r}: option {key} must be <= {high}, got {value!r}")
    return n


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def opt_bool(term: str, key: str, value: Any) -> bool:
    """Specs arrive as text, so "true"/"off" and 1/0 must all mean a flag; anything else is refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"objective {term!r}: option {key} must be 1/0 (true/false), got {value!r}")


@dataclass(frozen=True)
class Option:
    """One option a term takes.

    type: float, int, bool or str (a str value is passed on as given, the term judging its sense).
    default: the value when the spec omits it; None means "not set" and is passed on unconverted.
    low/high: the range of a number (high: whole numbers only).
    error: one message replacing the shared ones for any bad value, "{value}" the value given,
        for options whose users know them by a fuller wording.
    missing: makes the option required; the message when it is absent or empty.
    """

    type: type
    default: Any = None
    low: float | None = None
    high: int | None = None
    error: str | None = None
    missing: str | None = None

    def __post_init__(self) -> None:
        if self.type not in (float, int, bool, str):
            raise TypeError(f"an objective option is float, int, bool or str, not {self.type!r}")

    def convert(self, term: str, key: str, value: Any) -> Any:
        if self.missing is not None and not value:
            raise ConfigError(self.missing)
        if value is None and self.default is None:
            return None
        try:
            return self._convert(term, key, value)
        except ConfigError:
            if self.error is None:
                raise
            raise ConfigError(self.error.format(value=value)) from None

    def _convert(self, term: str, key: str, value: Any) -> Any:
        if self.type is float:
            return opt_float(term, key, value, low=self.low)
        if self.type is int:
            return opt_int(term, key, value, low=None if self.low is None else int(self.low), high=self.high)
        if self.type is bool:
            return opt_bool(term, key, value)
        if not isinstance(value, str):
            raise ConfigError(f"objective {term!r}: option {key} must be text, got {value!r}")
        return value
