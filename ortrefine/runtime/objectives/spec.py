"""Objective terms as users write them: "NAME[=WEIGHT][:key=value,...]" on the command line, in
batch files and in serve requests, parsed to one `ObjectiveSpec` everywhere."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ortrefine.errors import ConfigError
from ortrefine.runtime.objectives.registry import term_class

_SYNTAX = "write NAME[=WEIGHT][:key=value,...]"


@dataclass
class ObjectiveSpec:
    """One term as the user wrote it: name, weight, options (e.g. alpha=0.8, fn=mod:fn)."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "ObjectiveSpec":
        """NAME[=WEIGHT | =VALUE][:key=value,key=value]  e.g. `coverage=2.0`,
        `mean-logprob:alpha=0.8`, `reward=mypkg.scorers:politeness`, `reward:fn=m:f,weight=2`.

        `=VALUE` sets the term's `value_option` when it has one (reward's fn, whose own colon
        would otherwise start the options), else the weight."""
        m = re.match(r"^([a-z][a-z-]*)(.*)$", text.strip())
        if not m:
            raise ConfigError(f"cannot parse objective {text!r}; {_SYNTAX}")
        name, rest = m.group(1), m.group(2)
        value_option = term_class(name).value_option
        weight, options, seen_weight = 1.0, {}, False
        if rest.startswith("="):
            value = rest[1:]
            if value_option:
                options[value_option] = value
            else:
                value, _, opts = value.partition(":")
                weight, seen_weight = _float(value, text), True
                rest = ":" + opts if opts else ""
        if rest.startswith(":"):
            for part in rest[1:].split(","):
                key, eq, val = part.partition("=")
                if not eq:
                    raise ConfigError(f"objective {text!r}: option {part!r} is not key=value")
                key = key.strip().replace("-", "_")
                if key in options or (key == "weight" and seen_weight):
                    raise ConfigError(f"objective {text!r}: option {key!r} is given twice")
                if key == "weight":
                    weight, seen_weight = _float(val, text), True
                else:
                    options[key] = val
        elif rest and not rest.startswith("="):
            raise ConfigError(f"cannot parse objective {text!r}; {_SYNTAX}")
        return cls(name, weight, options)


def _float(value: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"objective {text!r}: weight {value!r} is not a number") from None
