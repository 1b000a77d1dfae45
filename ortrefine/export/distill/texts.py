"""Text files in, token windows out: the one reader for data, prompts and eval_data, so every
file option accepts the same formats and fails with the same messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ortrefine.errors import ConfigError


def read_texts(path: Path, what: str = "data") -> list[str]:
    """Non-empty texts of a .jsonl ("text", else "prompt") or text file (blank-line paragraphs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no {what} file at {path}; give a text file or a .jsonl file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8") from None
    texts: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e}); one JSON object per line") from None
            text = record.get("text", record.get("prompt")) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ConfigError(f'{path}:{lineno}: no string field "text" or "prompt"; every line needs one')
            texts.append(text)
    else:
        texts = raw.split("\n\n")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ConfigError(
            f'{path} holds no text (empty {what}); give a UTF-8 text file (paragraphs separated by blank lines) '
            'or JSONL with a "text" or "prompt" field'
        )
    return texts


def windows(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Each text tokenized (with the tokenizer's BOS) and cut into windows of <= seq_len tokens."""
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        out += [ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) >= 2]
    return out
