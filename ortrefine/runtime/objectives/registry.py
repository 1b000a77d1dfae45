"""The objective terms by name. A term joins by decorating its class with `register`; an unknown
name fails with the list of registered ones (ortrefine.registry), so a typo shows the fix."""

from __future__ import annotations

from typing import TypeVar

from ortrefine.registry import Registry
from ortrefine.runtime.objectives.base import Term

TERMS: Registry[type[Term]] = Registry("objective")

T = TypeVar("T", bound=type[Term])


def register(cls: T) -> T:
    TERMS.register(cls.name, cls)
    return cls


def term_class(name: str) -> type[Term]:
    """The term class called `name`; UnknownNameError lists the known names."""
    return TERMS.get(name)
