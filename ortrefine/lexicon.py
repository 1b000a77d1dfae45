"""English words for the keyword task, shared by the refiner's coverage term and `ortrefine eval`,
and where an English sentence ends (the refiner's end repair).

One matcher for both, so J and the evaluation cannot disagree about what "uses the concept" or
"a list, not a sentence" means. Pure Python plus simplemma (its English data ships in the wheel).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

_WORD = re.compile(r"\w+(?:['’]\w+)*")

# words that only occur in clauses (articles, determiners, pronouns, auxiliaries, modals,
# prepositions, subordinators): a text with none of them has no sentence structure. "and"/"or"
# are left out on purpose: they join the items of a list as readily as clauses.
FUNCTION_WORDS = frozenset("""
a an the this that these those his her its their our my your some every each no any another
i you he she it we they me him us them who whom which what there
is are was were be been being am has have had do does did will would can could should may might must shall
in on at to of for from with by into onto over under through across near after before around up down out off
about behind along between against during toward towards beside inside outside upon within without beneath
because while when if than so but though although since until unless where whether
""".split())
# words that mark a finite clause: auxiliaries, copulas, modals and subject pronouns
VERB_CUES = frozenset("""
is are was were be been being am has have had do does did will would can could should may might must shall
i you he she it we they there
""".split())
_CONNECTIVES = frozenset({"and", "or", "&", "nor", "plus"})
_LIST_SEPARATORS = re.compile(r"[,;:|/\n•·]+|\s[-–—*]\s|(?:^|\s)\d+[.)]\s|(?:^|\n)\s*[-*]\s")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, inner apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]


def _simplemma():
    try:
        import simplemma
    except ImportError:  # pragma: no cover - a runtime dependency; named if someone removed it
        from ortrefine.errors import MissingExtraError

        raise MissingExtraError("keyword coverage needs simplemma, which is not installed; run: pip install simplemma") from None
    return simplemma


@lru_cache(maxsize=65536)
def lemma(word: str) -> str:
    return _simplemma().lemmatize(word.lower(), lang="en")


def _undone_inflections(word: str) -> list[str]:
    """Base forms an English inflection may have come from; kept only if simplemma's dictionary
    knows them. simplemma reads some -ing forms as nouns (cutting, sitting) and "leaves" as the
    verb: these give the other reading, while the dictionary decides what is a word."""
    out = []
    for suffix, repl in (("ing", ""), ("ing", "e"), ("ied", "y"), ("ed", ""), ("ed", "e"), ("ies", "y"), ("es", ""), ("s", ""),
                         ("ves", "f"), ("ves", "fe")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            stem = word[: len(word) - len(suffix)] + repl
            out.append(stem)
            if not repl and len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
                out.append(stem[:-1])  # cutting → cutt → cut
    sm = _simplemma()
    return [c for c in out if sm.is_known(c, lang="en")]


@lru_cache(maxsize=65536)
def word_forms(word: str) -> frozenset[str]:
    """The word, its simplemma lemma, and the lemmas of its plausible base forms."""
    w = word.lower()
    forms = {w, lemma(w)}
    for base in _undone_inflections(w):
        forms |= {base, lemma(base)}
    return frozenset(forms)


def keyword_forms(keyword: str) -> frozenset[str]:
    k = keyword.lower().strip()
    return frozenset({k, lemma(k)})


def covered_keywords(text: str, keywords: Sequence[str]) -> list[str]:
    """Keywords that occur in the text in some inflection (sat for sit, mice for mouse). A
    keyword of several words must occur as adjacent words, each matched the same way."""
    toks = words(text)
    forms = [word_forms(t) for t in toks]
    hits = []
    for kw in keywords:
        parts = words(kw)
        if not parts:
            continue
        want = [keyword_forms(p) for p in parts]
        n = len(parts)
        if any(all(want[j] & forms[i + j] for j in range(n)) for i in range(len(toks) - n + 1)):
            hits.append(kw)
    return hits


def is_keyword_list(text: str, keywords: Sequence[str]) -> bool:
    """Whether the output lists the keywords instead of using them in a sentence.

    Two concrete tests, either suffices:
    1. separator list: at least two separators (commas, semicolons, colons, slashes, bullets,
       numbering) and of the pieces between them at least 60 % are bare — nothing left once
       function words and "and"/"or" are removed, except keyword forms (at most three words) —
       or at least 40 % with no verb cue anywhere (`is_verb_form`). "A dog, a frisbee, and a park." is a list, and so is "Dog, frisbee,
       park, red ball, and stick, all at the park today"; "In the park, the dog, a happy
       puppy, caught the frisbee." is not (one bare piece of four).
    2. no clause: not one function word (article, pronoun, auxiliary, preposition, ...) and no
       verb cue: "Dog frisbee park." and "Dog and frisbee and park". A headline-style
       "Dogs chase frisbees." is flagged too — rare in model output, and not what was asked.
    """
    kw_forms = [keyword_forms(p) for k in keywords for p in words(k)]
    if not words(text):
        return False

    def bare(piece: str) -> bool:
        rest = [w for w in words(piece) if w not in FUNCTION_WORDS and w not in _CONNECTIVES]
        return bool(rest) and len(rest) <= 3 and all(any(f & word_forms(w) for f in kw_forms) for w in rest)

    pieces = [p for p in _LIST_SEPARATORS.split(text) if p and words(p)]
    separators = len(_LIST_SEPARATORS.findall(text.strip().rstrip(".!?")))
    ws = words(text)
    verbish = any(is_verb_form(w) for w in ws)
    if separators >= 2 and len(pieces) >= 3:
        share = sum(bare(p) for p in pieces) / len(pieces)
        if share >= 0.6 or (share >= 0.4 and not verbish):
            return True
    return not verbish and not any(w in FUNCTION_WORDS for w in ws)


def is_verb_form(word: str) -> bool:
    """A cue of a finite or participle verb: an auxiliary, modal or subject pronoun, or an
    inflected form that is not a plural — simplemma maps it to another lemma (caught → catch,
    sat → sit) or it is -ed / -ing of a known base (cutting → cut). Over-eager on irregular
    nouns and adjectives (children, better); enough to tell a clause from a list."""
    w = word.lower()
    if w in VERB_CUES:
        return True
    if w.endswith("s"):
        return False
    return lemma(w) != w or (w.endswith(("ed", "ing")) and bool(_undone_inflections(w)))


# words whose full stop does not end a sentence
_ABBREVIATIONS = frozenset("""mr mrs ms dr st jr sr prof vs etc inc ltd co no fig eg ie approx dept est vol mt ft ave blvd rd
gen col lt sgt capt rev gov sen rep jan feb mar apr jun jul aug sep sept oct nov dec""".split())
SENTENCE_ENDS = ".!?"
CLOSERS = "\"'”’)]"  # what may close a sentence after its end mark
_LAST_WORD = re.compile(r"[A-Za-z0-9'’-]*[A-Za-z][A-Za-z0-9'’-]*")


def ends_sentence(text: str) -> bool:
    """Whether `text` ends a sentence right at its last character: `.`, `!` or `?`, maybe closed by
    a quote or bracket, with no whitespace after it. A full stop after a number ("1.", "3."), a
    single letter other than "I" or an initialism ("e.", "U.S."), an abbreviation ("Dr.", "Jan.")
    or an ellipsis does not count: ending an output there would cut it mid-sentence. Whether the
    text went on inside the same word ("example.com") is the caller's to check."""
    if not text or text != text.rstrip():
        return False
    core = text.rstrip(CLOSERS)
    if not core or core[-1] not in SENTENCE_ENDS:
        return False
    if core[-1] != ".":
        return True
    if core.endswith("..") or core.endswith("…."):
        return False
    before = core[:-1].split()
    last = before[-1].strip("\"'“‘”’()[]") if before else ""
    if not _LAST_WORD.fullmatch(last):
        return False
    return (len(last) >= 2 or last == "I") and last.lower() not in _ABBREVIATIONS
