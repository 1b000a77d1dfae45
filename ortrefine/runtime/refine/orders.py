"""Visit orders: the sequence in which one sweep tries the positions of Y.

Each order is `(incumbent, rng) -> positions`, looked up by name in ORDERS (the CLI lists its
keys). The rng is the refiner's own, seeded by RefineConfig.seed, so a random order repeats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.registry import Registry

if TYPE_CHECKING:
    from ortrefine.runtime.refine.state import _State


def _l2r(state: "_State", rng: np.random.Generator) -> list[int]:
    return list(range(len(state.ids)))


def _r2l(state: "_State", rng: np.random.Generator) -> list[int]:
    return list(reversed(range(len(state.ids))))


def _random(state: "_State", rng: np.random.Generator) -> list[int]:
    return [int(i) for i in rng.permutation(len(state.ids))]


def _worst_first(state: "_State", rng: np.random.Generator) -> list[int]:
    return [int(i) for i in np.argsort(state.lp, kind="stable")]


ORDERS: Registry[Callable[["_State", np.random.Generator], list[int]]] = Registry("position order")
ORDERS.register("l2r", _l2r)
ORDERS.register("r2l", _r2l)
ORDERS.register("random", _random)
ORDERS.register("worst-first", _worst_first)


def _gradient_norm(state: "_State", rng: np.random.Generator) -> list[int]:
    """Largest ‖∂ log P / ∂e_i‖ first: where the output is most sensitive to its tokens."""
    if state.grad_norms is None:
        raise ConfigError("order 'gradient-norm' needs --proposal gradient or hybrid (a gradient graph)")
    return [int(i) for i in np.argsort(-state.grad_norms, kind="stable")]


ORDERS.register("gradient-norm", _gradient_norm)
