"""Keyword-guided decoding: the next token is the argmax of logits nudged toward missing concepts.

A 135 M model asked for "one sentence that uses all of these words" mostly drops two or three of
them, and refining such an output one token at a time cannot add a missing concept: every
substitution is followed by a suffix decoded greedily, which drops them again. So the keyword
task decodes — the initial output and every regenerated suffix — with a guide:

- the tokens that start a missing concept (any inflection, `runtime.keywords.inflections`), or
  continue one begun by the last word, get `bias` added to their logits (never the output's
  first token: a sentence opening on a concept is rarely how the model starts);
- while a concept is missing, the tokens that would end the sentence (and eos) lose `end_penalty`,
  and once all are in they gain `end_bonus`;
- no token 3-gram is repeated (transformers' no_repeat_ngram_size);
- the output ends at its first sentence end (`one_sentence`), as the task asks.

The guide only chooses tokens. Every log-prob and J is still the model's own, unprocessed
distribution, so the refiner's exactness is untouched: J decides between guided candidates.
This is lexically constrained decoding in its cheapest form (a logit bias, as in Pascual et al.
2021's "plug-and-play" keyword guidance), with the constraint left soft so fluency can win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.lexicon import CLOSERS, FUNCTION_WORDS, SENTENCE_ENDS
from ortrefine.runtime.keywords import covered, surface_forms
from ortrefine.runtime.tokenizer import cached_on

_MIN_PIECE = 4  # letters a biased word-start piece needs (shorter forms must be whole)


@dataclass(frozen=True)
class GuideConfig:
    """How strongly to steer. bias / end_penalty / end_bonus are in logits (nats); 0 turns each
    off. end_bonus: added to the sentence-ending tokens once every concept is in (a model that
    has used them all tends to go on listing). no_repeat_ngram: 0 turns it off. one_sentence:
    stop at the first sentence end."""

    bias: float = 3.0
    end_penalty: float = 3.0
    end_bonus: float = 0.0
    no_repeat_ngram: int = 3
    one_sentence: bool = True

    def __post_init__(self) -> None:
        for name in ("bias", "end_penalty", "end_bonus"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) or v < 0:
                raise ConfigError(f"guide {name.replace('_', '-')} must be a finite number >= 0, got {v!r}")
        n = self.no_repeat_ngram
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"guide no-repeat-ngram must be a whole number >= 0, got {n!r}")
        if not isinstance(self.one_sentence, bool):
            raise ConfigError(f"guide one-sentence must be true or false, got {self.one_sentence!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "GuideConfig":
        """From JSON-like settings; an unknown name is a one-line error listing the known ones."""
        known = ("bias", "end_penalty", "end_bonus", "no_repeat_ngram", "one_sentence")
        bad = sorted(set(d) - set(known))
        if bad:
            raise ConfigError(f"unknown guide setting(s) {', '.join(map(repr, bad))}; known: {', '.join(known)}")
        return cls(**d)


@dataclass(frozen=True)
class _Vocab:
    """The token strings of a tokenizer, indexed the ways the guide asks."""

    strings: tuple[str, ...]
    by_string: dict[str, tuple[int, ...]]
    enders: np.ndarray  # ids whose text ends a sentence (.!? or a newline)


def _vocab(tokenizer: Any, eos_ids: tuple[int, ...]) -> _Vocab:
    """Built once per tokenizer (decoding 49 k token strings takes a while) and kept on it."""
    return cached_on(tokenizer, ("guide_vocab", eos_ids), lambda: _build_vocab(tokenizer, eos_ids))


def _build_vocab(tokenizer: Any, eos_ids: tuple[int, ...]) -> _Vocab:
    strings = tuple(tokenizer.decode([i]) for i in range(tokenizer.vocab_size))
    by: dict[str, list[int]] = {}
    for i, s in enumerate(strings):
        if s:
            by.setdefault(s, []).append(i)
    enders = [i for i, s in enumerate(strings) if _ends_sentence(s)] + list(eos_ids)
    return _Vocab(strings, {s: tuple(v) for s, v in by.items()}, np.array(sorted(set(enders)), dtype=np.int64))


def _ends_sentence(token_text: str) -> bool:
    """A newline, or .!? possibly followed by closing quotes or brackets ('."', '!)')."""
    return "\n" in token_text or token_text.rstrip().rstrip(CLOSERS).endswith(tuple(SENTENCE_ENDS))


class Guide:
    """Chooses tokens for the keyword task (see the module docstring). One per prompt: it holds
    the keywords' token tables."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], keywords: Sequence[str], cfg: GuideConfig | None = None) -> None:
        self.cfg = cfg or GuideConfig()
        self.tokenizer = tokenizer
        self.eos = frozenset(int(e) for e in eos_ids)
        self.keywords = tuple(dict.fromkeys(k.strip().lower() for k in keywords if k.strip()))
        self.vocab = _vocab(tokenizer, tuple(sorted(self.eos)))
        self.forms = {k: surface_forms(k) for k in self.keywords}
        self.starts = {k: self._start_ids(f) for k, f in self.forms.items()}

    def _start_ids(self, forms: Sequence[str]) -> np.ndarray:
        """Tokens that are " form" or a word-start piece of it of at least 4 letters (shorter
        pieces start too many other words: " for" is not "fork", " the" is not "theater")."""
        ids: set[int] = set()
        for form in forms:
            for n in range(min(_MIN_PIECE, len(form)), len(form) + 1):
                ids.update(self.vocab.by_string.get(" " + form[:n], ()))
        return np.array(sorted(ids), dtype=np.int64)

    def missing(self, text: str) -> list[str]:
        return [k for k, c in zip(self.keywords, covered(text, self.keywords)) if not c]

    def adjusted(self, ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        """The logits the guide chooses from after `ids` (the output so far)."""
        cfg = self.cfg
        x = np.array(logits, dtype=np.float32, copy=True)
        text = self.tokenizer.decode(list(ids))
        missing = self.missing(text)
        if ids and cfg.bias:
            for k in missing:
                x[self.starts[k]] += cfg.bias
                x[self._continuations(text, k)] += cfg.bias
        if missing and cfg.end_penalty:
            x[self.vocab.enders] -= cfg.end_penalty
        elif not missing and ids and cfg.end_bonus:
            x[self.vocab.enders] += cfg.end_bonus
        n = cfg.no_repeat_ngram
        if n and len(ids) >= n - 1:
            x[self._banned(ids, n)] = -np.inf
        return x

    def pick(self, ids: Sequence[int], logits: np.ndarray) -> int:
        return int(np.argmax(self.adjusted(ids, logits)))

    def _continuations(self, text: str, keyword: str) -> list[int]:
        """Tokens that carry on a form of `keyword` the last word has begun (" water" → "melon")."""
        if not text or text[-1].isspace() or not text.split():
            return []
        last = text.rsplit(None, 1)[-1].lower()
        if len(last) < 3 or (len(last) < _MIN_PIECE and last in FUNCTION_WORDS):
            return []  # "a", "be", "the": whole words, not a concept begun ("a" + "pple")
        out: list[int] = []
        for form in self.forms[keyword]:
            if form.startswith(last) and len(form) > len(last):
                rest = form[len(last):]
                for n in range(1, len(rest) + 1):
                    out.extend(self.vocab.by_string.get(rest[:n], ()))
        return out

    @staticmethod
    def _banned(ids: Sequence[int], n: int) -> list[int]:
        """Tokens that would repeat an n-gram of `ids` (transformers' no_repeat_ngram rule)."""
        head = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
        return [int(ids[j + n - 1]) for j in range(len(ids) - n + 1) if tuple(ids[j:j + n - 1]) == head]

    def ends(self, ids: Sequence[int]) -> bool:
        """Whether the output is complete: eos, or (one_sentence) its last token ends a sentence
        and the output has at least three words."""
        if not ids:
            return False
        if ids[-1] in self.eos:
            return True
        if not self.cfg.one_sentence or not _ends_sentence(self.vocab.strings[ids[-1]]):
            return False
        return len(self.tokenizer.decode(list(ids)).split()) >= 3


def guided_decode(lm: Any, prompt_ids: Sequence[int], guide: Guide, max_new_tokens: int, head: Any = None) -> tuple[list[int], str]:
    """Y under the guide, and why it ended (eos | stop | length): the keyword task's initial output.
    head: `lm.prefill(prompt_ids, keep_last=1)` where the caller has it (read, not changed)."""
    out = head if head is not None else lm.prefill(list(prompt_ids), keep_last=1)
    steps = lm.steps(out.kv, max_new_tokens)
    logits = out.logits[0, -1]
    ids: list[int] = []
    for step in range(max_new_tokens):
        ids.append(guide.pick(ids, logits))
        if guide.ends(ids):
            return ids, "eos" if ids[-1] in guide.eos else "stop"
        if step + 1 < max_new_tokens:
            logits = steps.step(ids[-1])
    return ids, "length"
