"""Continuous batching: one thread owns an LM and decodes every running sequence in shared passes.

Why: a decode step of a small model on a CPU is bound by reading the weights, so eight rows cost
little more than one. Requests join the batch between steps (after a batch-1 prefill of their
prompt, the same pass `generate` makes) and leave it as soon as they finish or are cancelled, so
nobody waits for the longest request of a fixed batch.

This module is the queue and the thread that drives it; the shared cache is `kvbatch`, the
per-row decoding rules `sequence`, the reported log-probs `scoring`, and the types callers see
`protocol` (re-exported here for the callers that import them from this module).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.serve.kvbatch import Batch
from ortrefine.serve.protocol import (MAX_TOP_LOGPROBS, DecodeParams, Delta, Handle, PromptTokens, Result, SchedulerClosed,
                                      SchedulerFull, Sink, TokenInfo)
from ortrefine.serve.scoring import SCORE_CHUNK, score_prompt
from ortrefine.serve.sequence import Seq, holdback

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM

__all__ = ["MAX_TOP_LOGPROBS", "SCORE_CHUNK", "DecodeParams", "Delta", "Handle", "PromptTokens", "Result", "Scheduler",
           "SchedulerClosed", "SchedulerFull", "Sink", "TokenInfo", "holdback", "score_prompt"]

log = logging.getLogger(__name__)


class Scheduler:
    """Owns one LM on a thread of its own; `submit` queues a sequence, its sink gets the output.

    max_batch: rows decoded together at most (the rest wait in the queue).
    max_queue: sequences waiting at most; `submit` refuses more (SchedulerFull).
    prefill_tokens: prompt tokens prefilled between two decode steps (at least one prompt), so
        a burst of new requests does not stall the running ones for long.
    """

    def __init__(self, lm: "LM", max_batch: int = 16, max_queue: int = 256, prefill_tokens: int = 1024, name: str = "model") -> None:
        if max_batch < 1 or max_queue < 1:
            raise ConfigError("max_batch and max_queue must be >= 1")
        self.lm, self.max_batch, self.max_queue, self.prefill_tokens = lm, max_batch, max_queue, prefill_tokens
        self._waiting: deque[Seq] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._batch = Batch(lm)
        self.steps = 0
        self.step_rows = 0
        self.generated = 0
        self.finished: dict[str, int] = {}
        self._starting = 0  # taken from the queue, not yet prefilled
        self._thread = threading.Thread(target=self._loop, name=f"ortrefine-scheduler-{name}", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: DecodeParams, sink: Sink) -> Handle:
        handle = Handle()
        seq = Seq([int(i) for i in prompt_ids], params, sink, handle)
        with self._cv:
            if self._closing:
                raise SchedulerClosed("the server is shutting down; retry on another instance")
            if len(self._waiting) >= self.max_queue:
                raise SchedulerFull(f"{len(self._waiting)} requests are already waiting; retry later")
            self._waiting.append(seq)
            self._cv.notify()
        return handle

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        with self._cv:
            waiting = len(self._waiting)
        return {"alive": self.alive, "running": len(self._batch.rows) + self._starting, "waiting": waiting, "steps": self.steps,
                "generated_tokens": self.generated, "mean_batch": round(self.step_rows / self.steps, 2) if self.steps else 0.0,
                "finished": dict(self.finished)}

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; with drain, finish the queued and running ones first."""
        with self._cv:
            self._closing = True
            if not drain:
                for s in list(self._waiting) + list(self._batch.rows):
                    s.handle.cancel()
            self._cv.notify()
        self._thread.join(timeout)

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            admitted = self._admit()
            if admitted is None:
                return
            try:
                for seq in admitted:
                    self._start(seq)
                    self._starting -= 1
                self._drop_cancelled()
                if self._batch.rows:
                    self._step()
            except Exception as e:  # noqa: BLE001 - a bug here must not leave every later request hanging
                log.exception("scheduler step failed")
                self._starting = 0
                for seq in self._batch.rows + admitted:
                    self._finish(seq, "error", error=f"{type(e).__name__}: {e}")
                self._batch = Batch(self.lm)

    def _admit(self) -> list[Seq] | None:
        """Wait for work, then take from the queue what fits the free rows and the prefill budget;
        None once closing with nothing left to finish."""
        with self._cv:
            while not self._waiting and not self._batch.rows and not self._closing:
                self._cv.wait()
            if self._closing and not self._waiting and not self._batch.rows:
                return None
            admitted, budget = [], self.prefill_tokens
            while self._waiting and len(self._batch.rows) + len(admitted) < self.max_batch:
                if admitted and len(self._waiting[0].prompt_ids) > budget:
                    break
                seq = self._waiting.popleft()
                budget -= len(seq.prompt_ids)
                admitted.append(seq)
            self._starting = len(admitted)
        return admitted

    def _start(self, seq: Seq) -> None:
        """Prefill one prompt (batch 1, as `generate`), take its first token, join the batch."""
        if seq.handle.cancelled.is_set():
            self._finish(seq, "cancelled")
            return
        try:
            p = seq.params
            if p.prompt_logprobs:
                # SCORE_CHUNK is read here, at call time, so that setting it on this module takes effect
                seq.prompt_tokens = score_prompt(self.lm, seq.prompt_ids, p.top_logprobs, chunk=SCORE_CHUNK)
                seq.emit(PromptTokens(seq.prompt_tokens))
            if p.max_tokens == 0:
                self._finish(seq, "length")
                return
            out = self.lm.prefill(seq.prompt_ids, keep_last=1)
            if self._advance(seq, out.logits[0, -1]):
                self._batch.add(seq, out.kv)
        except Exception as e:  # noqa: BLE001 - reported to this request's client; the others go on
            log.exception("prefill failed")
            self._finish(seq, "error", error=f"{type(e).__name__}: {e}")

    def _step(self) -> None:
        batch = self._batch
        try:
            logits = batch.step()
        except Exception as e:  # noqa: BLE001 - every running request gets the error; the scheduler goes on
            log.exception("decode step failed")
            for seq in batch.rows:
                self._finish(seq, "error", error=f"{type(e).__name__}: {e}")
            batch.keep([])
            return
        self.steps += 1
        self.step_rows += len(batch.rows)
        keep = [b for b, seq in enumerate(batch.rows) if self._advance(seq, logits[b])]
        batch.keep(keep)

    # -- cancellation and the end of a sequence ------------------------------------------------
    def _drop_cancelled(self) -> None:
        """Between steps, so a client that went away frees its row before the next pass."""
        rows = self._batch.rows
        gone = {b for b, s in enumerate(rows) if s.handle.cancelled.is_set()}
        if gone:
            for b in sorted(gone):
                self._finish(rows[b], "cancelled")
            self._batch.keep([b for b in range(len(rows)) if b not in gone])

    def _advance(self, seq: Seq, logits: np.ndarray) -> bool:
        """Choose the next token from `logits` (vocab,); False once the sequence has finished."""
        end = seq.advance(self.lm, logits)
        self.generated += 1
        if end is None:
            return True
        reason, text = end
        self._finish(seq, reason, text=text)
        return False

    def _finish(self, seq: Seq, reason: str, text: str | None = None, error: str | None = None) -> None:
        if seq.done:
            return
        self.finished[reason] = self.finished.get(reason, 0) + 1
        seq.finish(self.lm.tokenizer, reason, text=text, error=error)
