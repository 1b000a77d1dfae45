"""Scoring continuations: log-probs of given tokens from as few batched passes as possible.

Separate from the facade because scoring is padding and gathering on top of any forward pass:
written against `ScoringModel`, it serves the ONNX LM and scripted test models alike, and never
imports the facade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from ortrefine.runtime.kvcache import ForwardOutput, KVCache
from ortrefine.runtime.logprobs import gather_logprobs, log_softmax


class ScoringModel(Protocol):
    """The forward passes scoring is built on (an `LM`), and the bundle for its pad id."""

    bundle: Any

    def forward(self, input_ids: np.ndarray, past: KVCache | None = None, attention_mask: np.ndarray | None = None,
                keep_last: int | None = None) -> ForwardOutput: ...

    def prefill(self, ids: Sequence[int], keep_last: int | None = None) -> ForwardOutput: ...

    def extend(self, past: KVCache, suffixes: Sequence[Sequence[int]],
               pad_id: int | None = None) -> tuple[ForwardOutput, np.ndarray]: ...


@dataclass
class ScoreResult:
    """Per-token log-probs of K continuations of one prompt.

    token_logprobs[k]: (len_k,) float32, log p(c_k[t] | prompt, c_k[:t]).
    totals: (K,) float64 sums.
    kv: when asked, the cache over prompt + each continuation, (K, …, P + max_len, …): the
        prefix cache of prompt + c_k[:t] is `kv.rows([k]).prefix(P + t)`.
    logits: when asked, (K, max_len, vocab): next-token logits after each continuation prefix
        (position t holds the distribution of token t + 1).
    """

    token_logprobs: list[np.ndarray]
    totals: np.ndarray
    kv: KVCache | None = None
    logits: np.ndarray | None = field(default=None, repr=False)


def extend(lm: ScoringModel, past: KVCache, suffixes: Sequence[Sequence[int]],
           pad_id: int | None = None) -> tuple[ForwardOutput, np.ndarray]:
    """Batched pass of K right-padded suffixes on top of one shared (or per-row) prefix cache.

    Returns the forward output (logits (K, S_max, vocab) float32) and lengths (K,) int64.
    Right padding is safe here: a pad comes after every real token of its row, and causal
    attention never lets a real token see it.
    """
    lengths = np.array([len(s) for s in suffixes], dtype=np.int64)
    width = int(lengths.max())
    pad = lm.bundle.pad_id if pad_id is None else pad_id
    tokens = np.full((len(suffixes), width), pad, dtype=np.int64)
    mask_new = np.zeros((len(suffixes), width), dtype=np.int64)
    for k, s in enumerate(suffixes):
        tokens[k, : len(s)] = s
        mask_new[k, : len(s)] = 1
    mask = np.concatenate([np.ones((len(suffixes), past.length), dtype=np.int64), mask_new], axis=1)
    return lm.forward(tokens, past.repeat(len(suffixes)), mask), lengths


def score(lm: ScoringModel, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
          return_kv: bool = False, return_logits: bool = False) -> ScoreResult:
    """log p of each continuation given the prompt: one prompt pass, one batched pass.

    A continuation's last token is only ever a target: unless its KV or the logits after it are
    asked for, it is not fed, which saves a token per candidate.
    """
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("score() needs at least one non-empty continuation")
    head = lm.prefill(prompt_ids, keep_last=1)
    full = return_kv or return_logits
    fed = [list(c) if full else list(c[:-1]) for c in continuations]
    K, width = len(continuations), max(len(c) for c in continuations)
    targets = np.zeros((K, width), dtype=np.int64)
    for k, c in enumerate(continuations):
        targets[k, : len(c)] = c
    # token t of each row is predicted by the logits before it: the prompt's last position for t = 0
    first = log_softmax(head.logits[0, -1])[targets[:, 0]]  # one shared row: normalised once
    out = None
    rest = np.zeros((K, 0), np.float32)
    if max(len(f) for f in fed):
        out, _ = lm.extend(head.kv, fed)
        rest = gather_logprobs(out.logits[:, : width - 1], targets[:, 1:])
    per = np.concatenate([first[:, None], rest], axis=1)
    token_lps = [per[k, : len(c)].copy() for k, c in enumerate(continuations)]
    return ScoreResult(
        token_logprobs=token_lps,
        totals=np.array([lp.sum(dtype=np.float64) for lp in token_lps]),
        kv=out.kv if return_kv and out is not None else None,
        logits=out.logits if return_logits and out is not None else None,
    )


def score_many(lm: ScoringModel, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> list[np.ndarray]:
    """Per-token log-probs of several (prompt + continuation) sequences in one left-padded pass.

    Returns, per sequence, (len - prompt_len,) float32 log-probs of its continuation tokens.
    Each sequence's last token is only a target, so it is not fed.
    """
    if len(sequences) != len(prompt_lengths) or not sequences:
        raise ValueError("score_many() needs one prompt length per sequence, and at least one sequence")
    if any(p < 1 or p > len(s) for s, p in zip(sequences, prompt_lengths)):
        raise ValueError("score_many() needs 1 <= prompt length <= sequence length for every sequence")
    out = [np.zeros(0, dtype=np.float32) for _ in sequences]
    scored = [b for b, (s, p) in enumerate(zip(sequences, prompt_lengths)) if p < len(s)]  # others: nothing to score
    if not scored:
        return out
    fed = [list(sequences[b][:-1]) for b in scored]
    width = max(len(s) for s in fed)
    ids = np.full((len(fed), width), lm.bundle.pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, s in enumerate(fed):
        ids[row, width - len(s):] = s
        mask[row, width - len(s):] = 1
    logits = lm.forward(ids, attention_mask=mask).logits
    for row, b in enumerate(scored):
        s, p = sequences[b], prompt_lengths[b]
        off = width - len(fed[row])
        out[b] = gather_logprobs(logits[row, off + p - 1 : off + len(fed[row])], np.asarray(s[p:], dtype=np.int64))
    return out
