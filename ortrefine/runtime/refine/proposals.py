"""Candidate generation: which edits of Y are worth scoring at a position, and which are canonical.

Proposals come from the model's own next-token distribution (top-k), from the gradient graph
(HotFlip swaps on the incumbent) and from the objective (e.g. a missing keyword's first token).
A candidate whose text would re-tokenize to other ids is not a real output of the model, so the
canonical check drops it before it is judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ortrefine.runtime.logprobs import log_softmax

if TYPE_CHECKING:
    from ortrefine.runtime.objectives import Objective
    from ortrefine.runtime.refine.config import RefineConfig
    from ortrefine.runtime.refine.state import _State
    from ortrefine.runtime.session import LM


@dataclass
class _Candidate:
    """A row to score: Y[:start] + tail, `pending` tokens given, greedy after them if regenerate."""

    start: int
    kind: str
    pending: list[int]
    old_id: int | None
    new_id: int | None
    exempt: bool = False


def _encode_roundtrip(tok: Any, text: str) -> list[int]:
    """Ids of decoded output text, special-token strings read as the special tokens they were
    (TextTokenizer.encode_with_specials; test doubles may only have encode_plain)."""
    enc = getattr(tok, "encode_with_specials", None)
    return enc(text) if enc is not None else tok.encode_plain(text)


class _Proposer:
    """The refiner's proposal side; mixed into _Refiner (loop.py), which sets these attributes."""

    cfg: RefineConfig
    lm: LM
    objective: Objective
    eos: set[int]

    def proposals(self, state: _State, i: int) -> list[_Candidate]:
        """Every candidate edit at position i. The order is the tie-break between equal J (the one
        proposed first wins): substitutions best first, then the deletion, then insertions."""
        cfg, ids = self.cfg, state.ids
        if i >= len(ids):
            return []
        tokens = self._proposed_tokens(state, i)
        extra = [t for t in self.objective.propose(ids[:i]) if t not in tokens]
        old = ids[i]
        out: list[_Candidate] = []
        regen = cfg.mode == "regenerate"
        if "substitute" in cfg.edits and not (old in self.eos and not regen):
            for t in tokens + extra:
                if t == old and (not regen or i + 1 >= state.greedy_from):
                    continue  # the incumbent itself (under regenerate: when its suffix is already greedy)
                tail = [t] if (regen or t in self.eos) else [t] + ids[i + 1 :]
                out.append(_Candidate(i, "substitute", tail, old, t, exempt=t in extra))
        if not regen and "delete" in cfg.edits and old not in self.eos and i + 1 < len(ids):
            out.append(_Candidate(i, "delete", ids[i + 1 :], old, None))
        if not regen and "insert" in cfg.edits and len(ids) < cfg.max_new_tokens:
            for t in tokens + extra:
                if t != old and t not in self.eos:
                    out.append(_Candidate(i, "insert", [t] + ids[i:], None, t, exempt=t in extra))
        return out

    def _proposed_tokens(self, state: _State, i: int) -> list[int]:
        """The model's tokens for position i, best first: top-k of state.dist[i] ((vocab,)
        float32 logits) above min_prob, then or instead the gradient's swaps (cfg.proposal)."""
        cfg = self.cfg
        logits = state.dist[i]
        if cfg.top_k is None:
            tokens = list(range(logits.shape[0]))
        else:
            k = min(cfg.top_k, logits.shape[0])
            top = np.argpartition(-logits, k - 1)[:k]
            tokens = [int(t) for t in top[np.argsort(-logits[top], kind="stable")]]
        if cfg.min_prob > 0:
            p = np.exp(log_softmax(logits[None])[0])
            tokens = [t for t in tokens if p[t] >= cfg.min_prob]
        if state.swaps is not None:
            grad_tokens = [int(t) for t in state.swaps[i]]
            tokens = grad_tokens if cfg.proposal == "gradient" else tokens + [t for t in grad_tokens if t not in tokens]
        return tokens

    def canonical(self, ids: Sequence[int], i: int) -> bool:
        """Does the text around position i re-tokenize to the same ids? (local, boundary-safe)"""
        window = [t for t in ids[max(0, i - 2) : i + 3] if t not in self.eos]
        if not window:
            return True
        tok = self.lm.tokenizer
        return _encode_roundtrip(tok, tok.decode(window, skip_special_tokens=False)) == window
