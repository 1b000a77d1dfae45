"""The training loop. Every step is a function of (seed, step) and the checkpointed state, so a
run stopped anywhere and resumed draws the same loss curve as one that never stopped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ortrefine.errors import ConfigError

from .checkpoint import _load_state, _save_state
from .config import DistillConfig
from .losses import collate, distill_losses, heldout_metrics
from .schedule import _mix, batch_indices, lr_at
from .workdir import STAMP_FILE, STATE_FILE


@dataclass
class _Trainee:
    """What every step touches, passed as one so the loop's pieces keep short signatures."""

    teacher: Any
    student: Any
    opt: Any
    params: list[Any]
    pad: int


def make_trainee(cfg: DistillConfig, teacher: Any, student: Any, pad: int) -> _Trainee:
    """Embeddings stay frozen unless asked for: on small budgets the teacher's are better than
    what a short run would make of them."""
    import torch

    if not cfg.train_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
        if student.get_output_embeddings() is not None:
            student.get_output_embeddings().weight.requires_grad_(False)
    params = [q for q in student.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return _Trainee(teacher, student, opt, params, pad)


def starting_point(cfg: DistillConfig, t: _Trainee, work: Path, stamp: dict[str, Any],
                   heldout: Sequence[Sequence[int]]) -> tuple[dict[str, list[float]], dict[str, float], int, int | None]:
    """(history, before, start step, resumed_from). A resumed run takes `before` from the
    checkpoint: the untrained student it described no longer exists to be measured."""
    history: dict[str, list[float]] = {"loss": [], "kd": [], "ce": []}
    start, resumed_from = 0, None
    if cfg.resume:
        state = _load_state(work / STATE_FILE, t.student, t.opt)
        if state.get("fingerprint") != stamp:
            raise ConfigError(f"the checkpoint {work / STATE_FILE} does not match its {STAMP_FILE}; pass --overwrite without --resume to start over")
        history, before = state["history"], state["before"]
        start = resumed_from = int(state["step"])
    else:
        before = heldout_metrics(t.teacher, t.student, heldout, t.pad, cfg.temperature, cfg.batch_size)
    return history, before, start, resumed_from


def train_steps(cfg: DistillConfig, t: _Trainee, train: Sequence[Sequence[int]], work: Path, stamp: dict[str, Any],
                history: dict[str, list[float]], before: dict[str, float], start: int) -> None:
    """Steps start..steps-1, appended to `history` in place. The checkpoint is written before
    on_step runs, so an exception from on_step (an interrupt) loses no finished step."""
    from tqdm import tqdm

    t.student.train()
    per_step = cfg.batch_size * cfg.grad_accum
    bar = tqdm(total=cfg.steps, initial=start, desc="distill", unit="step", disable=not cfg.progress)
    for step in range(start, cfg.steps):
        totals, lr = _step(cfg, t, train, step)
        for k in history:
            history[k].append(totals[k])
        bar.update()
        bar.set_postfix(loss=f"{totals['loss']:.3f}", kd=f"{totals['kd']:.3f}", ce=f"{totals['ce']:.3f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save_state(work / STATE_FILE, t.student, t.opt, {
                "fingerprint": stamp, "step": done, "history": history, "before": before, "data_position": done * per_step,
            })
        if cfg.on_step is not None:
            cfg.on_step(done, {**totals, "lr": lr})
    bar.close()


def _step(cfg: DistillConfig, t: _Trainee, train: Sequence[Sequence[int]], step: int) -> tuple[dict[str, float], float]:
    """One optimizer step over grad_accum micro-batches; (mean loss terms, learning rate)."""
    import torch

    torch.manual_seed(_mix(cfg.seed, 3, step))  # dropout of step s depends on (seed, s) only
    lr = lr_at(step, cfg.steps, cfg.lr)
    for group in t.opt.param_groups:
        group["lr"] = lr
    totals = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
    per_step = cfg.batch_size * cfg.grad_accum
    for micro in range(cfg.grad_accum):
        idx = batch_indices(cfg.seed, step * per_step + micro * cfg.batch_size, cfg.batch_size, len(train))
        for k, v in _micro_batch(cfg, t, [train[i] for i in idx]).items():
            totals[k] += v / cfg.grad_accum
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(t.params, cfg.max_grad_norm)
    t.opt.step()
    t.opt.zero_grad(set_to_none=True)
    return totals, lr


def _micro_batch(cfg: DistillConfig, t: _Trainee, seqs: Sequence[Sequence[int]]) -> dict[str, float]:
    """Backpropagate one micro-batch scaled by 1/grad_accum, so the accumulated gradient is the
    step's mean; the returned loss terms are unscaled, for the step's report."""
    import torch

    ids, mask = collate(seqs, t.pad)
    with torch.no_grad():
        t_logits = t.teacher(input_ids=ids, attention_mask=mask).logits
    s_logits = t.student(input_ids=ids, attention_mask=mask).logits
    kd, ce, _, _ = distill_losses(s_logits, t_logits, ids, mask, cfg.temperature)
    loss = cfg.alpha_kd * kd + cfg.alpha_ce * ce
    (loss / cfg.grad_accum).backward()
    return {"loss": float(loss.detach()), "kd": float(kd.detach()), "ce": float(ce.detach())}
