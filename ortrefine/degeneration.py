"""What makes an output degenerate: a phrase looping, few distinct word pairs, one character
repeated, the prompt's opening echoed, keywords listed instead of used, an editor's remark nobody
asked for, or nothing at all. One definition serves the evaluation's flags
(ortrefine.evaluate.metrics) and the `guard` objective term, so refinement refuses exactly what
the evaluation counts against it. Pure Python, no model."""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from ortrefine.lexicon import is_keyword_list, words

# The flags that make an output "degenerate" (an evaluation excludes it from paired judging).
DEGENERATE_FLAGS = ("empty", "repeated_ngram", "low_distinct2", "char_run", "prompt_echo", "keyword_list", "meta_comment")


# An instruct model's editor voice: remarks about "the text" it was never asked to edit or
# explain, which refining a story continuation under the model's own log P found ("I made a few
# minor tweaks to the text to improve its clarity and grammar.", "The original sentence, "…", is a
# classic example of a non sequitur", "In the context of your story, …"). Each branch needs a
# text word next to an editor's or analyst's word, so a story's own "sentence" (a prison term) or
# "classic example of" a thing in the story stays out.
_META = re.compile(
    r"\bI(?:'ve| have)? (?:made|added|changed|rephrased|revised|rewrote|corrected) (?:the following |these |a few |some |several )?"
    r"(?:minor |small |slight )?(?:tweaks|changes|edits|corrections|adjustments|improvements)\b"
    r"|\b(?:improve|enhance)s? (?:its|the (?:original )?(?:text|sentence|paragraph)(?:'s)?),? (?:overall )?"
    r"(?:clarity|flow|grammar|readability|style|structure)\b"
    r"|\bto (?:improve|enhance) the (?:original )?(?:text|sentence|paragraph)\b"
    r"|\b(?:the|this|that) (?:original|revised|corrected|rewritten) (?:sentence|paragraph|answer|prompt)\b"
    r"|\b(?:this|the) (?:sentence|paragraph),? (?:\"[^\"\n]{1,200}\",? )?(?:uses|contains|reads|describes|suggests|conveys|implies"
    r"|is (?:a |an )?(?:classic |great |good |perfect )?example|is grammatically)\b"
    r"|\bin the context of (?:the|this|your) (?:original |given )?(?:story|narrative|text|sentence|passage|paragraph|prompt)\b"
    r"|\b(?:a|the|here is a|here's a) (?:revised|corrected) version\b"
    r"|^[ \t]*[-*] (?:Changed|Replaced|Added|Removed) [\"']"
    r"|\bthis is a classic example of\b"
    # the analyst's voice: explaining the words just written ("In this example, the sentence is
    # structured …", "The phrase "…" is an idiomatic expression", "The word "pet" has …"). A
    # quoted word needs an explaining verb after it, so a story's shouted word or painted sign
    # ("the words "No Entry" were painted") stays out.
    r"|\bin this (?:example|sentence|passage|paragraph|phrase),"
    r"|^[ \t]*in this (?:story|scenario|text|context),|^[ \t]*in the original, the (?:sentence|phrase|text|word)\b"
    r"|\b(?:the|this) (?:phrase|word|term|expression|idiom|verb|noun|adjective) [\"\u201c][^\"\u201d\n]{1,200}[\"\u201d],? "
    r"(?:is an? |is often |has (?:multiple|several|many|two|a) |refers to|means|adds|conveys|comes from|can be used)"
    r"|^[ \t]*(?:the|this) (?:phrase|idiom) (?:is an?|is often|refers|means)\b"
    r"|\b(?:idiomatic|metaphorical) expression\b"
    r"|\bthe original meaning of (?:the|this) (?:word|phrase|term|sentence|expression)\b"
    r"|\b(?:this|the) (?:sentence|paragraph) (?:has (?:a |an )?(?:grammatical|double negative|spelling|clear structure)"
    r"|can be (?:rephrased|rewritten|improved|revised|simplified)|is structured)\b"
    r"|\bis the (?:subject|object) of the sentence\b|\bthe (?:subject|object|verb|main verb) of the sentence is\b"
    r"|\bthis example (?:illustrates|shows|demonstrates)\b"
    # ... and the critic's: the story just told filed under a genre or device
    r"|^[ \t]*the (?:original|revised|corrected|rewritten)(?: (?:sentence|version|text|story))?:[ \t]*(?:\n|[\"\u201c])"
    r"|\b(?:the|this) (?:story|tale|book|narrative)(?: of [^.\n]{1,80})? is (?:a |an )?classic example of\b"
    r"|\b(?:classic|common) trope\b|\btrope in (?:literature|fiction|storytelling)\b"
    r"|\bclassic lateral thinking puzzle\b|\bexample of a (?:\"?lateral thinking puzzle|non sequitur|literary device)\b"
    r"|\b(?:the|this) sentence is (?:a |an )(?:metaphor|simile)\b", re.I | re.M)
