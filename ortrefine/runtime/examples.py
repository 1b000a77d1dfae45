"""Worked examples that go before a keyword prompt as earlier chat turns.

Asked for "one sentence that uses all of these words", SmolLM2-135M answers in the register of a
glossary: "A dog is a field, a field is a hold, and a hold is a stand." The keyword guide and the
coverage term then get every concept into that frame, which makes a sentence that passes the
coverage metric and that no person would write. Answered turns before the user's set move
the model to the register of a plain event ("The dog looked up at the snow and stood there.")
before the search starts, and J's log-probs are then read in that context too. Why not in J
alone: the examples lengthen the prompt, which every scored candidate carries in its KV cache,
so each costs time (about 0.3 s per prompt on SmolLM2 for each example).

The examples use no word of CommonGen's dev concept sets, so that they cannot hand the model a
set's answer, and they show inflected forms (planted, wrote, mailed) because a concept is rarely
wanted in the form the user typed it.
"""

from __future__ import annotations

KEYWORD_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Write one sentence that uses all of these words: garden, plant, seed, spring.",
     "In spring, the children planted seeds in the school garden."),
    ("Write one sentence that uses all of these words: grandmother, letter, mail, write.",
     "She wrote a long letter to her grandmother and mailed it the same afternoon."),
    ("Write one sentence that uses all of these words: bake, bread, morning, oven.",
     "Every morning he bakes fresh bread in the old stone oven."),
)


# The first two go in by default. On the 40 CommonGen tuning sets one made every answer open like
# it ("In spring, the children …"), and the third cost 0.5 s per prompt for no gain
# (benchmarks/eval/commongen-examples).
DEFAULT_EXAMPLE_COUNT = 2


def default_examples() -> tuple[tuple[str, str], ...]:
    return KEYWORD_EXAMPLES[:DEFAULT_EXAMPLE_COUNT]


def example_messages(examples: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """The examples as alternating user and assistant messages."""
    out: list[dict[str, str]] = []
    for user, answer in examples:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return out
