"""One running sequence: `generate`'s per-row decoding rules, and what of its output is safe to stream.

Per-row decoding is `generate`'s (argmax for greedy, `decoding._sample_logits` with the row's own
generator for sampling, the same stop-string and eos rules) so that a sequence decoded inside a
shared batch gives exactly what it would give alone. The scheduler only decides when a row steps.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ortrefine.runtime.decoding import _sample_logits
from ortrefine.serve.protocol import DecodeParams, Delta, Handle, Result, Sink, TokenInfo
from ortrefine.serve.scoring import token_info

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM

log = logging.getLogger(__name__)


def holdback(text: str, stops: Sequence[str]) -> str:
    """The part of `text` that can be shown now: without a trailing incomplete UTF-8 character
    (decoded as U+FFFD) and without a tail that a stop string may still complete."""
    text = text.rstrip("\ufffd")
    longest = max((len(s) for s in stops), default=0)
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return text[:-k]
    return text


class Seq:
    """One running sequence: its request, decoding state and what was already sent."""

    def __init__(self, prompt_ids: list[int], params: DecodeParams, sink: Sink, handle: Handle) -> None:
        self.prompt_ids, self.params, self.sink, self.handle = prompt_ids, params, sink, handle
        self.cfg = params.sampling() if not params.greedy else None
        self.rng = np.random.default_rng(params.seed) if not params.greedy else None
        self.ids: list[int] = []
        self.tokens: list[TokenInfo] = []
        self.prompt_tokens: list[TokenInfo] | None = None
        self.sent = ""  # text already given to the sink
        self.sent_tokens = 0
        self.length = 0  # positions in this row's cache
        self.done = False  # its Result was sent
        self.t0 = time.perf_counter()

    def pick(self, logits: np.ndarray) -> int:
        """logits: (vocab,) float32 of the newest position → the next token."""
        if self.cfg is None:
            return int(np.argmax(logits))
        return _sample_logits(logits, self.cfg, self.rng)

    def emit(self, obj: object) -> None:
        try:
            self.sink(obj)
        except Exception:  # noqa: BLE001 - a consumer that cannot take events (its loop closed) has gone away
            log.debug("sink of a sequence failed; cancelling it", exc_info=True)
            self.handle.cancel()

    def advance(self, lm: "LM", logits: np.ndarray) -> tuple[str, str | None] | None:
        """Take the next token from `logits` (vocab,). Once the sequence is over: (finish reason,
        its final text or None to decode it); until then None, having streamed what became safe."""
        p = self.params
        token = self.pick(logits)
        self.tokens.append(token_info(logits, token, p.top_logprobs))
        self.ids.append(token)
        if token in lm.eos_ids:
            return "eos", None
        text = lm.tokenizer.decode(self.ids)
        if p.stop and any(s in text for s in p.stop):
            return "stop", text[: min(text.index(s) for s in p.stop if s in text)]
        if len(self.ids) >= p.max_tokens:
            return "length", text
        shown = holdback(text, p.stop)
        if len(shown) > len(self.sent) and shown.startswith(self.sent):
            self.emit(Delta(shown[len(self.sent):], self.tokens[self.sent_tokens:]))
            self.sent, self.sent_tokens = shown, len(self.tokens)
        return None

    def finish(self, tokenizer: Any, reason: str, text: str | None = None, error: str | None = None) -> None:
        """Send what was held back, then the Result. A failed or cancelled sequence sends no
        last Delta, since its client gets an error rather than the rest of the text."""
        self.done = True
        if text is None:
            text = tokenizer.decode(self.ids) if self.ids else ""
        rest = self.tokens[self.sent_tokens:]
        if reason not in ("cancelled", "error") and (len(text) > len(self.sent) or rest):
            if not text.startswith(self.sent):
                log.warning("the final text does not extend the streamed text (the tokenizer's decode is not prefix-stable here)")
            self.emit(Delta(text[len(self.sent):], rest))
        self.emit(Result(prompt_ids=self.prompt_ids, ids=list(self.ids), tokens=list(self.tokens), text=text, finish_reason=reason,
                         prompt_tokens=self.prompt_tokens, error=error, seconds=time.perf_counter() - self.t0))
