"""Intervals and paired comparisons: with 10–120 prompts a mean alone misleads (FACTS: the
judge's verdict on one default flipped sign between two prompt sets of this size)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass
class Interval:
    """A mean with its seeded percentile-bootstrap interval (n: values it was computed from)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = 2000, level: float = 0.95) -> Interval:
    """Mean of `values` and the percentile bootstrap interval at `level` (resampling the values
    with replacement, `resamples` times, from a generator seeded with `seed`). One value gives a
    zero-width interval; none gives all None."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return Interval(None, None, None, 0)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean, float(low), float(high), int(x.size))


@dataclass
class Paired:
    """A system against the baseline on the same prompts.

    n: pairs used; wins / ties / losses: the system's value above / equal to (within `tie`) /
    below the baseline's; win_rate: (wins + ties / 2) / n; delta: mean of system − baseline with
    its bootstrap interval.
    """

    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float | None
    delta: Interval

    def to_dict(self) -> dict:
        d = asdict(self)
        d["delta"] = self.delta.to_dict()
        return d


def paired(system: Sequence[float], baseline: Sequence[float], seed: int = 0, tie: float = 1e-9) -> Paired:
    """Win rate and mean difference over pairs (system[i], baseline[i])."""
    if len(system) != len(baseline):
        raise ValueError("paired() needs one baseline value per system value")
    diffs = [float(a) - float(b) for a, b in zip(system, baseline)]
    wins = sum(d > tie for d in diffs)
    losses = sum(d < -tie for d in diffs)
    ties = len(diffs) - wins - losses
    rate = (wins + ties / 2) / len(diffs) if diffs else None
    return Paired(len(diffs), wins, ties, losses, rate, bootstrap_mean(diffs, seed))
