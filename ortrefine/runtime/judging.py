"""Judging a text by another model: log p(text | context) under the judge's own tokenizer.

One path for `ortrefine eval`, `ortrefine compare` and the `judge` objective term. The judge sees
text, never the refined model's ids: a judge of another family has another vocabulary, and even a
judge with the same tokenizer should score what a reader sees (the decoded text), not a
tokenization no one would produce from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

CHAT_SEPARATOR = "\n"  # between a question and its answer in the judge's plain-text context


@dataclass
class JudgeScore:
    """The judge's view of one text.

    total: Σ log p of the text's tokens (0.0 for an empty text); mean: total / tokens (None for
    an empty text); tokens: how many judge tokens the text is; joint: whether the tokens come
    from encoding context + text together (else the text was encoded on its own, because the
    joint encoding did not start with the context's tokens).
    """

    total: float
    mean: float | None
    tokens: int
    joint: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_context(prompt: str, chat: bool) -> str:
    """What the judge conditions on. A continuation follows its prompt directly; an answer to a
    chat or keyword prompt starts on the next line (a base judge has no chat template, and two
    judges with different templates would not be comparable)."""
    return prompt + CHAT_SEPARATOR if chat else prompt


def split_ids(tokenizer: Any, context: str, text: str) -> tuple[list[int], list[int], bool]:
    """(context ids, text ids, joint). Encoding context + text in one call gives the tokens the
    judge would read; when that encoding does not begin with the context's own (a merge across
    the boundary), the text is encoded alone after the context."""
    ctx = tokenizer.encode(context)
    full = tokenizer.encode(context + text)
    if len(full) > len(ctx) and full[: len(ctx)] == ctx:
        return ctx, full[len(ctx):], True
    return ctx, tokenizer.encode_plain(text), False


def judge_texts(judge: Any, context: str, texts: Sequence[str], batch: int = 4,
                ended: Sequence[bool] | None = None) -> list[JudgeScore]:
    """Score every text as a continuation of `context` under `judge` (an ortrefine LM): one prompt
    pass and batched continuation passes through `LM.score`. Identical texts are scored once;
    `batch` bounds the rows per pass (a 262k vocabulary makes logits of 1 MB per token).

    ended: for an objective, which texts are whole answers: the judge also reads its own
    end-of-text token after those (an objective must see that an output stopped, and an empty
    one then costs log p(eos)), and a text of blanks is read as it is rather than skipped (or an
    output of spaces would score better than any sentence). By default texts are read as
    `ortrefine eval` reports them: blanks score nothing."""
    objective = ended is not None
    flags = list(ended) if objective else [False] * len(texts)
    eos = list(judge.eos_ids[:1]) if any(flags) else []
    out: dict[tuple[str, bool], JudgeScore] = {}
    groups: dict[tuple[int, ...], list[tuple[tuple[str, bool], list[int], bool]]] = {}
    for key in dict.fromkeys(zip(texts, flags)):
        text, end = key
        if text.strip() or (objective and text):
            ctx, ids, joint = split_ids(judge.tokenizer, context, text)
        else:
            ctx, ids, joint = judge.tokenizer.encode(context), [], True
        ids = ids + eos if end else ids
        ids = ids[:max(judge.bundle.context_length - len(ctx), 0)]
        if not ids:
            out[key] = JudgeScore(0.0, None, 0, joint)
            continue
        groups.setdefault(tuple(ctx), []).append((key, ids, joint))
    for ctx, rows in groups.items():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            res = judge.score(list(ctx), [ids for _, ids, _ in chunk])
            for (key, ids, joint), total in zip(chunk, res.totals):
                out[key] = JudgeScore(float(total), float(total) / len(ids), len(ids), joint)
    return [out[k] for k in zip(texts, flags)]
