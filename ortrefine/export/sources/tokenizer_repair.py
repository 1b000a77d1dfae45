"""The SentencePiece-BPE tokenizer repair for GGUF checkpoints: transformers turns such a
vocabulary into a Unigram tokenizer that splits text differently from the model's training, so the
bundle would score text the model never saw; see spm_bpe_json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ortrefine.errors import ExportError

log = logging.getLogger("ortrefine.export.sources")  # the name it logged under as one module

# GGUF token types (llama.cpp's llama_token_type)
GGUF_NORMAL, GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_BYTE = 1, 3, 4, 6


def spm_bpe_json(tokens: list[str], scores: list[float], types: list[int], backend_json: str) -> str | None:
    """tokenizer.json text of a BPE tokenizer for a SentencePiece-BPE vocabulary, or None when the
    vocabulary is not one (its scores are not merge ranks).

    Why: transformers (4.57) converts a Gemma GGUF's vocabulary into a Unigram model whose piece
    scores are the BPE merge ranks (0, -1, -2, ...). Unigram maximises the sum of scores, so it
    prefers many early-rank fragments: "Once upon a time" became On|ce|▁up|on|▁a|▁t|ime, text the
    model never saw in training, and a judge scoring it is off by nats per token. llama.cpp's SPM
    tokenizer instead merges the adjacent pair whose union has the best score; a BPE model whose
    merges are ranked by the score of their result does the same. Control tokens become special
    added tokens and user-defined ones (newline and space runs) plain added tokens, matched whole
    as SentencePiece does. Normaliser, pre-tokenizer, post-processor and decoder are kept.
    """
    import json

    from tokenizers import Tokenizer, models

    normal = [i for i, t in enumerate(types) if t == GGUF_NORMAL]
    ranks = [scores[i] for i in normal]
    if not normal or any(r > 0 or r != int(r) for r in ranks) or len(set(ranks)) < 0.99 * len(ranks):
        return None
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            return None
        vocab[tok] = i
    is_normal = set(normal)
    merges = []
    for i in normal:
        tok = tokens[i]
        for k in range(1, len(tok)):
            a, b = vocab.get(tok[:k]), vocab.get(tok[k:])
            if a in is_normal and b in is_normal:
                merges.append((-scores[i], a, b))
    merges.sort()
    bpe = models.BPE(vocab=vocab, merges=[(tokens[a], tokens[b]) for _, a, b in merges], unk_token=tokens[types.index(2)] if 2 in types else None,
                     byte_fallback=GGUF_BYTE in types, fuse_unk=True)
    out = json.loads(backend_json)
    out["model"] = json.loads(Tokenizer(bpe).to_str())["model"]
    out["added_tokens"] = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": t == GGUF_CONTROL}
                           for i, t in enumerate(types) if t in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    return json.dumps(out, ensure_ascii=False)


def _gguf_vocabulary(path: Path) -> tuple[str, list[str], list[float], list[int]] | None:
    """(tokenizer model, tokens, scores, token types) read from a GGUF file's metadata."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    if not all(k in fields for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")):
        return None

    def values(key: str) -> list[Any]:
        f = fields[key]
        return [f.parts[i] for i in f.data]

    kind = bytes(values("tokenizer.ggml.model")[0]).decode("utf-8")
    tokens = [bytes(p).decode("utf-8", errors="replace") for p in values("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in values("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in values("tokenizer.ggml.token_type")]
    return kind, tokens, scores, types


def repair_gguf_tokenizer(gguf_path: Path, tokenizer: Any) -> bool:
    """Swap a mis-converted SentencePiece-BPE tokenizer (see spm_bpe_json) for the BPE one, in
    place; True if it did. Only a transformers fast tokenizer with a Unigram model is touched."""
    import json

    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or json.loads(backend.to_str())["model"].get("type") != "Unigram":
        return False
    vocab = _gguf_vocabulary(gguf_path)
    if vocab is None or vocab[0] != "llama":
        return False
    fixed = spm_bpe_json(vocab[1], vocab[2], vocab[3], backend.to_str())
    if fixed is None:
        return False
    new = Tokenizer.from_str(fixed)
    probe = "Once upon a time, there lived a fisherman.\nHe said: «Ça va?»  42"
    if new.decode(new.encode(probe, add_special_tokens=False).ids) != probe:
        raise ExportError(f"{gguf_path.name}: the rebuilt BPE tokenizer does not round-trip text; export aborted (no bundle written)")
    tokenizer._tokenizer = new
    log.info("%s: SentencePiece-BPE vocabulary rebuilt as BPE (transformers had converted it to Unigram)", gguf_path.name)
    return True

