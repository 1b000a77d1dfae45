"""Continuous batching: one thread owns an LM and decodes every running sequence in shared passes.

Why: a decode step of a small model on a CPU is bound by reading the weights, so eight rows cost
little more than one. Requests join the batch between steps (after a batch-1 prefill of their
prompt, the same pass `generate` makes) and leave it as soon as they finish or are cancelled, so
nobody waits for the longest request of a fixed batch.

Rows of different lengths share one cache by left padding: the cache is (batch, kv_heads, width,
head_dim) with each row's tokens right-aligned and its attention mask 0 over the gap, and
`LM.forward` derives position ids from the mask, so a row sees exactly what it would see alone.
When rows leave, columns that are padding in every remaining row are cut off.

Per-row decoding is `generate`'s: argmax for greedy, `decoding._sample_logits` with the row's own
generator for sampling, the same stop-string and eos rules, so outputs equal `generate`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.runtime.decoding import GenerationConfig, _sample_logits
from ortrefine.runtime.logprobs import gather_logprobs, log_softmax
from ortrefine.runtime.session import KVCache

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM

log = logging.getLogger(__name__)

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


def _top(logprobs_row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """logprobs_row: (vocab,) → the k best (id, log-prob), best first, ties by lower id."""
    if k <= 0:
        return []
    part = np.argpartition(-logprobs_row, k - 1)[:k] if k < logprobs_row.size else np.arange(logprobs_row.size)
    order = part[np.lexsort((part, -logprobs_row[part]))]
    return [(int(i), float(logprobs_row[i])) for i in order]


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


class _Seq:
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


class _Batch:
    """The running rows and their left-padded shared cache.

    kv[j]: (rows, kv_heads, width, head_dim); mask: (rows, width) int64, 0 over each row's left gap.
    While one row runs alone it steps through `LM.steps` instead (`solo`): the path `generate`
    takes, which on the fused CPU graph extends a KV buffer in place rather than copying the cache
    every step; the cache becomes arrays again when another row joins.
    """

    def __init__(self, lm: "LM") -> None:
        self.lm = lm
        self.rows: list[_Seq] = []
        self.kv: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.solo = None

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def _unsolo(self) -> None:
        if self.solo is not None:
            steps, self.solo = self.solo, None
            if hasattr(steps, "buffers"):  # SharedKVSteps: the filled part of its buffers
                self.kv = [b[:, :, : steps.length] for b in steps.buffers]
            else:
                self.kv = [_host(a) for a in steps.kv.arrays]
            self.mask = np.ones((1, self.rows[0].length), dtype=np.int64)

    def add(self, seq: _Seq, kv: KVCache) -> None:
        self._unsolo()
        arrays = [_host(a) for a in kv.arrays]
        n = arrays[0].shape[2]
        seq.length = n
        if not self.rows:
            self.rows, self.kv, self.mask = [seq], arrays, np.ones((1, n), dtype=np.int64)
            return
        width = max(self.width, n)
        old_pad, new_pad = width - self.width, width - n
        self.kv = [np.concatenate([_left_pad(a, old_pad), _left_pad(b, new_pad)], axis=0) for a, b in zip(self.kv, arrays)]
        row_mask = np.concatenate([np.zeros((1, new_pad), np.int64), np.ones((1, n), np.int64)], axis=1)
        self.mask = np.concatenate([np.pad(self.mask, ((0, 0), (old_pad, 0))), row_mask], axis=0)
        self.rows.append(seq)

    def keep(self, index: list[int]) -> None:
        """Keep only these rows; cut the columns that are now padding in every row."""
        if len(index) == len(self.rows):
            return
        self._unsolo()
        self.rows = [self.rows[i] for i in index]
        if not self.rows:
            self.kv, self.mask = [], np.zeros((0, 0), dtype=np.int64)
            return
        cut = self.width - max(r.length for r in self.rows)
        idx = np.asarray(index, dtype=np.int64)
        self.kv = [np.ascontiguousarray(a[idx, :, cut:]) for a in self.kv]
        self.mask = np.ascontiguousarray(self.mask[idx, cut:])

    def step(self) -> np.ndarray:
        """Feed every row's newest token in one pass; (rows, vocab) float32 logits."""
        if len(self.rows) == 1:  # alone, hence unpadded (keep() cut the gap)
            r = self.rows[0]
            if self.solo is None:
                self.solo = self.lm.steps(KVCache(self.kv), r.params.max_tokens - len(r.ids) + 1)
                self.kv = []
            logits = self.solo.step(r.ids[-1])
            r.length += 1
            return logits[None]
        tokens = np.array([[r.ids[-1]] for r in self.rows], dtype=np.int64)
        mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), dtype=np.int64)], axis=1)
        out = self.lm.forward(tokens, KVCache(self.kv), mask, keep_last=1)
        self.kv = [_host(a) for a in out.kv.arrays]
        self.mask = mask
        for r in self.rows:
            r.length += 1
        return out.logits[:, -1]


def _host(a: object) -> np.ndarray:
    """A cache array on the host (CUDA OrtValues are copied)."""
    return a if isinstance(a, np.ndarray) else np.asarray(a.numpy())


