"""Worked examples that go before a keyword prompt as earlier chat turns.

Asked for "one sentence that uses all of these words", SmolLM2-135M answers in the register of a
glossary: "A dog is a field, a field is a hold, and a hold is a stand." The keyword guide and the
coverage term then get every concept into that frame, which makes a sentence that passes the
coverage metric and that no person would write. Answered turns before the user's set move
the model to the register of a plain event ("The dog looked up at the snow and stood there.")
before the search starts, and J's log-probs are then read in that context too. The examples
lengthen the prompt, which every scored candidate carries in its KV cache; on SmolLM2 the two
cost 5-15 % of a keyword refinement's time (benchmarks/eval/commongen-examples/timing).

The examples use no word of CommonGen's dev concept sets, so that they cannot hand the model a
set's answer, and they show inflected forms (planted, wrote, mailed) because a concept is rarely
wanted in the form the user typed it.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ortrefine.errors import ConfigError

log = logging.getLogger("ortrefine.runtime.examples")

KEYWORD_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Write one sentence that uses all of these words: garden, plant, seed, spring.",
     "In spring, the children planted seeds in the school garden."),
    ("Write one sentence that uses all of these words: grandmother, letter, mail, write.",
     "She wrote a long letter to her grandmother and mailed it the same afternoon."),
    ("Write one sentence that uses all of these words: bake, bread, morning, oven.",
     "Every morning he bakes fresh bread in the old stone oven."),
)


# The first two go in by default. On the 40 CommonGen tuning sets one made every answer open like
# it ("In spring, the children …"), and the third added time for no gain; the first and third
# instead leaked "the old stone oven" into the answers (benchmarks/eval/commongen-examples).
DEFAULT_EXAMPLE_COUNT = 2


def default_examples() -> tuple[tuple[str, str], ...]:
    return KEYWORD_EXAMPLES[:DEFAULT_EXAMPLE_COUNT]


def select_examples(value: Any) -> tuple[tuple[str, str], ...]:
    """The examples a setting asks for: true the default ones, false none, a count the first N.
    One rule for refine's config and eval's generation systems."""
    if isinstance(value, (bool, np.bool_)):
        return default_examples() if value else ()
    if not isinstance(value, (int, np.integer)) or not 0 <= value <= len(KEYWORD_EXAMPLES):
        raise ConfigError(f"examples must be true, false or a count from 0 to {len(KEYWORD_EXAMPLES)}, got {value!r}")
    return KEYWORD_EXAMPLES[:int(value)]


def example_messages(examples: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The examples as alternating user and assistant messages."""
    out: list[dict[str, str]] = []
    for user, answer in examples:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return out


def encode_with_examples(lm: Any, prompt: str | Sequence[int], examples: Sequence[tuple[str, str]], chat: bool,
                         system: str | None, max_new_tokens: int) -> tuple[list[int], bool]:
    """The prompt's ids with the examples first where they can go, and whether they went in.

    They go before a text chat prompt only (ids are taken as they are). They are an aid, not the
    user's input, so where they leave no room in the model's context they are left out, with a
    warning, rather than the prompt refused."""
    if examples and chat and isinstance(prompt, str) and prompt.strip():
        ids = lm.tokenizer.encode_chat(prompt, system, tuple(examples))
        if len(ids) + max_new_tokens <= lm.bundle.context_length:
            return lm.encode_prompt(ids, max_new_tokens=max_new_tokens), True
        log.warning("the keyword examples would leave no room for %d new tokens in the model's context: left out", max_new_tokens)
    return lm.encode_prompt(prompt, chat=chat, max_new_tokens=max_new_tokens, system=system), False
