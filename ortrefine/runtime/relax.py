"""Continuous relaxation of Y (COLD-style): gradient ascent on soft token distributions.

Each position t of Y holds logits z_t over the vocabulary; the model reads the soft embedding
softmax(z_t / τ) · E instead of E[y_t]. The ascent direction comes from the bundle's gradient
graph (onnxruntime only): with S = Σ_t log p(y_t | y_<t) and labels taken from the current
projection argmax(z) (straight-through),

    ∂S/∂p_t ≈ E · ∂S/∂e_t  +  log p(· | y_<t)          (input path + expected own term)
    ∂S/∂z_t = (p_t ⊙ (∂S/∂p_t − ⟨p_t, ∂S/∂p_t⟩)) / τ

After every step the relaxation is projected back to tokens (argmax); the refiner verifies
each projection by exact scoring and never accepts one that lowers J.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ortrefine.errors import ConfigError

if TYPE_CHECKING:
    from ortrefine.runtime.gradient import GradientModel

METHODS = ("plain", "momentum", "adam")


@dataclass
class RelaxConfig:
    """steps: ascent steps per sweep (one projection each). lr: step size on z.
    method: plain | momentum | adam. temperature: τ of the softmax. init: logit given to Y's own
    token at the start (higher = start closer to the one-hot Y). momentum / beta2: method constants.
    """

    steps: int = 8
    lr: float = 1.0
    method: str = "adam"
    temperature: float = 1.0
    init: float = 6.0
    momentum: float = 0.9
    beta2: float = 0.999

    def __post_init__(self) -> None:
        self.method = str(self.method).lower()
        if self.method not in METHODS:
            raise ConfigError(f"unknown optimizer method {self.method!r}; known: {', '.join(METHODS)}")
        if self.steps < 1:
            raise ConfigError(f"relaxation steps must be >= 1, got {self.steps}")
        for name in ("lr", "temperature", "init"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"relaxation {name} must be a finite number > 0, got {value}")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def relax(gm: "GradientModel", prompt_ids: Sequence[int], y: Sequence[int], cfg: RelaxConfig,
          banned: Sequence[int] = ()) -> list[list[int]]:
    """Projected token sequences after each ascent step (duplicates and Y itself removed).

    Only positions of y are relaxed; `banned` tokens (eos) are never chosen inside Y.
    """
    from ortrefine.runtime.gradient import OUTPUT_NAMES, build_feed

    E = np.asarray(gm.embeddings, dtype=np.float32)  # (V, H)
    P, L = len(prompt_ids), len(y)
    z = np.zeros((L, E.shape[0]), dtype=np.float32)
    z[np.arange(L), np.asarray(y)] = cfg.init
    if len(banned):
        z[:, np.asarray(list(banned))] = -1e4
    m = np.zeros_like(z)
    v = np.zeros_like(z)
    ids = list(y)
    seen = {tuple(y)}
    out: list[list[int]] = []
    for step in range(1, cfg.steps + 1):
        p = _softmax(z / cfg.temperature)  # (L, V)
        feed = build_feed(E, list(prompt_ids) + ids, P)
        feed["inputs_embeds"][0, P:] = p @ E  # soft embeddings of Y
        _, _, grad, log_probs = gm.session.run(list(OUTPUT_NAMES), feed)
        gm.forward_tokens += P + L
        g_p = grad[0, P:] @ E.T + log_probs[0, P - 1 : P - 1 + L]  # (L, V) ∂S/∂p
        g_z = p * (g_p - (p * g_p).sum(axis=-1, keepdims=True)) / cfg.temperature
        if cfg.method == "plain":
            z += cfg.lr * g_z
        elif cfg.method == "momentum":
            m = cfg.momentum * m + g_z
            z += cfg.lr * m
        else:  # adam
            m = cfg.momentum * m + (1 - cfg.momentum) * g_z
            v = cfg.beta2 * v + (1 - cfg.beta2) * g_z * g_z
            mh, vh = m / (1 - cfg.momentum**step), v / (1 - cfg.beta2**step)
            z += cfg.lr * mh / (np.sqrt(vh) + 1e-8)
        ids = [int(t) for t in np.argmax(z, axis=-1)]
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append(ids)
    return out