def _left_pad(a: np.ndarray, n: int) -> np.ndarray:
    """a: (rows, heads, length, dim) → (rows, heads, n + length, dim), zeros first."""
    if n == 0:
        return a
    return np.concatenate([np.zeros((*a.shape[:2], n, a.shape[3]), dtype=a.dtype), a], axis=2)


SCORE_CHUNK = 256  # prompt positions per scoring pass: (256, vocab) float32 logits, 50 MB for SmolLM2


def score_prompt(lm: "LM", ids: list[int], k: int) -> list[TokenInfo]:
    """Each prompt token with log p(token | the tokens before it) (None for the first) and the k
    likeliest alternatives. In passes of SCORE_CHUNK positions on the growing cache, so that a
    long prompt never materialises (P, vocab) logits at once. A pass of its own, apart from the
    generation's prefill, which stays the one `generate` makes."""
    out = [TokenInfo(ids[0], None, [])]
    fed, kv = ids[:-1], None
    for start in range(0, len(fed), SCORE_CHUNK):
        piece = fed[start : start + SCORE_CHUNK]
        step = lm.forward(np.asarray([piece], dtype=np.int64), kv)
        kv = step.kv
        targets = np.asarray(ids[start + 1 : start + 1 + len(piece)], dtype=np.int64)
        logits = step.logits[0]  # (len(piece), vocab): row t predicts targets[t]
        lps = gather_logprobs(logits, targets)
        tops = [_top(row, k) for row in log_softmax(logits)] if k else [[] for _ in targets]
        out += [TokenInfo(int(t), float(lp), top) for t, lp, top in zip(targets, lps, tops)]
    return out


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
        self._waiting: deque[_Seq] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._batch = _Batch(lm)
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
        seq = _Seq([int(i) for i in prompt_ids], params, sink, handle)
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
            with self._cv:
                while not self._waiting and not self._batch.rows and not self._closing:
                    self._cv.wait()
                if self._closing and not self._waiting and not self._batch.rows:
                    return
                admitted, budget = [], self.prefill_tokens
                while self._waiting and len(self._batch.rows) + len(admitted) < self.max_batch:
                    if admitted and len(self._waiting[0].prompt_ids) > budget:
                        break
                    seq = self._waiting.popleft()
                    budget -= len(seq.prompt_ids)
                    admitted.append(seq)
                self._starting = len(admitted)
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
                self._batch = _Batch(self.lm)

    def _start(self, seq: _Seq) -> None:
        """Prefill one prompt (batch 1, as `generate`), take its first token, join the batch."""
        if seq.handle.cancelled.is_set():
            self._finish(seq, "cancelled")
            return
        try:
            p = seq.params
            if p.prompt_logprobs:
                seq.prompt_tokens = score_prompt(self.lm, seq.prompt_ids, p.top_logprobs)
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

    def _drop_cancelled(self) -> None:
        rows = self._batch.rows
        gone = {b for b, s in enumerate(rows) if s.handle.cancelled.is_set()}
        if gone:
            for b in sorted(gone):
                self._finish(rows[b], "cancelled")
            self._batch.keep([b for b in range(len(rows)) if b not in gone])

    def _advance(self, seq: _Seq, logits: np.ndarray) -> bool:
        """Choose the next token from `logits` (vocab,); False once the sequence has finished."""
        p = seq.params
        token = seq.pick(logits)
        k = p.top_logprobs
        if k:
            row = log_softmax(logits)
            info = TokenInfo(token, float(row[token]), _top(row, k))
        else:
            info = TokenInfo(token, float(gather_logprobs(logits, np.array(token))))
        seq.ids.append(token)
        seq.tokens.append(info)
        self.generated += 1
        if token in self.lm.eos_ids:
            self._finish(seq, "eos")
            return False
        text = self.lm.tokenizer.decode(seq.ids)
        if p.stop and any(s in text for s in p.stop):
            self._finish(seq, "stop", text=text[: min(text.index(s) for s in p.stop if s in text)])
            return False
        if len(seq.ids) >= p.max_tokens:
            self._finish(seq, "length", text=text)
            return False
        shown = holdback(text, p.stop)
        if len(shown) > len(seq.sent) and shown.startswith(seq.sent):
            seq.emit(Delta(shown[len(seq.sent):], seq.tokens[seq.sent_tokens:]))
            seq.sent, seq.sent_tokens = shown, len(seq.tokens)
        return True

    def _finish(self, seq: _Seq, reason: str, text: str | None = None, error: str | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        self.finished[reason] = self.finished.get(reason, 0) + 1
        if text is None:
            text = self.lm.tokenizer.decode(seq.ids) if seq.ids else ""
        rest = seq.tokens[seq.sent_tokens:]
        if reason not in ("cancelled", "error") and (len(text) > len(seq.sent) or rest):
            if not text.startswith(seq.sent):
                log.warning("the final text does not extend the streamed text (the tokenizer's decode is not prefix-stable here)")
            seq.emit(Delta(text[len(seq.sent):], rest))
        seq.emit(Result(prompt_ids=seq.prompt_ids, ids=list(seq.ids), tokens=list(seq.tokens), text=text, finish_reason=reason,
                        prompt_tokens=seq.prompt_tokens, error=error, seconds=time.perf_counter() - seq.t0))


class SchedulerFull(Exception):
    """Too many requests are waiting."""


class SchedulerClosed(Exception):
    """The scheduler no longer takes requests (shutting down)."""
