"""Decoding strategies over an LM: greedy, sampling, beam search (a numpy port of transformers').

Beam search follows transformers 4.57's vectorised `_beam_search` step for step (top 2·beams
continuations, finished hypotheses scored with the length penalty, the same early-stop
heuristic), so its outputs can be checked token for token against `model.generate`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from ortrefine.errors import ConfigError, PromptError
from ortrefine.registry import Registry
from ortrefine.runtime.logprobs import gather_logprobs, log_softmax
from ortrefine.runtime.tokenizer import check_text

if TYPE_CHECKING:
    from ortrefine.runtime.kvcache import ForwardOutput, KVCache
    from ortrefine.runtime.scoring import ScoreResult


class Stepper(Protocol):
    """What `steps` hands back (steppers.py): decoding only ever feeds one token at a time."""

    def step(self, token: int) -> np.ndarray: ...


class DecodingModel(Protocol):
    """The LM as the strategies use it: named here so that decoding never imports the LM facade
    (the facade imports decoding to implement `LM.generate`)."""

    tokenizer: Any
    forward_tokens: int

    @property
    def eos_ids(self) -> tuple[int, ...]: ...

    def encode_prompt(self, prompt: str | Sequence[int], chat: bool = False, max_new_tokens: int = 0) -> list[int]: ...

    def forward(self, input_ids: np.ndarray, past: KVCache | None = None) -> ForwardOutput: ...

    def prefill(self, ids: Sequence[int], keep_last: int | None = None) -> ForwardOutput: ...

    def steps(self, kv: KVCache, new_tokens: int) -> Stepper: ...

    def score(self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> ScoreResult: ...


# entries: (lm, prompt_ids, cfg, head=None) -> Decoded; head as in `_stepwise` (passed only when given)
STRATEGIES: Registry[Callable[..., "Decoded"]] = Registry("decoding strategy")
MAX_BEAMS = 256  # beam search holds one KV cache and one row of logits per beam
EARLY_STOPPING = {"false": False, "true": True, "never": "never"}  # the CLI's spelling → GenerationConfig's


def _need_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")


def _need_finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


@dataclass
class GenerationConfig:
    """How to decode.

    strategy: greedy | sample | beam.
    max_new_tokens: hard cap on generated tokens (> 0).
    temperature, top_k, top_p, seed: sampling only (applied in that order, as transformers does);
        top_k 0 and top_p 1.0 disable them; the seed makes sampling repeatable.
    num_beams, length_penalty, early_stopping: beam only, with transformers' meaning
        (early_stopping: True, False or "never").
    stop: strings that end the output; the text is cut before the first one.
    """

    strategy: str = "greedy"
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.strategy = str(self.strategy).lower()
        STRATEGIES.get(self.strategy)
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        for name in ("max_new_tokens", "top_k", "num_beams"):
            _need_int(name, getattr(self, name))
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        for name in ("temperature", "top_p", "length_penalty"):
            _need_finite(name, getattr(self, name))
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.num_beams <= MAX_BEAMS:
            raise ConfigError(f"num_beams must be in [1, {MAX_BEAMS}] (each beam holds a KV cache), got {self.num_beams}")
        if self.seed is not None:
            _need_int("seed", self.seed)
            if self.seed < 0:
                raise ConfigError(f"seed must be a whole number >= 0, got {self.seed}")
        if not (self.early_stopping is True or self.early_stopping is False or self.early_stopping == "never"):
            raise ConfigError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"stop strings must be non-empty text, got {s!r} (an empty one would end every output at once)")
            try:
                check_text(s, "a stop string")
            except PromptError as e:
                raise ConfigError(str(e)) from None


@dataclass
class Decoded:
    """What a strategy returns: generated ids (eos included when it ended the output)."""

    ids: list[int]
    finish_reason: str  # "eos" | "length" | "stop"
    logprobs: list[float] | None = None  # log p of each id, when the loop already had the logits


@dataclass
class GenerationResult:
    """A decoded output.

    prompt_ids: the encoded prompt. ids: generated tokens (the eos that ended it included).
    text: the continuation alone, special tokens skipped, cut at a stop string.
    token_logprobs: log p of each generated token under the model (unprocessed distribution).
    logprob: their sum. finish_reason: eos | length | stop. forward_tokens: tokens the graph
    processed. seconds: wall time.
    """

    prompt_ids: list[int]
    ids: list[int]
    text: str
    token_logprobs: list[float]
    finish_reason: str
    forward_tokens: int
    seconds: float
    strategy: str = "greedy"
    extra: dict = field(default_factory=dict)

    @property
    def logprob(self) -> float:
        return float(np.sum(self.token_logprobs, dtype=np.float64))

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "ids": self.ids,
            "prompt_ids": self.prompt_ids,
            "logprob": self.logprob,
            "token_logprobs": [float(x) for x in self.token_logprobs],
            "finish_reason": self.finish_reason,
            "strategy": self.strategy,
            "forward_tokens": self.forward_tokens,
            "seconds": self.seconds,
        }


def _stop_hit(lm: DecodingModel, ids: list[int], stop: tuple[str, ...]) -> bool:
    if not stop:
        return False
    text = lm.tokenizer.decode(ids)
    return any(s in text for s in stop)


def _cut_at_stop(lm: DecodingModel, ids: list[int], stop: tuple[str, ...]) -> tuple[list[int], str, bool]:
    """Shortest id prefix whose text contains a stop string; the text is cut before it."""
    text = lm.tokenizer.decode(ids)
    hits = [text.index(s) for s in stop if s in text]
    if not hits:
        return ids, text, False
    for n in range(1, len(ids) + 1):
        if any(s in lm.tokenizer.decode(ids[:n]) for s in stop):
            return ids[:n], text[: min(hits)], True
    return ids, text[: min(hits)], True


def _sample_logits(logits: np.ndarray, cfg: GenerationConfig, rng: np.random.Generator) -> int:
    """temperature → top-k → top-p → draw (transformers' warper order)."""
    with np.errstate(over="ignore"):
        x = logits.astype(np.float64) / cfg.temperature
        if not np.isfinite(x).all():  # a tiny temperature overflows: shift first (the same distribution)
            x = (logits.astype(np.float64) - float(np.max(logits))) / cfg.temperature
    if cfg.top_k and cfg.top_k < x.size:
        kth = np.partition(x, -cfg.top_k)[-cfg.top_k]
        x = np.where(x < kth, -np.inf, x)
    if cfg.top_p < 1.0:
        order = np.argsort(x)  # ascending
        p = np.exp(x[order] - x[order][-1])
        cum = np.cumsum(p / p.sum())
        drop = cum <= 1 - cfg.top_p
        drop[-1] = False
        x[order[drop]] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    return int(min(np.searchsorted(np.cumsum(p), rng.random(), side="right"), p.size - 1))


def _stepwise(lm: DecodingModel, prompt_ids: list[int], cfg: GenerationConfig, pick: Callable[[np.ndarray], int],
              head: ForwardOutput | None = None) -> Decoded:
    """The one decode loop: last logits → pick a token → stop checks → one-token forward.
    head: `lm.prefill(prompt_ids, keep_last=1)` where the caller has it (it is read, not changed)."""
    out = head if head is not None else lm.prefill(prompt_ids, keep_last=1)
    steps = lm.steps(out.kv, cfg.max_new_tokens)
    logits = out.logits[0, -1]
    ids: list[int] = []
    lps: list[float] = []
    for step in range(cfg.max_new_tokens):
        token = pick(logits)  # choose from the newest position's logits
        ids.append(token)
        lps.append(float(gather_logprobs(logits, np.array(token))))  # unprocessed distribution
        if token in lm.eos_ids:
            return Decoded(ids, "eos", lps)
        if _stop_hit(lm, ids, cfg.stop):
            return Decoded(ids, "stop", lps)
        if step + 1 < cfg.max_new_tokens:  # no forward after the last token
            logits = steps.step(token)
    return Decoded(ids, "length", lps)


def greedy(lm: DecodingModel, prompt_ids: list[int], cfg: GenerationConfig, head: ForwardOutput | None = None) -> Decoded:
    return _stepwise(lm, prompt_ids, cfg, lambda logits: int(np.argmax(logits)), head)


def sample(lm: DecodingModel, prompt_ids: list[int], cfg: GenerationConfig, head: ForwardOutput | None = None) -> Decoded:
    rng = np.random.default_rng(cfg.seed)
    return _stepwise(lm, prompt_ids, cfg, lambda logits: _sample_logits(logits, cfg, rng), head)


def _topk_desc(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest, largest first; ties keep the lower index first."""
    part = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
    return part[np.lexsort((part, -x[part]))]


def _length_norm(n: int, length_penalty: float) -> np.float32:
    """n ** length_penalty as transformers divides by it, kept finite and non-zero: a huge
    |length_penalty| overflows Python's float power (OverflowError) or reaches 0 (a division by 0)."""
    with np.errstate(over="ignore", under="ignore"):
        d = np.float64(n) ** np.float64(length_penalty)
    return np.float32(min(max(float(d), 1e-30), 1e30))


def _beam_output(done: np.ndarray, done_seqs: np.ndarray, done_len: np.ndarray, best_running: np.ndarray,
                 P: int) -> list[int]:
    """The generated ids of the best finished hypothesis, never an empty output when none finished.

    done: (beams,) bool, best first; done_seqs: (beams, max_length) int64 prompt + output ids;
    done_len: (beams,) int64 lengths; best_running: the best running beam's generated ids; P: prompt length.
    """
    if done[0]:
        return [int(t) for t in done_seqs[0, P : done_len[0]]]
    if done.any():  # a length penalty so negative that finished scores fell below the empty slots' -1e9
        k = int(np.argmax(done))
        return [int(t) for t in done_seqs[k, P : done_len[k]]]
    return [int(t) for t in best_running]  # nothing finished above the empty slots: the best running beam


def beam(lm: DecodingModel, prompt_ids: list[int], cfg: GenerationConfig, head: ForwardOutput | None = None) -> Decoded:
    """Beam search for one prompt, step for step as transformers 4.57 `_beam_search`; head as in
    `_stepwise`."""
    nb, P = cfg.num_beams, len(prompt_ids)
    max_length = P + cfg.max_new_tokens
    eos = np.array(lm.eos_ids, dtype=np.int64)
    keep = max(2, 1 + len(eos)) * nb
    top_mask = np.arange(keep) < nb
    neg = np.float32(-1.0e9)
    running = np.full((nb, max_length), eos[0], dtype=np.int64)
    running[:, :P] = prompt_ids
    done_seqs, done_len = running.copy(), np.full(nb, P, dtype=np.int64)
    run_scores = np.zeros(nb, dtype=np.float32)
    run_scores[1:] = neg
    done_scores = np.full(nb, neg, dtype=np.float32)
    done = np.zeros(nb, dtype=bool)
    unsatisfied = True
    out = head if head is not None else lm.prefill(prompt_ids, keep_last=1)
    logits, kv = np.repeat(out.logits[:, -1], nb, axis=0), out.kv.repeat(nb)
    cur = P
    while True:
        # 1. accumulate: every beam × every token, top `keep` of them
        scores = (log_softmax(logits) + run_scores[:, None]).reshape(-1)
        flat = _topk_desc(scores, keep)
        top_lp = scores[flat].astype(np.float32)
        origin, tokens = flat // logits.shape[1], flat % logits.shape[1]
        cand = running[origin].copy()
        cand[:, cur] = tokens
        hits = np.isin(tokens, eos) | (cur + 1 >= max_length)
        # 2. next running beams: best `nb` candidates that did not just finish
        run_lp = top_lp + hits.astype(np.float32) * neg
        nxt = _topk_desc(run_lp, nb)
        running, run_scores, beam_origin = cand[nxt], run_lp[nxt], origin[nxt]
        # 3. finished hypotheses: length-penalised, merged with the older ones, best `nb` kept
        fin_lp = top_lp / _length_norm(cur + 1 - P, cfg.length_penalty)
        if done.all() and cfg.early_stopping is True:
            fin_lp = fin_lp + neg
        if not unsatisfied:
            fin_lp = fin_lp + neg
        just = hits & top_mask
        fin_lp = (fin_lp + (~just).astype(np.float32) * neg).astype(np.float32)
        m_scores = np.concatenate([done_scores, fin_lp])
        m_idx = _topk_desc(m_scores, nb)
        m_seqs = np.concatenate([done_seqs, cand])
        m_len = np.concatenate([done_len, np.full(keep, cur + 1)])
        m_done = np.concatenate([done, just])
        done_seqs, done_scores, done_len, done = m_seqs[m_idx], m_scores[m_idx], m_len[m_idx], m_done[m_idx]
        cur += 1
        # 4. stop when no running beam can beat the worst finished one, or nothing can continue
        best_len = (max_length - P) if (cfg.early_stopping == "never" and cfg.length_penalty > 0) else (cur - P)
        best_running = run_scores[0] / _length_norm(best_len, cfg.length_penalty)
        worst_done = np.where(done, done_scores.min(), neg)
        unsatisfied = unsatisfied and bool(np.any(best_running > worst_done))
        if not unsatisfied or (done.all() and cfg.early_stopping is True) or hits.all():
            break
        step = lm.forward(running[:, cur - 1 : cur], kv.rows(beam_origin))
        logits, kv = step.logits[:, -1], step.kv
    ids = _beam_output(done, done_seqs, done_len, running[0, P:cur], P)
    reason = "eos" if ids and ids[-1] in lm.eos_ids else "length"
    return Decoded(ids, reason)


STRATEGIES.register("greedy", greedy)
STRATEGIES.register("sample", sample)
STRATEGIES.register("beam", beam)


def generate(lm: DecodingModel, prompt: str | Sequence[int], cfg: GenerationConfig, chat: bool = False,
             head: ForwardOutput | None = None) -> GenerationResult:
    """Encode, decode with the configured strategy, score the result, cut at stop strings.

    head: the prompt's `lm.prefill(ids, keep_last=1)` where the caller has run it and goes on
    from it too (the refiner starts its search from the same pass); `prompt` must then be those
    very ids.
    """
    t0 = time.perf_counter()
    prompt_ids = lm.encode_prompt(prompt, chat=chat, max_new_tokens=cfg.max_new_tokens)
    if head is not None and head.logits.shape[1] != 1:
        raise ValueError("head: a prefill with keep_last=1")
    before = lm.forward_tokens
    strategy = STRATEGIES.get(cfg.strategy)
    decoded = strategy(lm, prompt_ids, cfg) if head is None else strategy(lm, prompt_ids, cfg, head=head)
    ids, text, cut = _cut_at_stop(lm, decoded.ids, cfg.stop)
    reason = "stop" if cut else decoded.finish_reason
    if decoded.logprobs is not None:
        token_lps = decoded.logprobs[: len(ids)]
    else:  # beam search keeps no per-token log-probs: one scoring pass
        token_lps = lm.score(prompt_ids, [ids]).token_logprobs[0].tolist() if ids else []
    return GenerationResult(
        prompt_ids=prompt_ids,
        ids=ids,
        text=text,
        token_logprobs=token_lps,
        finish_reason=reason,
        forward_tokens=lm.forward_tokens - before,
        seconds=time.perf_counter() - t0,
        strategy=cfg.strategy,
    )