# Prompts that ask for work on a text: there a remark about "the sentence" is the answer.
_EDIT_ASKED = re.compile(r"\b(?:rewrite|re-write|revise|edit|improve|correct|fix|rephrase|proofread|polish"
                         r"|explain|analy[sz]e|interpret|summari[sz]e|paraphrase)\b", re.I)


def comments_on_text(text: str, prompt: str) -> bool:
    """Whether the output talks about a text as its editor or analyst (or explains the prompt as an
    example) when the prompt asked for no work on a text: a reader asked to continue a story gets
    a remark."""
    return bool(_META.search(text)) and not _EDIT_ASKED.search(prompt)


def ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def max_ngram_count(text: str, n: int = 3) -> int:
    """How often the most frequent word n-gram occurs (0 for texts shorter than n words)."""
    counts = Counter(ngrams(words(text), n))
    return max(counts.values(), default=0)


def distinct_n(text: str, n: int = 2) -> float | None:
    """Unique word n-grams / all word n-grams (Li et al. 2016); None with no n-gram."""
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else None


def longest_char_run(text: str) -> int:
    """Length of the longest run of one non-space character, case-folded ("Mmmm" is a run of 4)."""
    best = run = 0
    prev = None
    for ch in text.lower():
        if ch.isspace():
            prev, run = None, 0
            continue
        run = run + 1 if ch == prev else 1
        prev = ch
        best = max(best, run)
    return best


def echoes_prompt(text: str, prompt: str, n: int = 4) -> bool:
    """Whether the prompt's first n words occur, in order and adjacent, in the output."""
    head = tuple(words(prompt)[:n])
    if len(head) < n:
        return False
    return head in set(ngrams(words(text), n))


def text_stats(text: str) -> dict[str, float | int | None]:
    """The numbers behind the flags, each from one split of the text into words: the most
    frequent word 3-gram's count, distinct-2, the longest character run, the word count."""
    ws = words(text)
    grams3, grams2 = ngrams(ws, 3), ngrams(ws, 2)
    return {"max_3gram_count": max(Counter(grams3).values(), default=0),
            "distinct2": len(set(grams2)) / len(grams2) if grams2 else None,
            "longest_char_run": longest_char_run(text), "words": len(ws)}


def degeneration_flags(text: str, prompt: str, keywords: Sequence[str] = (),
                       stats: dict[str, float | int | None] | None = None) -> dict[str, bool]:
    """Each of DEGENERATE_FLAGS for one output (`stats`: text_stats(text), when the caller has it).
    Thresholds: a word 3-gram 3+ times, distinct-2 below 0.7 (over at least 3 bigrams: shorter
    texts say nothing), a character run of 8+, the prompt's first 4 words echoed; keyword_list
    only with keywords."""
    st = text_stats(text) if stats is None else stats
    d2 = st["distinct2"]
    return {
        "empty": not st["words"],
        "repeated_ngram": st["max_3gram_count"] >= 3,
        "low_distinct2": d2 is not None and st["words"] - 1 >= 3 and d2 < 0.7,
        "char_run": st["longest_char_run"] >= 8,
        "prompt_echo": echoes_prompt(text, prompt, 4),
        "keyword_list": bool(keywords) and is_keyword_list(text, keywords),
        "meta_comment": comments_on_text(text, prompt),
    }


def is_degenerate(text: str, prompt: str, keywords: Sequence[str] = ()) -> bool:
    return any(degeneration_flags(text, prompt, keywords).values())
