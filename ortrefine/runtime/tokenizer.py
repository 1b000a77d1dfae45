"""Tokenization with the `tokenizers` library and chat templates with jinja2 (no transformers).

`tokenizers` gives the same ids as transformers' fast tokenizer for the same tokenizer.json and
loads in 0.1 s instead of 3.6 s (FACTS.md).

Control tokens (the tokenizer's special added tokens: `<|im_start|>`, `<|im_end|>`, ...) come only
from the chat template. Text a user wrote — chat messages, the system message, `--initial`
outputs, references, keywords — is encoded as text even where it spells a control token, so no
input can forge a turn or an end of sequence.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Sequence

import numpy as np
from tokenizers import Tokenizer

from ortrefine.errors import BundleError, PromptError


def one_line(e: BaseException) -> str:
    """`Type: message` on one line (for errors that name an exception raised by someone else's code)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def cached_on(obj: Any, key: Any, build: Callable[[], Any]) -> Any:
    """`build()` computed once per object and kept on it (tables derived from a whole vocabulary:
    the keyword guide's, the contrastive term's check); objects without a __dict__ get no cache."""
    cache = obj.__dict__.setdefault("_ortrefine_cache", {}) if hasattr(obj, "__dict__") else {}
    if key not in cache:
        cache[key] = build()
    return cache[key]


def check_text(text: str, what: str = "the text") -> str:
    """`text` itself, or PromptError when it cannot be encoded (not a str, or lone surrogates:
    bytes that were not UTF-8, as Python decodes a non-UTF-8 command line)."""
    if not isinstance(text, str):
        raise PromptError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PromptError(f"{what} is not valid UTF-8 (it holds bytes of another encoding); re-encode it as UTF-8") from None
    return text


def _raise_exception(message: str) -> None:
    raise PromptError(f"chat template refused the conversation: {message}")


def render_chat(template: str, messages: Sequence[dict[str, str]], special: dict[str, str], origin: str = "the bundle") -> str:
    """Render an HF chat template the way transformers does (sandboxed, trim/lstrip blocks).

    A template that does not compile or fails while rendering is a broken bundle (BundleError);
    one that calls `raise_exception` refuses this conversation (PromptError).
    """
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    fix = "re-export the bundle (or drop --chat)"
    try:
        compiled = env.from_string(template)
    except TemplateError as e:
        raise BundleError(f"{origin}: its chat template does not compile ({one_line(e)}); {fix}") from None
    try:
        out = compiled.render(messages=list(messages), add_generation_prompt=True, **special)
    except PromptError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a broken template raises, it is the bundle's fault
        raise BundleError(f"{origin}: its chat template failed ({one_line(e)}); {fix}") from None
    return out


@dataclass
class TextTokenizer:
    """tokenizer.json + the bundle's chat template.

    Plain prompts are encoded with the tokenizer's own special tokens (a BOS where the model
    has one, as transformers does); chat prompts are rendered by the template, which already
    writes every special token, so they are encoded without adding any (else SmolLM2 gets a
    doubled BOS). In chat prompts only the template's control tokens are control tokens: the
    messages' text is encoded as text (see the module docstring).
    """

    tokenizer: Tokenizer
    chat_template: str | None
    special: dict[str, str]
    origin: str = "the bundle"  # named in error messages (the bundle folder)
    # every encode holds it: text encodes flip the tokenizer's `encode_special_tokens` for their call
    # (a second Tokenizer would cost another load: 0.2 s for SmolLM2's, 1.7 s for Gemma 3's)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @classmethod
    def from_files(cls, path: str, chat_template: str | None, special: dict[str, str]) -> "TextTokenizer":
        from pathlib import Path

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception type for any bad file
            raise BundleError(f"{path}: the tokenizers library cannot read it ({one_line(e)}); re-export the bundle") from None
        return cls(tok, chat_template, special, origin=str(Path(path).parent))

    # -- control tokens -------------------------------------------------------------------------
    def special_strings(self) -> list[str]:
        """Contents of the special added tokens, longest first."""
        try:
            added = self.tokenizer.get_added_tokens_decoder().values()
        except AttributeError:  # tokenizers < 0.14
            return []
        return sorted({t.content for t in added if getattr(t, "special", False) and t.content}, key=len, reverse=True)

    def _ids(self, text: str, add_special_tokens: bool, as_text: bool = False) -> list[int]:
        """tokenizer.encode(...).ids; as_text: special-token strings in `text` are encoded as text
        (tokenizers' `encode_special_tokens`)."""
        with self._lock:
            if not as_text:
                return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
            before = self.tokenizer.encode_special_tokens
            self.tokenizer.encode_special_tokens = True
            try:
                return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
            finally:
                self.tokenizer.encode_special_tokens = before

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, chat: bool = False, system: str | None = None) -> list[int]:
        if chat:
            return self.encode_chat(text, system)
        return self._ids(check_text(text, "the prompt"), add_special_tokens=True)

    def apply_chat(self, user: str, system: str | None = None) -> str:
        """The rendered conversation as text (what the template writes, control tokens included)."""
        return render_chat(self._template(), self._messages(user, system), self.special, self.origin)

    def encode_chat(self, user: str, system: str | None = None, examples: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Ids of a [system,] [examples,] user conversation (the CLI's `--chat`); see encode_messages.
        examples: (user, assistant) turns placed before the user's (runtime/examples.py)."""
        return self.encode_messages(self._messages(user, system, examples))

    def encode_messages(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Ids of the rendered conversation; control tokens only where the template writes them.

        messages: [{"role", "content"}, ...] with checked text (the server passes whole conversations).

        Every control-token string inside a message is swapped for a unique marker before the
        template runs; the rendered text is encoded piecewise around the markers and each marker
        as its original string encoded as text. Messages without control-token strings encode
        exactly as the rendered text always did (one encode call).
        """
        template = self._template()
        specials = self.special_strings()
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

        messages = [{**m, "content": defang(m["content"])} for m in messages]
        rendered = render_chat(template, messages, self.special, self.origin)
        if not forged:
            return self._ids(rendered, add_special_tokens=False)
        pieces = re.split("(" + "|".join(map(re.escape, forged)) + ")", rendered)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2:
                ids += self._ids(forged[piece], add_special_tokens=False, as_text=True)
            elif nonce in piece.lower():
                raise PromptError(
                    "this model's chat template rewrites message text, so control-token strings in the message "
                    f"({', '.join(sorted(set(forged.values())))}) cannot be kept apart from the template's; remove them from the message"
                )
            elif piece:
                ids += self._ids(piece, add_special_tokens=False)
        return ids

    def _template(self) -> str:
        if self.chat_template is None:
            raise PromptError("this model has no chat template: drop --chat, or use an instruct model")
        return self.chat_template

    @staticmethod
    def _messages(user: str, system: str | None, examples: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
        check_text(user, "the prompt")
        if system is not None:
            check_text(system, "the system message")
        from ortrefine.runtime.examples import example_messages  # here: the runtime package imports this module

        return ([{"role": "system", "content": system}] if system else []) + example_messages(examples) + [{"role": "user", "content": user}]

    def encode_plain(self, text: str) -> list[int]:
        """Ids of a text fragment with no special tokens added (continuations, keywords, references,
        `--initial`): control-token strings in it are encoded as text."""
        return self._ids(check_text(text), add_special_tokens=False, as_text=True)

    def encode_with_specials(self, text: str) -> list[int]:
        """Ids of decoded model output (`decode(..., skip_special_tokens=False)`): special-token
        strings are the special tokens again, so the ids round-trip."""
        return self._ids(check_text(text), add_special_tokens=False)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Per-token surface text (for highlighting edits)."""
        return [self.tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)
