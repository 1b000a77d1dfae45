"""The log-probs reported per token, for generated tokens and for a scored prompt alike.

Both go through the same top-k ordering so that a token's alternatives read the same whether it
was echoed from the prompt or generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ortrefine.runtime.logprobs import gather_logprobs, log_softmax
from ortrefine.serve.protocol import TokenInfo

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM

SCORE_CHUNK = 256  # prompt positions per scoring pass: bounds the (positions, vocab) float32 logits held at once


def top_alternatives(logprobs_row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """logprobs_row: (vocab,) → the k best (id, log-prob), best first, ties by lower id."""
    if k <= 0:
        return []
    part = np.argpartition(-logprobs_row, k - 1)[:k] if k < logprobs_row.size else np.arange(logprobs_row.size)
    order = part[np.lexsort((part, -logprobs_row[part]))]
    return [(int(i), float(logprobs_row[i])) for i in order]


def token_info(logits: np.ndarray, token: int, k: int) -> TokenInfo:
    """The chosen token of one position (logits: (vocab,)). The whole log-softmax is
    materialised only when alternatives are asked for; otherwise the one log-prob is gathered."""
    if k:
        row = log_softmax(logits)
        return TokenInfo(token, float(row[token]), top_alternatives(row, k))
    return TokenInfo(token, float(gather_logprobs(logits, np.array(token))))


def score_prompt(lm: "LM", ids: list[int], k: int, chunk: int | None = None) -> list[TokenInfo]:
    """Each prompt token with log p(token | the tokens before it) (None for the first) and the k
    likeliest alternatives. In passes of `chunk` (default SCORE_CHUNK) positions on the growing
    cache, so that a long prompt never materialises (P, vocab) logits at once. A pass of its own,
    apart from the generation's prefill, which stays the one `generate` makes."""
    chunk = SCORE_CHUNK if chunk is None else chunk
    out = [TokenInfo(ids[0], None, [])]
    fed, kv = ids[:-1], None
    for start in range(0, len(fed), chunk):
        piece = fed[start : start + chunk]
        step = lm.forward(np.asarray([piece], dtype=np.int64), kv)
        kv = step.kv
        targets = np.asarray(ids[start + 1 : start + 1 + len(piece)], dtype=np.int64)
        logits = step.logits[0]  # (len(piece), vocab): row t predicts targets[t]
        lps = gather_logprobs(logits, targets)
        tops = [top_alternatives(row, k) for row in log_softmax(logits)] if k else [[] for _ in targets]
        out += [TokenInfo(int(t), float(lp), top) for t, lp, top in zip(targets, lps, tops)]
    return out
