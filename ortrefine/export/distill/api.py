"""`distill()`: the order of the steps is the reliability contract. Inputs are checked before
anything is written, the output is locked before the teacher loads, and the bundle appears
only once it is complete."""

from __future__ import annotations

import time
from typing import Any

from .commit import _export, distillation_record
from .config import DistillConfig, DistillResult
from .corpus import _corpus, _generated
from .losses import heldout_metrics
from .models import build_student, count_params, load_teacher
from .output import _check_out
from .planning import _check_work, _Plan, _plan_inputs
from .sampling import _pad_id
from .training import make_trainee, starting_point, train_steps
from .workdir import STATE_FILE, open_work


def distill(cfg: DistillConfig) -> DistillResult:
    """Distil, checkpoint, export. Bad input raises before anything is written.

    The output is claimed (ortrefine.bundle.write.claim_output: a lock beside it, the target
    checked) before the teacher is loaded and held until the bundle is in place, so a second run
    to the same output, `--overwrite` or not, fails at once instead of training into (or
    deleting) this run's `<out>.ckpt`, and a target that cannot be written fails before training.
    """
    from ortrefine.bundle.write import claim_output
    from ortrefine.export.sources import require_export_extra

    require_export_extra()  # a runtime-only install gets the pip command, not a traceback
    t0 = time.perf_counter()
    p = _plan_inputs(cfg)
    with claim_output(p.out, cfg.overwrite, protect=[p.bundle.path]) as claim:
        _check_out(cfg, p.out)  # again, under the lock: another run may have finished meanwhile
        _check_work(cfg, p)  # under the lock: no other run is using the work folder now
        import torch

        threads = torch.get_num_threads()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        try:
            return _run(cfg, p, t0, claim)
        finally:
            torch.set_num_threads(threads)


def _run(cfg: DistillConfig, p: _Plan, t0: float, claim: Any) -> DistillResult:
    """The work under the claim. The corpus is tokenized before the work folder is touched: it is
    the last check of the input, and a failing one must leave nothing behind."""
    teacher, tokenizer = load_teacher(p.source, p.bundle)
    student = build_student(teacher, p.layers)
    pad = _pad_id(teacher)
    train, heldout = _corpus(cfg, p, tokenizer)
    stamp = open_work(cfg, p.work, p.bundle.path, p.layers)
    if train is None:
        train, heldout = _generated(cfg, p, teacher, tokenizer, heldout)

    trainee = make_trainee(cfg, teacher, student, pad)
    history, before, start, resumed_from = starting_point(cfg, trainee, p.work, stamp, heldout)
    train_steps(cfg, trainee, train, p.work, stamp, history, before, start)

    student.eval()
    after = heldout_metrics(teacher, student, heldout, pad, cfg.temperature, cfg.batch_size)
    teacher_params, student_params = count_params(teacher), count_params(student)
    distillation = distillation_record(cfg, p, teacher, stamp, history, before, after, len(train), teacher_params, student_params)
    path, manifest = _export(cfg, p, student, tokenizer, distillation, claim)
    (p.work / STATE_FILE).unlink(missing_ok=True)  # the optimizer state is large; the bundle is written
    # the stamp stays: the folder holds the bundle's source checkpoint, and --overwrite needs it to know the folder is ours
    return DistillResult(
        path=path, manifest=manifest, layers=p.layers, losses=history["loss"], kd_losses=history["kd"],
        ce_losses=history["ce"], teacher_ppl=after["teacher_ppl"], student_ppl=after["student_ppl"],
        student_ppl_before=before["student_ppl"], heldout_kd_before=before["kd"], heldout_kd_after=after["kd"],
        eval_tokens=int(after["tokens"]), train_sequences=len(train), teacher_params=teacher_params,
        student_params=student_params, resumed_from=resumed_from, checkpoint_dir=p.work,
        seconds=time.perf_counter() - t0,
    )
