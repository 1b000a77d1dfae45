"""The entry points: refine() a prompt's output, or evaluate J of a given output."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from ortrefine.runtime.examples import encode_with_examples
from ortrefine.runtime.refine.config import RefineConfig, _config_dict
from ortrefine.runtime.refine.loop import _Refiner
from ortrefine.runtime.refine.result import Output, RefineResult

if TYPE_CHECKING:
    from ortrefine.runtime.refine.state import _State
    from ortrefine.runtime.session import LM

# named after the package, the path users import and configure logging by
log = logging.getLogger("ortrefine.runtime.refine")


def _output(lm: LM, state: _State) -> Output:
    return Output(lm.tokenizer.decode(state.ids), list(state.ids), [float(x) for x in state.lp])


def _encode(lm: LM, prompt: str | Sequence[int], cfg: RefineConfig) -> tuple[list[int], RefineConfig]:
    """The prompt's ids as J reads them (with the answered keyword turns first where they can go),
    and the config, saying examples=False where they did not go in, so that the result records
    what J read and `evaluate_objective` with its config reads the same."""
    ids, used = encode_with_examples(lm, prompt, cfg.example_turns, cfg.chat, cfg.system, cfg.max_new_tokens)
    return ids, (replace(cfg, examples=False) if cfg.example_turns and not used else cfg)


def refine(lm: LM, prompt: str | Sequence[int], cfg: RefineConfig | None = None) -> RefineResult:
    """Decode Y⁰ (or take cfg.initial) and improve it by coordinate descent on J."""
    cfg = cfg or RefineConfig()
    if not lm.bundle.manifest.get("batch_invariant", True) and cfg.max_rows > 1:
        # dynamic int8 quantizes activations with one scale per batch: a candidate's score would
        # depend on its batch-mates, so candidates are scored one by one on such bundles
        if not getattr(lm, "_warned_batch_dependent", False):
            log.warning("%s is not batch-invariant (dynamic quantization): scoring candidates one at a time", lm.bundle.path)
            lm._warned_batch_dependent = True
        cfg = replace(cfg, max_rows=1)
    t_start = time.perf_counter()
    prompt_ids, cfg = _encode(lm, prompt, cfg)
    r = _Refiner(lm, prompt if isinstance(prompt, str) else lm.tokenizer.decode(prompt), cfg)
    before = lm.forward_tokens
    y0 = r.initial_output(prompt_ids)
    r.cost.initial_forward_tokens = lm.forward_tokens - before
    r.cost.initial_seconds = time.perf_counter() - t_start
    r.build_context(r.prompt, len(y0), prompt_ids)
    first, final, edits, sweeps, stop = r.run(prompt_ids, y0)
    retok = _retokenized(r, final)
    r.cost.seconds = time.perf_counter() - t_start
    return RefineResult(
        prompt=r.prompt,
        prompt_ids=prompt_ids,
        initial=_output(lm, first),
        final=_output(lm, final),
        objective_before={"total": first.J, **first.parts},
        objective_after={"total": final.J, **final.parts},
        final_retokenized=retok,
        edits=edits,
        cost=r.cost,
        sweeps=sweeps,
        stop_reason=stop,
        config=_config_dict(cfg),
    )


def evaluate_objective(lm: LM, prompt: str, output_ids: Sequence[int], cfg: RefineConfig,
                       initial_len: int | None = None) -> dict[str, float]:
    """J and every term of an output under `lm` (e.g. a judge bundle), from one fresh pass.
    initial_len: |Y⁰| of the refinement the output came from, which the length term measures
    against (default: the output's own length, which makes that term 0)."""
    prompt_ids, cfg = _encode(lm, prompt, cfg)
    r = _Refiner(lm, prompt, cfg)
    r.build_context(prompt, len(output_ids) if initial_len is None else initial_len, prompt_ids)
    r.start(prompt_ids)
    state = r.build_state(list(output_ids))
    return {"total": state.J, **state.parts}


def _retokenized(r: _Refiner, final: _State) -> dict[str, Any]:
    """Re-tokenize Y*'s text and recompute J from scratch (fresh pass, no cached state)."""
    tok = r.lm.tokenizer
    ids = tok.encode_plain(tok.decode(final.ids))
    if final.ids and final.ids[-1] in r.eos:
        ids = ids + [final.ids[-1]]
    if not ids:
        return {"ids": [], "same_ids": False, "objective": None}
    if r.prompt_len + len(ids) > r.lm.bundle.context_length:  # re-tokenized longer than the context allows
        return {"ids": ids, "same_ids": False, "objective": None}
    state = r.build_state(ids)
    return {"ids": ids, "same_ids": ids == final.ids, "objective": {"total": state.J, **state.parts}}
