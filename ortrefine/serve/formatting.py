"""OpenAI's response shapes: the envelope every response shares, and log-probs per API flavour.

Completions and chat report the same tokens in different layouts; both are built here from the
scheduler's TokenInfo so the two endpoints cannot drift apart in how they spell a token.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from ortrefine.serve.models import ServedModel
from ortrefine.serve.protocol import TokenInfo

UNLIKELY = -9999.0  # what OpenAI reports for a log-prob of -inf (JSON has no infinity)


def json_safe(x: Any) -> Any:
    """Non-finite floats become None, so every response is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def finite_logprob(x: float | None) -> float | None:
    return None if x is None else (x if math.isfinite(x) else UNLIKELY)


def response_meta(prefix: str, model: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(reason: str) -> str:
    """OpenAI knows only length and stop: eos counts as a stop."""
    return "length" if reason == "length" else "stop"


def token_text(m: ServedModel, token: int) -> tuple[str, str]:
    """(the token as shown, special tokens spelled out; its share of the text, special tokens empty)."""
    tok = m.lm.tokenizer
    return tok.decode([token], skip_special_tokens=False), tok.decode([token])


def completion_logprobs(m: ServedModel, tokens: list[TokenInfo], k: int, offset: int) -> dict[str, Any]:
    shown, offsets, at = [], [], offset
    for t in tokens:
        s, plain = token_text(m, t.id)
        shown.append(s)
        offsets.append(at)
        at += len(plain)
    tops = None
    if k:
        tops = [None if t.logprob is None else {token_text(m, i)[0]: finite_logprob(lp) for i, lp in t.top} for t in tokens]
    return {"tokens": shown, "token_logprobs": [finite_logprob(t.logprob) for t in tokens], "top_logprobs": tops,
            "text_offset": offsets}


def chat_logprobs(m: ServedModel, tokens: list[TokenInfo]) -> list[dict[str, Any]]:
    out = []
    for t in tokens:
        s = token_text(m, t.id)[0]
        top = [{"token": (a := token_text(m, i)[0]), "logprob": finite_logprob(lp), "bytes": list(a.encode())} for i, lp in t.top]
        out.append({"token": s, "logprob": finite_logprob(t.logprob), "bytes": list(s.encode()), "top_logprobs": top})
    return out
