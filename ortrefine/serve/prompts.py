"""Conversations of any length through the bundle's chat template, control tokens kept apart.

An HTTP chat client sends whole conversations; they go through `TextTokenizer.encode_messages`,
the same path as `ortrefine generate --chat` (control-token strings inside a message are encoded
as text, so no message can forge a turn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ortrefine.errors import PromptError
from ortrefine.runtime.tokenizer import check_text

if TYPE_CHECKING:
    from ortrefine.runtime.tokenizer import TextTokenizer

ROLES = ("system", "user", "assistant")


def single_turn(messages: Sequence[dict[str, str]]) -> tuple[str, str | None] | None:
    """(user, system) when the conversation is one user turn after at most one system message."""
    roles = [m["role"] for m in messages]
    if roles == ["user"]:
        return messages[0]["content"], None
    if roles == ["system", "user"] and messages[0]["content"]:
        return messages[1]["content"], messages[0]["content"]
    return None


def encode_messages(tok: "TextTokenizer", messages: Sequence[dict[str, str]]) -> list[int]:
    """Ids of the rendered conversation, ready for the assistant's turn.

    messages: [{"role": system | user | assistant, "content": str}, ...], already validated.
    """
    one = single_turn(messages)
    if one is not None:
        return tok.encode_chat(one[0], one[1])
    if tok.chat_template is None:
        raise PromptError("this model has no chat template: use /v1/completions, or serve an instruct model")
    for m in messages:
        check_text(m["content"], f"the {m['role']} message")
    return tok.encode_messages(messages)
