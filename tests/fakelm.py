"""A scripted LM for algorithm tests: logits from a Python function of the context, no ONNX.

The KV cache stores the token ids themselves (one float per position), so `forward` can
rebuild every row's real context from cache + mask + new tokens exactly as the ONNX graph
would see it: the refiner's KV slicing, row selection and mid-padding are all exercised.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np

from ortrefine.runtime.session import LM, ForwardOutput, KVCache

CHARS = "_abcdefgh"  # id 0 is eos ("_"), ids 1.. are letters


class CharTokenizer:
    """One character per token; id 0 (eos) decodes to nothing."""

    vocab_size = len(CHARS)

    def encode(self, text: str, chat: bool = False, system: str | None = None) -> list[int]:
        return self.encode_plain(text)

    def encode_plain(self, text: str) -> list[int]:
        return [CHARS.index(c) for c in text if c in CHARS[1:]]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(CHARS[int(i)] for i in ids if int(i) != 0 or not skip_special_tokens)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [CHARS[int(i)] for i in ids]


class FakeLM(LM):
    """`next_logprobs(context ids) -> (vocab,) log-probs` defines the model."""

    def __init__(self, next_logprobs: Callable[[list[int]], np.ndarray], context_length: int = 64) -> None:
        self.next_logprobs = next_logprobs
        self.bundle = SimpleNamespace(pad_id=0, eos_ids=(0,), context_length=context_length, path="fake", manifest={})
        self.tokenizer = CharTokenizer()
        self.provider = "fake"
        self.forward_tokens = 0
        self.calls = 0

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return (0,)

    @property
    def vocab_size(self) -> int:
        return len(CHARS)

    def empty_kv(self, batch: int) -> KVCache:
        return KVCache([np.zeros((batch, 1, 0, 1), dtype=np.float32)])

    def forward(self, input_ids, past=None, attention_mask=None, keep_last=None) -> ForwardOutput:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        B, S = input_ids.shape
        past = past if past is not None else self.empty_kv(B)
        if past.batch != B:
            past = past.repeat(B)
        T = past.length + S
        mask = np.ones((B, T), dtype=np.int64) if attention_mask is None else np.asarray(attention_mask)
        cache = np.concatenate([past.arrays[0][:, 0, :, 0], input_ids.astype(np.float32)], axis=1)  # (B, T)
        logits = np.zeros((B, S, self.vocab_size), dtype=np.float32)
        for b in range(B):
            for s in range(S):
                t = past.length + s
                ctx = [int(cache[b, j]) for j in range(t + 1) if mask[b, j]]
                logits[b, s] = self.next_logprobs(ctx)
        self.forward_tokens += B * S
        self.calls += 1
        if keep_last is not None:
            logits = logits[:, -keep_last:]
        return ForwardOutput(logits=logits, kv=KVCache([cache[:, None, :, None].astype(np.float32)]))


def table_lm(table: dict[str, dict[str, float]], default: float = 1e-3) -> FakeLM:
    """Bigram model from {previous char: {next char: prob}}; unlisted tokens get `default`."""

    def next_logprobs(ctx: list[int]) -> np.ndarray:
        row = table.get(CHARS[ctx[-1]], {})
        p = np.full(len(CHARS), default, dtype=np.float64)
        for ch, prob in row.items():
            p[CHARS.index(ch)] = prob
        return np.log(p / p.sum()).astype(np.float32)

    return FakeLM(next_logprobs)


def make_batch_dependent(lm: FakeLM, scale: float = 0.05) -> FakeLM:
    """Make `lm` behave like a dynamic-int8 bundle: every logit moves with the batch size, and its
    manifest says so (`batch_invariant: false`)."""
    real_forward = lm.forward

    def forward(input_ids, past=None, attention_mask=None, keep_last=None):
        out = real_forward(input_ids, past, attention_mask, keep_last)
        out.logits[:] += scale * (np.asarray(input_ids).shape[0] - 1) * np.arange(out.logits.shape[-1])
        return out

    lm.forward = forward
    lm.bundle.manifest = {"batch_invariant": False}
    return lm
