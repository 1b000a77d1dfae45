"""Word-level helpers shared by the terms that read the decoded text (reference, coverage, meta)
and by the evaluation's flags."""

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


# An instruct model's editor voice: remarks about "the text" it was never asked to edit or
# explain, which refining a story continuation under the model's own log P found ("I made a few
# minor tweaks to the text to improve its clarity and grammar.", "The original sentence, "…", is a
# classic example of a non sequitur", "In the context of your story, …"). Each branch needs a
# text word next to an editor's or analyst's word, so a story's own "sentence" (a prison term) or
# "classic example of" a thing in the story stays out.
_TEXT = "text|sentence|passage|paragraph|answer|prompt"
_META = re.compile(
    r"\bI(?:'ve| have)? (?:made|added|changed|rephrased|revised|rewrote|corrected) (?:the following |these |a few |some |several )?"
    r"(?:minor |small |slight )?(?:tweaks|changes|edits|corrections|adjustments|improvements)\b"
    r"|\b(?:improve|enhance)s? (?:its|the (?:original )?(?:text|sentence|passage|paragraph)(?:'s)?)\b"
    r"|\b(?:the|this|that) (?:original|revised|corrected|rewritten|above|given) (?:" + _TEXT + r")\b"
    r"|\b(?:this|the) (?:sentence|passage|paragraph) (?:is|uses|contains|reads|describes|suggests|conveys|implies)\b"
    r"|\bin the context of (?:the|this|your) (?:original |given )?(?:story|narrative|" + _TEXT + r")\b"
    r"|\b(?:a|the|here is a|here's a) (?:revised|corrected) version\b"
    r"|^\s*[-*] (?:Changed|Replaced|Added|Removed) [\"']"
    r"|\bthis is a classic example of\b", re.I | re.M)
# Prompts that ask for work on a text: there a remark about "the sentence" is the answer.
_EDIT_ASKED = re.compile(r"\b(?:rewrite|re-write|revise|edit|improve|correct|fix|rephrase|proofread|polish"
                         r"|explain|analy[sz]e|interpret|summari[sz]e|paraphrase)\b", re.I)


def comments_on_text(text: str, prompt: str) -> bool:
    """Whether the output talks about a text as its editor or analyst (or explains the prompt as an
    example) when the prompt asked for no work on a text: a reader asked to continue a story gets
    a remark."""
    return bool(_META.search(text)) and not _EDIT_ASKED.search(prompt)
