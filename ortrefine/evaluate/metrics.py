"""Text statistics that need no model: degeneration flags, keyword coverage, chrF.

They exist because a language model's log-prob — the refiner's own or a judge's — rewards loops,
echoes and comma lists of keywords (FACTS: the judge scores them high), so every judged output
is read together with these flags. Pure Python plus simplemma (its English data ships inside the
wheel), so an edge box can run them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

from ortrefine.degeneration import (  # noqa: F401  (re-exported: the eval's public names; comments_on_text is the meta_comment flag)
    DEGENERATE_FLAGS, comments_on_text, degeneration_flags, distinct_n, echoes_prompt, longest_char_run, max_ngram_count, ngrams,
    text_stats,
)
from ortrefine.lexicon import (  # noqa: F401  (re-exported: the eval's public names)
    FUNCTION_WORDS, VERB_CUES, _undone_inflections, covered_keywords, is_keyword_list, is_verb_form, keyword_forms, lemma,
    word_forms, words,
)

# cut_off is reported but not counted as degenerate: at 32 new tokens nearly every continuation
# stops at the cap mid-sentence
ALL_FLAGS = DEGENERATE_FLAGS + ("cut_off",)

_SENTENCE_END = tuple(".!?…\"'”’)]")


# -- keywords -----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
# -- chrF (sacreBLEU 2.x definition) ------------------------------------------------------------
def _char_ngrams(text: str, n: int) -> Counter:
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def _chrf_stats(hyp: str, ref: str, order: int) -> list[tuple[int, int, int]]:
    """(hypothesis n-grams, reference n-grams, matches) per order; whitespace removed first."""
    h, r = "".join(hyp.split()), "".join(ref.split())
    stats = []
    for n in range(1, order + 1):
        hc, rc = _char_ngrams(h, n), _char_ngrams(r, n)
        match = sum(min(c, rc[g]) for g, c in hc.items() if g in rc)
        stats.append((sum(hc.values()) if rc else 0, sum(rc.values()), match))
    return stats


def _chrf_from_stats(stats: list[tuple[int, int, int]], beta: float) -> float:
    """Precision and recall averaged over the orders both sides have n-grams of ("effective
    order", sacreBLEU's default), then their F-beta, on 0..100."""
    prec = rec = 0.0
    eff = 0
    for n_hyp, n_ref, n_match in stats:
        if n_hyp > 0 and n_ref > 0:
            prec += n_match / n_hyp
            rec += n_match / n_ref
            eff += 1
    if eff == 0:
        return 0.0
    prec, rec = prec / eff, rec / eff
    if prec + rec == 0:
        return 0.0
    b2 = beta * beta
    return 100.0 * (1 + b2) * prec * rec / (b2 * prec + rec)


def chrf(hypothesis: str, references: Sequence[str], order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF (Popović 2015) as sacreBLEU 2.x computes it (char order 6, beta 2, no word
    n-grams, whitespace ignored, case kept): against several references, the best one's score."""
    if isinstance(references, str):
        references = [references]
    if not references:
        raise ValueError("chrf() needs at least one reference")
    return max(_chrf_from_stats(_chrf_stats(hypothesis, ref, order), beta) for ref in references)


# -- all of it for one output -------------------------------------------------------------------
@dataclass
class TextReport:
    """Everything text-only about one output.

    flags: name → bool for every flag in ALL_FLAGS (keyword_list only tested with keywords).
    degenerate: any of DEGENERATE_FLAGS.
    stats: the numbers behind the flags (max 3-gram count, distinct-2, longest run).
    keywords_covered / coverage: which keywords occur (lemmatised) and their share (None without keywords).
    all_covered / real_sentence: every keyword present; and in an output that is not degenerate
        and not cut off (a list, a loop or a half sentence does not count).
    chrf: against the references (None without).
    """

    flags: dict[str, bool]
    degenerate: bool
    stats: dict[str, float | int | None]
    keywords_covered: list[str] = field(default_factory=list)
    coverage: float | None = None
    all_covered: bool | None = None
    real_sentence: bool | None = None
    chrf: float | None = None


def is_cut_off(text: str, hit_cap: bool) -> bool:
    """Stopped by the token cap (not by eos) in the middle of a sentence."""
    return bool(hit_cap and text.strip() and not text.rstrip().endswith(_SENTENCE_END))


def text_report(text: str, prompt: str, hit_cap: bool = False, keywords: Sequence[str] = (),
                references: Sequence[str] = ()) -> TextReport:
    """Flags and scores of one output. Thresholds: a word 3-gram 3+ times, distinct-2 below 0.7
    (over at least 3 bigrams: shorter texts say nothing), a character run of 8+, the prompt's
    first 4 words echoed."""
    stats = text_stats(text)
    flags = {**degeneration_flags(text, prompt, keywords, stats), "cut_off": is_cut_off(text, hit_cap)}
    degenerate = any(flags[f] for f in DEGENERATE_FLAGS)
    rep_ = TextReport(flags, degenerate, stats)
    if keywords:
        rep_.keywords_covered = covered_keywords(text, keywords)
        rep_.coverage = len(rep_.keywords_covered) / len(keywords)
        rep_.all_covered = len(rep_.keywords_covered) == len(keywords)
        rep_.real_sentence = rep_.all_covered and not degenerate and not flags["cut_off"]
    if references:
        rep_.chrf = chrf(text, references)
    return rep_
