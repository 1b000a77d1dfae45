"""What callers hand the scheduler and what comes back, kept apart from the scheduler itself.

The HTTP layer, the request schemas and `ortrefine batch` all speak these types; holding them
here lets them do so without importing the decoding machinery's internals.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.runtime.decoding import GenerationConfig

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class DecodeParams:
    """How one sequence is decoded.

    max_tokens: new tokens at most; 0 only scores the prompt (needs prompt_logprobs).
    temperature: 0 is greedy (argmax, as `--strategy greedy`); above 0 samples with top_k
        (0: off) and top_p, as `--strategy sample` does.
    seed: sampling seed (an int, or a tuple of ints for SeedSequence entropy: the n choices of
        one request); None draws fresh entropy.
    stop: strings that end the output; the text is cut before the first one.
    top_logprobs: alternatives (token, log-prob) reported per token, 0 to MAX_TOP_LOGPROBS.
    prompt_logprobs: also report the log-probs of the prompt's tokens (OpenAI's echo: scoring
        given text).
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0
    prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 0 or (self.max_tokens == 0 and not self.prompt_logprobs):
            raise ConfigError(f"max_tokens must be >= 1 (0 only to score the prompt), got {self.max_tokens}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ConfigError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature > 0:  # validates top_p, top_k and the stop strings as `generate` would
            self.sampling()
        else:
            GenerationConfig(stop=self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampling(self) -> GenerationConfig:
        return GenerationConfig(strategy="sample", max_new_tokens=max(self.max_tokens, 1), temperature=self.temperature,
                                top_k=self.top_k, top_p=self.top_p, stop=self.stop)


@dataclass
class TokenInfo:
    """A token with its log-prob under the model's unprocessed distribution.

    logprob: None for a prompt's first token (nothing predicts it). top: the `top_logprobs` most
    likely tokens at that position, best first, as (id, log-prob).
    """

    id: int
    logprob: float | None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Delta:
    """Text that became safe to show (no stop string can still start in it) and the tokens
    generated since the previous delta."""

    text: str
    tokens: list[TokenInfo]


@dataclass
class PromptTokens:
    """The prompt's tokens with their log-probs, sent right after the prefill when asked for (so
    that a stream can echo them before the first generated token)."""

    tokens: list[TokenInfo]


@dataclass
class Result:
    """A finished sequence.

    finish_reason: eos | stop | length (as `generate`), cancelled, or error (message in `error`).
    ids / tokens: generated tokens, eos included when it ended the output, cut after the token
        that completed a stop string; text: their text, special tokens skipped, cut at the stop.
    prompt_tokens: per prompt token, when prompt_logprobs was asked.
    """

    prompt_ids: list[int]
    ids: list[int]
    tokens: list[TokenInfo]
    text: str
    finish_reason: str
    prompt_tokens: list[TokenInfo] | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def logprob(self) -> float:
        return float(np.sum([t.logprob for t in self.tokens], dtype=np.float64))


class Handle:
    """What `submit` returns: cancel() drops the sequence at the next step (a client went away)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


Sink = Callable[[object], None]  # called on the scheduler thread: PromptTokens (if asked), Deltas, then the Result


class SchedulerFull(Exception):
    """Too many requests are waiting."""


class SchedulerClosed(Exception):
    """The scheduler no longer takes requests (shutting down)."""
