"""Turning the trained student into a bundle: its HF checkpoint saved as the bundle's source, then
the bundle written in a staging folder and renamed into place, so that an interrupt leaves either
the old output or the finished new one, never a half-written folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ortrefine.errors import ExportError

from .config import DistillConfig
from .output import _check_out
from .planning import _Plan
from .workdir import STUDENT_DIR


def distillation_record(cfg: DistillConfig, p: _Plan, teacher: Any, stamp: dict[str, Any], history: dict[str, list[float]],
                        before: dict[str, float], after: dict[str, float], train_sequences: int,
                        teacher_params: int, student_params: int) -> dict[str, Any]:
    """The manifest's `distillation` key: enough to tell later how the student was made and what
    it cost in quality, without the work folder."""
    return {
        "teacher": str(p.bundle.path.resolve()),
        "teacher_source": p.source.describe(),
        "layers": p.layers,
        "teacher_layers": teacher.config.num_hidden_layers,
        "steps": cfg.steps,
        "final_loss": history["loss"][-1],
        "final_kd": history["kd"][-1],
        "final_ce": history["ce"][-1],
        "first_loss": history["loss"][0],
        "settings": {k: v for k, v in stamp.items() if k not in ("teacher", "layers", "steps")},
        "data": str(cfg.data) if cfg.data is not None else {"self_generated": cfg.n_generate, "prompts": str(cfg.prompts) if cfg.prompts else None},
        "train_sequences": train_sequences,
        "heldout": {"source": str(cfg.eval_data) if cfg.eval_data else "split", "tokens": after["tokens"],
                    "teacher_ppl": after["teacher_ppl"], "student_ppl": after["student_ppl"],
                    "student_ppl_before": before["student_ppl"], "kd_before": before["kd"], "kd_after": after["kd"]},
        "teacher_params": teacher_params,
        "student_params": student_params,
    }


def _export(cfg: DistillConfig, p: _Plan, student: Any, tokenizer: Any, distillation: dict[str, Any],
            claim: Any) -> tuple[Path, dict[str, Any]]:
    """Save the student's HF checkpoint (its source) and write a validated bundle atomically.

    `claim`: the run's hold on `p.out` (an ortrefine.bundle.write.OutputClaim). write_bundle
    stages its own folder; it runs inside ours so that the manifest can gain the `distillation`
    and `parent` keys before the bundle appears under its final name.
    """
    from ortrefine.export.onnx_export import ExportConfig, write_bundle
    from ortrefine.export.sources import Source
    from ortrefine.export.writer import write_manifest

    _check_out(cfg, p.out)  # again: the folder may have changed during training, and the swap replaces it
    ckpt = p.work / STUDENT_DIR
    if ckpt.is_symlink() or (ckpt.exists() and not ckpt.is_dir()):
        raise ExportError(f"{ckpt} is not the student folder distill wrote, so it is not replaced; move it away and rerun with --resume")
    if ckpt.exists():
        shutil.rmtree(ckpt)
    student.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    src = Source("local", str(ckpt.resolve()), validate_atol=p.source.validate_atol, chat=p.source.chat)
    with claim.staging() as stage:
        inner = stage / p.out.name
        r = write_bundle(student, tokenizer, src, inner, ExportConfig(str(ckpt), output=p.out, progress=cfg.progress))
        for f in inner.iterdir():
            os.replace(f, stage / f.name)
        inner.rmdir()
        manifest = {k: v for k, v in r.manifest.items() if k not in ("files", "created", "versions")}
        manifest["parent"] = str(p.bundle.path.resolve())
        manifest["distillation"] = distillation
        manifest = write_manifest(stage, manifest)
    return p.out, manifest
