"""Word-level helpers shared by the terms that read the decoded text (reference, coverage).
What makes a text degenerate (the meta and guard terms, the evaluation's flags) is
ortrefine.degeneration."""

from __future__ import annotations

import re
from collections import Counter

STOPWORDS = frozenset(
    "a an the and or but if then else of to in on at by for with from into onto over under about as is are was were "
    "be been being do does did have has had this that these those it its they them their there here what which who whom "
    "whose why how when where all any each every some such no nor not only own same so than too very can will just should "
    "would could may might must shall one two uses use using write sentence words following these please make give tell "
    "your you me my we our us he she his her him i".split()
)


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def f1(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def content_words(text: str) -> tuple[str, ...]:
    """The prompt's words that could be concepts to cover, when the user names no keywords."""
    seen: dict[str, None] = {}
    for w in words(text):
        if len(w) >= 4 and w not in STOPWORDS and not w.isdigit():
            seen.setdefault(w, None)
    return tuple(seen)

