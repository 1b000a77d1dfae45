"""Conversations of any length through the bundle's chat template, control tokens kept apart.

`TextTokenizer.encode_chat` takes one user message and an optional system message, which is
what the CLI has; an HTTP chat client sends whole conversations. A [system,] user conversation
goes through `encode_chat` itself (so the server's ids equal `ortrefine generate --chat`'s); longer
ones through the same scheme here: control-token strings inside a message are swapped for markers
before the template runs and encoded as text afterwards, so no message can forge a turn.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Sequence

from ortrefine.errors import PromptError
from ortrefine.runtime.tokenizer import check_text, render_chat

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
    specials = tok.special_strings()
    forged: dict[str, str] = {}
    nonce = uuid.uuid4().hex[:16]
    pattern = re.compile("|".join(map(re.escape, specials))) if specials else None

    def defang(text: str) -> str:
        if pattern is None:
            return text

        def swap(m: re.Match) -> str:
            marker = f"\ue000{nonce}.{len(forged)}\ue001"
            forged[marker] = m.group(0)
            return marker

        return pattern.sub(swap, text)

    rendered = render_chat(tok.chat_template, [{"role": m["role"], "content": defang(m["content"])} for m in messages],
                           tok.special, tok.origin)
    if not forged:
        return tok.encode_with_specials(rendered)
    ids: list[int] = []
    for k, piece in enumerate(re.split("(" + "|".join(map(re.escape, forged)) + ")", rendered)):
        if k % 2:
            ids += tok.encode_plain(forged[piece])
        elif nonce in piece.lower():
            raise PromptError("this model's chat template rewrites message text, so control-token strings in a message "
                              f"({', '.join(sorted(set(forged.values())))}) cannot be kept apart from the template's; remove them")
        elif piece:
            ids += tok.encode_with_specials(piece)
    return ids
