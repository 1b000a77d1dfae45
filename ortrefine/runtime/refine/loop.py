"""_Refiner: one refinement run, from the prompt's pass to the last sweep.

It holds what every part of a run shares (the LM, the objective, the prompt's cache, the cost
counters) and mixes in the proposal, scoring and relaxation sides, so each lives in its own
module and still reads `self.cfg`, `self.cost` and the rest.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ortrefine.errors import ConfigError, PromptError
from ortrefine.lexicon import ends_sentence
from ortrefine.runtime.decoding import GenerationConfig, generate
from ortrefine.runtime.guide import Guide, guided_decode
from ortrefine.runtime.logprobs import gather_logprobs
from ortrefine.runtime.objectives import Batch, Context, Objective, has_guard
from ortrefine.runtime.refine.orders import ORDERS
from ortrefine.runtime.refine.proposals import _Candidate, _Proposer
from ortrefine.runtime.refine.relax_sweep import _RelaxSweep
from ortrefine.runtime.refine.result import Cost, Edit
from ortrefine.runtime.refine.scorer import _Scorer
from ortrefine.runtime.refine.state import _State

if TYPE_CHECKING:
    from ortrefine.runtime.kvcache import ForwardOutput
    from ortrefine.runtime.refine.config import RefineConfig
    from ortrefine.runtime.session import LM


def _ends_at(head: str, rest: str) -> bool:
    """Whether an output may end after `head`, where its next token added `rest`: `head` ends a
    sentence and `rest` starts a new word or line, not more of the same word."""
    return ends_sentence(head) and rest[:1].isspace()


class _Refiner(_Proposer, _Scorer, _RelaxSweep):
    """One refinement run (holds the LM, objective, prompt cache and cost counters)."""

    def __init__(self, lm: LM, prompt: str, cfg: RefineConfig) -> None:
        self.lm, self.cfg, self.prompt = lm, cfg, prompt
        self.cost = Cost()
        self.rng = np.random.default_rng(cfg.seed)
        self.eos = set(lm.eos_ids)
        # regenerated suffixes (and Y⁰, unless given) follow the keyword guide: runtime/guide.py
        self.guide = Guide(lm.tokenizer, lm.eos_ids, cfg.keywords, cfg.guide_config) if cfg.guide_config is not None else None
        self.grad_model = None
        self._head: tuple[list[int], ForwardOutput] | None = None
        self._budget_base = 0  # the prompt's pass, where Y⁰'s decode ran it: budget_tokens counts it as before
        if cfg.proposal != "topk" or cfg.optimizer == "gradient":
            from ortrefine.runtime.gradient import GradientModel

            self.grad_model = GradientModel.open(lm.bundle, provider="cuda" if lm.provider == "cuda" else "cpu")

    # -- setup -----------------------------------------------------------------------------
    def initial_output(self, prompt_ids: list[int]) -> list[int]:
        """Y⁰: cfg.initial encoded, or decoded under cfg.initial_strategy within the length cap."""
        cfg = self.cfg
        if cfg.initial is not None:
            ids = self.lm.tokenizer.encode_plain(cfg.initial)
            if not ids:
                raise ConfigError("--initial text encodes to no tokens; give the output to refine")
            if len(ids) > cfg.max_new_tokens:
                raise ConfigError(f"--initial is {len(ids)} tokens, more than --max-new-tokens {cfg.max_new_tokens}; raise it")
            return ids
        head = self._prompt_head(prompt_ids)
        if self.guide is not None and (cfg.initial_strategy is None or cfg.initial_strategy.strategy == "greedy"):
            return guided_decode(self.lm, prompt_ids, self.guide, cfg.max_new_tokens, head=head)[0]
        gen = cfg.initial_strategy or GenerationConfig(max_new_tokens=cfg.max_new_tokens)
        if gen.max_new_tokens != cfg.max_new_tokens:
            gen = replace(gen, max_new_tokens=cfg.max_new_tokens)
        if gen.strategy == "sample" and gen.seed is None:
            gen = replace(gen, seed=cfg.seed)
        out = generate(self.lm, prompt_ids, gen, head=head)
        if not out.ids:
            raise PromptError("the initial decode produced no tokens; nothing to refine")
        return out.ids

    def build_context(self, prompt_text: str, initial_len: int, prompt_ids: list[int] | None = None) -> None:
        """The objective, built once Y⁰ is known: some terms read its length."""
        cfg, tok = self.cfg, self.lm.tokenizer
        ref_ids = tok.encode_plain(cfg.reference) if cfg.reference else []
        self.ctx = Context(
            prompt=prompt_text, tokenizer=tok, eos_ids=self.lm.eos_ids, max_len=cfg.max_new_tokens,
            keywords=cfg.keywords, reference=cfg.reference, reference_ids=ref_ids, initial_len=initial_len,
            prompt_ids=list(prompt_ids or []), chat=cfg.chat,
            guided=self.guide is not None and self.guide.cfg.bias > 0,
            finished=self._task_end(),
        )
        self.objective = Objective(cfg.objectives, self.ctx)
        self.ref_ids = np.array(ref_ids, dtype=np.int64)
        self.use_ref = self.objective.needs_reference

    def _task_end(self):
        """Where the task ends an output without eos: a keyword prompt asks for one sentence, so
        its end is the guide's sentence stop, also with the guide off (J must not depend on
        whether the guide steered: evaluate_objective and --no-guide score the same text alike)."""
        if self.guide is not None:
            return self.guide.ends
        if self.cfg.keywords:
            return Guide(self.lm.tokenizer, self.lm.eos_ids, self.cfg.keywords).ends
        return None

    def _prompt_head(self, prompt_ids: list[int]) -> ForwardOutput:
        """The one pass over the prompt (its cache and last logits), for Y⁰'s decode and the
        search alike: both begin from the same pass over the same ids, and a keyword prompt
        carrying the answered examples makes it the longest single pass of a refinement. Neither
        changes it (decoding copies the cache into its own buffer, the guide its logits)."""
        if self._head is None or self._head[0] != prompt_ids:
            self._head = (list(prompt_ids), self.lm.prefill(prompt_ids, keep_last=1))
        return self._head[1]

    def start(self, prompt_ids: list[int]) -> None:
        """One pass over the prompt (Y⁰'s, when it was decoded here); every later pass reuses its cache."""
        shared = self._head is not None and self._head[0] == prompt_ids
        head = self._prompt_head(prompt_ids)
        if shared:  # Y⁰'s decode ran it and counted it (Cost.initial_forward_tokens); budget_tokens still counts it
            self._budget_base = len(prompt_ids)
        else:
            self.cost.forward_tokens += len(prompt_ids)
            self.cost.passes += 1
        self.prompt_kv, self.prompt_last = head.kv, head.logits[0, -1]
        self.prompt_ids, self.prompt_len = list(prompt_ids), len(prompt_ids)

    # -- full pass over X ⧺ Y ---------------------------------------------------------------
    def build_state(self, ids: list[int]) -> _State:
        """The incumbent for `ids`, from one fresh pass on the prompt's cache (the J that decides)."""
        out = self.lm.forward(np.array([ids], dtype=np.int64), self.prompt_kv)
        self.cost.forward_tokens += len(ids)
        self.cost.passes += 1
        dist = np.concatenate([self.prompt_last[None], out.logits[0]], axis=0)
        lp = gather_logprobs(dist[: len(ids)], np.array(ids)).astype(np.float64)
        ref_lp = self._ref_lp(dist[: len(ids)], 0) if self.use_ref else None
        J, parts = self.judge([ids], [lp], [ref_lp] if ref_lp is not None else None)
        greedy = self._own_choices(ids, dist)
        g = len(ids)
        while g > 0 and greedy[g - 1]:
            g -= 1
        if not (ids[-1] in self.eos or len(ids) >= self.cfg.max_new_tokens or (self.guide is not None and self.guide.ends(ids))):
            g = len(ids)  # an unfinished Y is not a complete greedy continuation anywhere
        state = _State(ids, dist, out.kv, lp, ref_lp, float(J[0]), {k: float(v[0]) for k, v in parts.items()}, g)
        if self.grad_model is not None:
            self._add_gradient(state)
        return state

    def _own_choices(self, ids: list[int], dist: np.ndarray) -> np.ndarray:
        """(L,) bool: whether each token of Y is what a regenerated suffix would choose there
        (the greedy token, or the guide's) — and, guided, whether Y had not already ended."""
        if self.guide is None:
            return np.argmax(dist[: len(ids)], axis=-1) == np.array(ids)
        return np.array([self.guide.pick(ids[:t], dist[t]) == ids[t] and not self.guide.ends(ids[:t]) for t in range(len(ids))])

    def _add_gradient(self, state: _State) -> None:
        """HotFlip proposals and gradient norms for every position of Y, from one gradient pass."""
        t0 = time.perf_counter()
        full = self.prompt_ids + state.ids
        grad = self.grad_model.grad(full, self.prompt_len)
        positions = np.arange(self.prompt_len, len(full))
        k = self.cfg.top_k or 8
        swaps = self.grad_model.topk_swaps(full, positions, k, grad=grad, banned=sorted(self.eos))
        state.swaps = swaps.tokens
        state.grad_norms = np.linalg.norm(grad.grad_embeds[positions], axis=-1)
        self.cost.gradient_calls += 1
        self.cost.gradient_seconds += time.perf_counter() - t0

    def _ref_lp(self, rows: np.ndarray, start: int) -> np.ndarray:
        """(n,) float64 log p(R_t) for positions start.. start+len(rows) that the reference covers.
        rows: (n', vocab) float32 logits of those positions, n <= n'."""
        n = max(0, min(len(rows), len(self.ref_ids) - start))
        if n == 0:
            return np.zeros(0)
        return gather_logprobs(rows[:n], self.ref_ids[start : start + n]).astype(np.float64)

    def judge(self, ids: list[list[int]], lps: list[np.ndarray], ref_lps: list[np.ndarray] | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(K,) float64 J of K finished outputs and each term's raw values; lps[k]: (len(ids[k]),)."""
        texts = [self.lm.tokenizer.decode(i) for i in ids]
        return self.objective.evaluate(Batch(self.prompt, ids, lps, texts, ref_lps))

    # -- the sweep loop ------------------------------------------------------------------------
    def run(self, prompt_ids: list[int], y0: list[int]) -> tuple[_State, _State, list[Edit], int, str]:
        """(Y⁰'s incumbent, Y*'s, the accepted edits, sweeps begun, stop reason)."""
        cfg = self.cfg
        self.start(prompt_ids)
        state = first = self.build_state(y0)
        edits: list[Edit] = []
        t0 = time.perf_counter()
        stop = "sweeps"
        sweep = 0
        for sweep in range(1, cfg.sweeps + 1):
            one_sweep = self._gradient_sweep if cfg.optimizer == "gradient" else self._coordinate_sweep
            state, accepted, spent = one_sweep(state, sweep, edits, t0)
            if spent is not None:
                return first, state, edits, sweep, spent
            if accepted == 0:
                stop = "converged"
                break
        spent = self._spent(t0)
        if spent is None:
            state = self._end_repair(state, sweep, edits)
        elif self._repairs_ends(state):
            stop = spent  # the budget, not the sweeps, ended the run: it left no time for the end repair
        return first, state, edits, sweep, stop

    def _repairs_ends(self, state: _State) -> bool:
        """Whether Y* should try ending at a sentence end: it is still degenerate by the guard
        term's checks (a loop or an editor's remark that one sweep of re-decoded suffixes
        regrows, because every suffix starts from the same seed), and J holds a guard to say so."""
        if not self.cfg.end_repair or state.parts.get("guard", 0.0) >= 0:
            return False
        return has_guard(self.objective.terms)

    def _end_repair(self, state: _State, sweep: int, edits: list[Edit]) -> _State:
        """Y* ended at each of its sentence ends, scored as one group (edits of kind "end"); the
        best is kept if J is higher, also on the full pass. A loop's first turns or the sentence
        before an editor's remark are often a clean, finished output, and the refiner's own
        proposals rarely put eos there."""
        if not self._repairs_ends(state):
            return state
        cands = [_Candidate(i, "end", [eos], state.ids[i], eos) for i, eos in self._sentence_ends(state)]
        if not cands:
            return state
        self.cost.end_repairs += 1
        self.cost.candidates += len(cands)
        found = self._best_edit(state, sweep, cands)
        if found is None:
            return state
        state, edit = found
        edits.append(edit)
        return state

    def _sentence_ends(self, state: _State) -> list[tuple[int, int]]:
        """(position, eos id) for each position i of Y whose prefix Y[:i] ends a sentence
        (lexicon.ends_sentence) and whose token i starts with whitespace, so the text did not go on
        in the same word ("example." of "example.com", "Node." of "Node.js"); the eos id is the one
        the model finds likeliest there (row i of state.dist is the distribution of token i)."""
        tok, ids = self.lm.tokenizer, state.ids
        eos_ids = list(self.lm.eos_ids)
        heads = [tok.decode(ids[:i]) for i in range(len(ids) + 1)]  # heads[i]: the text of Y[:i]
        out = []
        for i in range(1, len(ids)):
            if ids[i] in self.eos or ids[i - 1] in self.eos:
                continue
            if _ends_at(heads[i], heads[i + 1][len(heads[i]):]):
                out.append((i, max(eos_ids, key=lambda e: float(state.dist[i][e]))))
        return out

    def _spent(self, t0: float) -> str | None:
        """The stop reason once a budget is used up; checked before each batch, never inside one."""
        cfg = self.cfg
        if cfg.budget_seconds is not None and time.perf_counter() - t0 >= cfg.budget_seconds:
            return "budget-seconds"
        if cfg.budget_tokens is not None and self.cost.forward_tokens + self._budget_base >= cfg.budget_tokens:
            return "budget-tokens"
        return None

    def _gradient_sweep(self, state: _State, sweep: int, edits: list[Edit], t0: float) -> tuple[_State, int, str | None]:
        """(incumbent, edits accepted, budget stop reason); an accepted edit is appended to `edits`."""
        spent = self._spent(t0)
        if spent is not None:
            return state, 0, spent
        new_state, edit = self.relax_sweep(state, sweep)
        if edit is None:
            return state, 0, None
        edits.append(edit)
        return new_state, 1, None

    def _coordinate_sweep(self, state: _State, sweep: int, edits: list[Edit], t0: float) -> tuple[_State, int, str | None]:
        """(incumbent, edits accepted, budget stop reason); accepted edits are appended to `edits`.

        Positions are taken positions_per_batch at a time in the order's sequence, and the best
        edit among a group's candidates is accepted.
        """
        cfg = self.cfg
        accepted = 0
        order = ORDERS.get(cfg.order)(state, self.rng)
        visited: set[int] = set()
        cursor = 0
        while cursor < len(order):
            spent = self._spent(t0)
            if spent is not None:
                return state, accepted, spent
            group = [p for p in order[cursor : cursor + cfg.positions_per_batch] if p < len(state.ids) and p not in visited]
            cursor += cfg.positions_per_batch
            visited.update(group)
            cands = [c for p in group for c in self.proposals(state, p)]
            self.cost.positions_visited += len(group)
            if not cands:
                continue
            self.cost.candidates += len(cands)
            found = self._best_edit(state, sweep, cands)
            if found is None:
                continue
            state, edit = found
            edits.append(edit)
            accepted += 1
            if cfg.order == "l2r":  # positions after the edit saw the old Y: continue right after it
                visited = {p for p in visited if p <= edit.position}
                cursor = edit.position + 1
        return state, accepted, None

    def _best_edit(self, state: _State, sweep: int, cands: list[_Candidate]) -> tuple[_State, Edit] | None:
        """The group's best candidate as the new incumbent, if it beats the incumbent by tol."""
        cfg = self.cfg
        J, ids, cand, lp, parts = self.score_group(state, cands)
        if ids is None or not J > state.J + cfg.tol:
            return None
        new_state = self.build_state(ids)
        if not new_state.J > state.J + cfg.tol:
            # Batched and full passes can differ beyond float noise (int4 MatMulNBits), and
            # accepting on the batched score alone let two edits undo each other sweep after
            # sweep. The full pass decides.
            self.cost.rescore_rejected += 1
            return None
        tok = self.lm.tokenizer
        return new_state, Edit(
            sweep, cand.start, cand.kind, cand.old_id, cand.new_id,
            tok.token_strings([cand.old_id])[0] if cand.old_id is not None else None,
            tok.token_strings([cand.new_id])[0] if cand.new_id is not None else None,
            new_state.J - state.J, new_state.J,
        )
