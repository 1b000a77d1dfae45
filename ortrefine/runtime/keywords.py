"""The keyword task (write a sentence that uses these words) for the coverage term.

Which concepts a text uses and whether it lists them instead of using them are decided by the
same matcher `ortrefine eval` reports with (simplemma lemmas, `ortrefine.lexicon`), so J and the
evaluation cannot disagree about what "covered" means. What this module adds is the other
direction: the inflections of a missing concept to propose (sit → sits, sat, sitting), since a
sentence rarely wants the bare form the user typed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from ortrefine.lexicon import covered_keywords, is_keyword_list, keyword_forms, word_forms

# Past forms English does not build with -ed (CommonGen's concepts are mostly everyday verbs and nouns).
IRREGULAR = {
    "be": ("was", "were", "been"), "become": ("became",), "begin": ("began", "begun"), "bend": ("bent",), "bite": ("bit", "bitten"),
    "blow": ("blew", "blown"), "break": ("broke", "broken"), "bring": ("brought",), "build": ("built",), "buy": ("bought",),
    "catch": ("caught",), "come": ("came",), "dig": ("dug",), "do": ("did", "done"), "draw": ("drew", "drawn"),
    "drink": ("drank", "drunk"), "drive": ("drove", "driven"), "eat": ("ate", "eaten"), "fall": ("fell", "fallen"),
    "feed": ("fed",), "fight": ("fought",), "find": ("found",), "fly": ("flew", "flown"), "get": ("got", "gotten"),
    "give": ("gave", "given"), "go": ("went", "gone"), "grow": ("grew", "grown"), "hang": ("hung",), "have": ("had",),
    "hide": ("hid", "hidden"), "hold": ("held",), "keep": ("kept",), "kneel": ("knelt",), "lay": ("laid",), "lead": ("led",),
    "leave": ("left",), "lie": ("lay", "lain"), "light": ("lit",), "make": ("made",), "meet": ("met",), "pay": ("paid",),
    "ride": ("rode", "ridden"), "ring": ("rang", "rung"), "rise": ("rose", "risen"), "run": ("ran",), "say": ("said",),
    "see": ("saw", "seen"), "sell": ("sold",), "send": ("sent",), "shake": ("shook", "shaken"), "shine": ("shone",),
    "shoot": ("shot",), "sing": ("sang", "sung"), "sink": ("sank", "sunk"), "sit": ("sat",), "sleep": ("slept",),
    "slide": ("slid",), "speak": ("spoke", "spoken"), "spend": ("spent",), "spin": ("spun",), "stand": ("stood",),
    "steal": ("stole", "stolen"), "stick": ("stuck",), "sting": ("stung",), "swim": ("swam", "swum"), "sweep": ("swept",),
    "swing": ("swung",), "take": ("took", "taken"), "teach": ("taught",), "tear": ("tore", "torn"), "tell": ("told",),
    "think": ("thought",), "throw": ("threw", "thrown"), "wake": ("woke", "woken"), "wear": ("wore", "worn"),
    "win": ("won",), "write": ("wrote", "written"),
}
_VOWELS = "aeiou"


def _regular(w: str) -> set[str]:
    if w.endswith("ie"):
        return {w + "s", w + "d", w[:-2] + "ying"}
    if w.endswith("e"):
        return {w + "s", w + "d", w[:-1] + "ing"}
    if w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        return {w[:-1] + "ies", w[:-1] + "ied", w + "ing"}
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return {w + "es", w + "ed", w + "ing"}
    out = {w + "s", w + "ed", w + "ing"}
    if len(w) >= 3 and w[-1] not in _VOWELS + "wxy" and w[-2] in _VOWELS and w[-3] not in _VOWELS:
        out |= {w + w[-1] + "ed", w + w[-1] + "ing"}  # sit → sitting, stop → stopped
    return out


@lru_cache(maxsize=4096)
def inflections(word: str) -> tuple[str, ...]:
    """The word and those of its inflections that the coverage matcher counts as the word."""
    w = word.lower().strip()
    if not w.isalpha():
        return (w,)
    import simplemma

    want = keyword_forms(w)
    irregular = set(IRREGULAR.get(w, ()))
    # the dictionary drops what the spelling rules over-generate (cuted, standed, catched)
    forms = {f for f in _regular(w) if simplemma.is_known(f, lang="en")} | irregular
    return (w, *sorted(f for f in forms if f != w and (f in irregular or want & word_forms(f))))


def surface_forms(keyword: str) -> tuple[str, ...]:
    """Every way a concept can appear: each inflection of its head word, the other words kept
    ("sit down" → sit down, sits down, sat down, …)."""
    head, *rest = keyword.split()
    tail = " " + " ".join(rest) if rest else ""
    return tuple(f + tail for f in inflections(head))


def covered(text: str, keywords: Sequence[str]) -> list[bool]:
    hits = set(covered_keywords(text, keywords))
    return [k in hits for k in keywords]


def is_list(text: str, keywords: Sequence[str]) -> bool:
    return is_keyword_list(text, keywords)
