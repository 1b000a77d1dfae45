"""Candidate scoring: the J of every candidate of a group, in batched passes on the incumbent's KV.

A batch of candidates starts from the incumbent's cache sliced at each candidate's position
(kvstack.stack_prefix) and is extended pass by pass: keep mode feeds the rest of Y in chunks,
regenerate mode decodes greedily (verifying tokens drafted from the incumbent in the same pass).
Between passes, rows that ended are judged and the others may be pruned (exact) or screened
(approximate, RefineConfig.screen).

The result is a function of the candidates alone, never of the order rows finish in (which hangs
on chunk, draft, pruning and, near the context, on how many tokens a pass can take): the highest
J, and among equal J the candidate proposed first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ortrefine.runtime.kvstack import compact, stack_prefix
from ortrefine.runtime.logprobs import gather_logprobs
from ortrefine.runtime.refine.rows import _Best, _draft, _Rows

if TYPE_CHECKING:
    from ortrefine.runtime.guide import Guide
    from ortrefine.runtime.objectives import Objective
    from ortrefine.runtime.refine.config import RefineConfig
    from ortrefine.runtime.refine.proposals import _Candidate
    from ortrefine.runtime.refine.result import Cost
    from ortrefine.runtime.refine.state import _State
    from ortrefine.runtime.session import LM


class _Scorer:
    """The refiner's scoring side; mixed into _Refiner (loop.py), which sets these attributes and
    provides `_ref_lp`, `judge` and `canonical`."""

    cfg: RefineConfig
    lm: LM
    cost: Cost
    objective: Objective
    eos: set[int]
    prompt_len: int
    ref_ids: np.ndarray
    use_ref: bool
    guide: Guide | None

    # a free function of kvstack; kept reachable on the refiner, where tests call it
    _stack_prefix = staticmethod(stack_prefix)

    def score_group(self, state: _State, cands: list[_Candidate]) -> tuple[float, list[int] | None, _Candidate | None, np.ndarray | None, dict]:
        """Best (J, ids, candidate, lp, parts) among the candidates; ids None when none finished.

        Equal J is common, not a float accident: moving one token of a run (`aaab` -> `aaba`)
        leaves a bigram's log P and the repetition count unchanged, and taking whichever tied row
        finished first made the result depend on the context length. So ties go to the
        candidate proposed first. Batches of max_rows bound the memory (top_k None proposes the
        whole vocabulary).
        """
        best = _Best(-math.inf, None, None, None, {}, len(cands))
        for lo in range(0, len(cands), self.cfg.max_rows):
            best = self._score_rows(state, cands[lo : lo + self.cfg.max_rows], lo, best)
        return best[:5]

    def _score_rows(self, state: _State, cands: list[_Candidate], offset: int, best: _Best) -> _Best:
        """`best` updated with one batch of at most max_rows candidates; offset: the rank of the first.

        The rows share passes: each pass extends every alive row, and a row leaves as soon as it
        ends, is pruned or is screened out, so the passes narrow as the batch goes on.
        """
        rows = self._new_rows(state, cands)
        while len(rows.alive):
            room = self._fit_context(rows)
            tokens, given = self._next_tokens(state, rows, room)
            self._score_first(rows, tokens)
            need = self._rows_to_feed(rows, tokens)
            if need:
                self._feed(rows, tokens, given, need)
            else:  # every row ended on its one token: no pass
                rows.alive = np.zeros(0, dtype=np.int64)
            if rows.finished:
                best = self._judge_finished(state, rows, best, offset)
                rows.finished = []
            self._prune(state, rows, best)
            self._screen(state, rows)
        return best

    def _new_rows(self, state: _State, cands: list[_Candidate]) -> _Rows:
        """Each row starts on the incumbent's cache cut at its candidate's position: nothing
        before an edit is computed again."""
        cfg = self.cfg
        R = len(cands)
        starts = np.array([c.start for c in cands])
        kv, mask = stack_prefix(state.kv, self.prompt_len + starts)
        return _Rows(
            cands=cands,
            tails=[[] for _ in range(R)],
            tail_lp=[[] for _ in range(R)],
            tail_ref=[[] for _ in range(R)],
            pending=[list(c.pending) for c in cands],
            alive=np.arange(R),
            next_dist=state.dist[starts],
            kv=kv,
            mask=mask,
            prefix_lp=np.concatenate([[0.0], np.cumsum(state.lp)]),
            prefix_ref=np.concatenate([[0.0], np.cumsum(state.ref_lp)]) if state.ref_lp is not None else None,
            can_prune=cfg.prune and self.objective.can_prune(),
            screening=cfg.screen > 0 and R > cfg.screen_keep,
            y=list(state.ids),
        )

    def _fit_context(self, rows: _Rows) -> int:
        """Room left in the model's context for this pass's tokens (>= 1).

        Each row's real tokens fit (prompt + output <= context), but the batch is wider: the
        masked gap after shorter prefixes and the masked rejected drafts. Near the context the
        masked positions are dropped and fewer tokens are fed per pass; elsewhere nothing changes.
        """
        cfg = self.cfg
        context = self.lm.bundle.context_length
        want = (1 + cfg.draft) if cfg.mode == "regenerate" else max(cfg.chunk, cfg.screen + 1 if rows.screening else 1)
        if rows.mask.shape[1] + want > context:
            rows.kv, rows.kv_rows, rows.mask = compact(rows.kv, rows.kv_rows, rows.mask)
        return context - rows.mask.shape[1]  # an alive row has fed at most P + max_new - 1 tokens

    def _next_tokens(self, state: _State, rows: _Rows, room: int) -> tuple[list[list[int]], list[bool]]:
        """Each alive row's tokens for this pass, and whether they were given.

        Given tokens go first (a chunk in keep mode; up to the screen's depth while it is to
        come). Then the greedy token, plus tokens drafted from the incumbent to verify in the
        same pass.
        """
        cfg = self.cfg
        regen = cfg.mode == "regenerate"
        tokens: list[list[int]] = []
        given: list[bool] = []
        for j, r in enumerate(rows.alive):
            pending, tail = rows.pending[r], rows.tails[r]
            given.append(bool(pending))
            if pending:
                n = 1 if regen else (max(1, cfg.screen + 1 - len(tail)) if rows.screening else cfg.chunk)
                n = max(1, min(n, room))
                tokens.append(pending[:n])
                del pending[:n]
            else:
                start = rows.cands[r].start
                g = self._choose(state.ids[:start] + tail, rows.next_dist[j])
                left = cfg.max_new_tokens - start - len(tail) - 1
                tokens.append([g] + _draft(state.ids, start, tail + [g], min(left, cfg.draft, room - 1), self.eos))
        return tokens, given

    def _score_first(self, rows: _Rows, tokens: list[list[int]]) -> None:
        """The first token of each row is scored by the logits the last pass already gave."""
        first = np.array([t[0] for t in tokens])
        first_lp = gather_logprobs(rows.next_dist, first).astype(np.float64)
        for j, r in enumerate(rows.alive):
            rows.tails[r].append(int(first[j]))
            rows.tail_lp[r].append(float(first_lp[j]))
            if self.use_ref:
                rows.tail_ref[r].extend(self._ref_lp(rows.next_dist[j : j + 1], rows.length(r) - 1).tolist())

    def _choose(self, prefix: list[int], logits: np.ndarray) -> int:
        """The regenerated suffix's next token after `prefix` (Y's tokens so far): the greedy
        choice, or the keyword guide's (runtime/guide.py)."""
        return int(np.argmax(logits)) if self.guide is None else self.guide.pick(prefix, logits)

    def _ended(self, rows: _Rows, r: int) -> bool:
        """Row r is complete: it hit eos or the length cap, or (keep mode) fed all of Y's rest,
        or (regenerate, guided) its sentence ended."""
        if (rows.tails[r][-1] in self.eos or rows.length(r) >= self.cfg.max_new_tokens
                or (not rows.pending[r] and self.cfg.mode != "regenerate")):
            return True
        return self.guide is not None and not rows.pending[r] and self.guide.ends(rows.ids(r))

    def _rows_to_feed(self, rows: _Rows, tokens: list[list[int]]) -> list[int]:
        """Alive rows (j) that need a forward pass; a row that ends on its one token this pass
        finishes without one."""
        need = []
        for j, r in enumerate(rows.alive):
            if len(tokens[j]) == 1 and self._ended(rows, r):
                rows.finished.append(r)
            else:
                need.append(j)
        return need

    def _feed(self, rows: _Rows, tokens: list[list[int]], given: list[bool], need: list[int]) -> None:
        """One forward pass for the `need` rows; its verified tokens join their tails, rows that
        ended on them finish and the rest go on from the pass's cache."""
        past_width = rows.mask.shape[1]
        out, full_mask, fed = self._forward(rows, tokens, need)
        next_dist = self._accept_tokens(rows, tokens, given, need, out.logits, full_mask, fed, past_width)
        keep_q = []
        for q, j in enumerate(need):
            if self._ended(rows, rows.alive[j]):
                rows.finished.append(rows.alive[j])
            else:
                keep_q.append(q)
        keep = np.array(keep_q, dtype=np.int64)
        rows.alive = np.array([rows.alive[need[q]] for q in keep_q], dtype=np.int64)
        rows.kv, rows.kv_rows = out.kv, (keep if len(keep_q) != len(need) else None)
        rows.mask, rows.next_dist = full_mask[keep], next_dist[keep]

    def _forward(self, rows: _Rows, tokens: list[list[int]], need: list[int]):
        """The pass itself. Returns its output (logits (N, S, vocab) float32 and the cache), the
        (N, W + S) int64 mask it ran under and the tokens each of the N rows fed."""
        lm = self.lm
        regen = self.cfg.mode == "regenerate"
        idx = np.array(need)
        # keep mode, a row's last chunk: its final token is only a target (its row finishes
        # here), so it is not fed; every other row feeds all its tokens
        fed = [tokens[j][:-1] if not regen and not rows.pending[rows.alive[j]] else tokens[j] for j in need]
        width = max(len(t) for t in fed)
        tok = np.full((len(need), width), lm.bundle.pad_id, dtype=np.int64)
        new_mask = np.zeros((len(need), width), dtype=np.int64)
        for q, t in enumerate(fed):
            tok[q, : len(t)] = t
            new_mask[q, : len(t)] = 1
        picked = idx if rows.kv_rows is None else rows.kv_rows[idx]
        sub_kv = rows.kv if rows.kv_rows is None and len(idx) == rows.kv.batch else rows.kv.rows(picked)
        full_mask = np.concatenate([rows.mask[idx], new_mask], axis=1)
        out = lm.forward(tok, sub_kv, full_mask)
        self.cost.forward_tokens += int(new_mask.sum())
        self.cost.passes += 1
        return out, full_mask, fed

    def _accept_tokens(self, rows: _Rows, tokens: list[list[int]], given: list[bool], need: list[int],
                       logits: np.ndarray, full_mask: np.ndarray, fed: list[list[int]], past_width: int) -> np.ndarray:
        """Tails extended by what the pass scored: given tokens all, drafted ones while they are
        the greedy choice (the rejected stay in the cache, masked out in full_mask).

        logits: (N, S, vocab) float32. Returns (N, vocab) float32, each row's next-token logits;
        a row that fed its whole chunk goes on from the logits after it, and one that fed less
        (keep mode's last chunk) finishes now, its row left unset.
        """
        new_next = np.empty((len(need), logits.shape[2]), dtype=np.float32)
        for q, j in enumerate(need):
            r, t = rows.alive[j], tokens[j]
            a = len(t) - 1
            if self.cfg.mode == "regenerate" and not given[j]:
                a = self._verified_draft(rows.ids(r), t, logits[q])
                full_mask[q, past_width + 1 + a :] = 0
            if a:
                lps = gather_logprobs(logits[q, :a], np.array(t[1 : 1 + a])).astype(np.float64)
                rows.tails[r].extend(int(x) for x in t[1 : 1 + a])
                rows.tail_lp[r].extend(lps.tolist())
                if self.use_ref:
                    rows.tail_ref[r].extend(self._ref_lp(logits[q, :a], rows.length(r) - a).tolist())
            if a < len(fed[q]):
                new_next[q] = logits[q, a]
        return new_next

    def _verified_draft(self, row_ids: list[int], t: list[int], logits: np.ndarray) -> int:
        """How many of the drafted t[1:] are the suffix's own choice (`_choose`) after the tokens
        before them. row_ids: the row's Y so far, t[0] last. logits: (S, vocab) float32, the
        row's logits after each fed token."""
        self.cost.draft_tokens += len(t) - 1
        a = 0
        prefix = list(row_ids)
        while a < len(t) - 1 and t[a] not in self.eos and not (self.guide is not None and self.guide.ends(prefix)) \
                and self._choose(prefix, logits[a]) == t[a + 1]:
            prefix.append(t[a + 1])
            a += 1
        self.cost.draft_accepted += a
        return a

    def _judge_finished(self, state: _State, rows: _Rows, best: _Best, offset: int) -> _Best:
        """`best` updated with the finished rows: higher J wins, equal J the lower rank (offset + row)."""
        ids, lps, refs, keep = [], [], [], []
        for r in rows.finished:
            c = rows.cands[r]
            full = state.ids[: c.start] + rows.tails[r]
            if not self.canonical(full, c.start) or (c.kind == "delete" and not self.canonical(full, max(0, c.start - 1))):
                self.cost.noncanonical += 1
                continue
            ids.append(full)
            lps.append(np.concatenate([state.lp[: c.start], rows.tail_lp[r]]))
            if self.use_ref:
                refs.append(np.concatenate([state.ref_lp[: c.start], rows.tail_ref[r]])[: len(self.ref_ids)])
            keep.append(r)
        if not ids:
            return best
        J, parts = self.judge(ids, lps, refs if self.use_ref else None)
        q = min(range(len(keep)), key=lambda k: (-J[k], keep[k]))
        rank = offset + keep[q]
        if J[q] > best.J or (J[q] == best.J and rank < best.rank):
            return _Best(float(J[q]), ids[q], rows.cands[keep[q]], lps[q], {k: float(v[q]) for k, v in parts.items()}, rank)
        return best

    def _prune(self, state: _State, rows: _Rows, best: _Best) -> None:
        """Exact pruning: drop rows whose best possible J can neither be accepted nor beat or tie
        the best so far.

        A tie may still win on rank: pruning must not decide ties, or the order rows finish in
        would. `slack` covers the bound's float error (its sum runs in another order than J's),
        so a row whose J ties the best is never dropped by a rounding.
        """
        if not (rows.can_prune and len(rows.alive)):
            return
        cfg, cands, prefix_ref = self.cfg, rows.cands, rows.prefix_ref
        lp_sum = np.array([rows.prefix_lp[cands[r].start] + sum(rows.tail_lp[r]) for r in rows.alive])
        ref_sum = np.array([(prefix_ref[min(cands[r].start, len(prefix_ref) - 1)] if prefix_ref is not None else 0.0)
                            + sum(rows.tail_ref[r]) for r in rows.alive])
        length = np.array([rows.length(r) for r in rows.alive], dtype=np.float64)
        bar = max(state.J + cfg.tol, best.J)  # what an accepted candidate must beat
        slack = 1e-9 * max(1.0, abs(bar))
        ok = self.objective.upper_bound(lp_sum, ref_sum, length) > bar - slack
        if ok.all():
            return
        for r in rows.alive[~ok]:
            self.cost.pruned += 1
            self.cost.tokens_skipped += len(rows.pending[r]) if cfg.mode != "regenerate" else cfg.max_new_tokens - rows.length(r)
        rows.keep(np.nonzero(ok)[0])

    def _screen(self, state: _State, rows: _Rows) -> None:
        """The approximate screen (cfg.screen), once every row has its edit + `screen` tokens scored."""
        cfg = self.cfg
        if not (rows.screening and all(len(rows.tails[r]) > cfg.screen for r in rows.alive)):
            return
        rows.screening = False
        if len(rows.alive) <= cfg.screen_keep:
            return
        est = self._screen_estimate(state, rows.cands, rows.alive, rows.tails, rows.tail_lp, rows.tail_ref, rows.pending,
                                    rows.prefix_lp, rows.prefix_ref)
        keep = np.sort(np.argsort(-est, kind="stable")[: cfg.screen_keep])
        self.cost.screened_out += len(rows.alive) - len(keep)
        rows.keep(keep)

    def _screen_estimate(self, state: _State, cands: list[_Candidate], alive: np.ndarray, tails: list[list[int]],
                         tail_lp: list[list[float]], tail_ref: list[list[float]], pending: list[list[int]],
                         prefix_lp: np.ndarray, prefix_ref: np.ndarray | None) -> np.ndarray:
        """(A,) float64: each alive row's objective bound with the tokens not yet scored given the
        incumbent's log-probs. Takes the rows' lists one by one (see _Rows), so a test can spy on
        exactly which tokens each estimate stands for.

        keep: a row's unscored tokens are the last len(pending) tokens of Y, so their log-probs in
        Y's context stand in for their log-probs after the edit. regenerate: the suffix is unknown;
        the incumbent's log-probs at the same positions stand in (a row whose greedy tail runs
        past |Y| gets nothing more).
        """
        n_y = len(state.ids)
        lp_est, ref_est, length = [], [], []
        for r in alive:
            done = cands[r].start + len(tails[r])
            if self.cfg.mode == "keep":
                rest_from, n_len = n_y - len(pending[r]), done + len(pending[r])
            else:
                rest_from, n_len = min(done, n_y), max(done, n_y)
            lp_est.append(prefix_lp[cands[r].start] + sum(tail_lp[r]) + prefix_lp[n_y] - prefix_lp[rest_from])
            ref = 0.0
            if prefix_ref is not None:
                m = len(prefix_ref) - 1
                ref = prefix_ref[min(cands[r].start, m)] + sum(tail_ref[r]) + prefix_ref[m] - prefix_ref[min(rest_from, m)]
            ref_est.append(ref)
            length.append(n_len)
        return self.objective.upper_bound(np.array(lp_est), np.array(ref_est), np.array(length, dtype=np.float64), lm_only=True)
