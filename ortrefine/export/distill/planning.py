"""Every check that can be made before the teacher is loaded, made up front: a typo in a path or
a layer index should cost a second, not the minutes a teacher takes to load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortrefine.errors import ConfigError

from .config import DistillConfig
from .models import default_layers, teacher_layer_count, teacher_source
from .output import _check_out, output_path
from .texts import read_texts
from .workdir import LEGACY_FILES, STATE_FILE, _check_stamp, _check_work_folder, fingerprint


@dataclass
class _Plan:
    """Everything checked before anything is written."""

    bundle: Any
    source: Any
    layers: list[int]
    out: Path
    work: Path
    data_texts: list[str] | None
    prompt_texts: list[str] | None
    eval_texts: list[str] | None


def _plan_inputs(cfg: DistillConfig) -> _Plan:
    """The teacher, layers, output and text files, checked; writes nothing."""
    from ortrefine.catalog import resolve_bundle_path
    from ortrefine.runtime.bundle import open_bundle

    bundle = open_bundle(resolve_bundle_path(cfg.bundle))
    source = teacher_source(bundle)
    n = teacher_layer_count(bundle.config)
    layers = list(cfg.layers) if cfg.layers is not None else default_layers(n)
    bad = [i for i in layers if i >= n]
    if bad:
        raise ConfigError(f"layer {bad[0]} is out of range: the teacher has {n} layers (0..{n - 1})")
    out = output_path(cfg, bundle.path)
    if out.resolve() == bundle.path.resolve():
        raise ConfigError(f"the student's output {out} is the teacher bundle itself; choose another --out")
    _check_out(cfg, out)
    work = out.with_name(out.name + ".ckpt")
    return _Plan(
        bundle, source, layers, out, work,
        read_texts(cfg.data) if cfg.data is not None else None,
        read_texts(cfg.prompts, "prompts") if cfg.prompts is not None else None,
        read_texts(cfg.eval_data, "eval_data") if cfg.eval_data is not None else None,
    )


def _check_work(cfg: DistillConfig, p: _Plan) -> None:
    """The work folder `<out>.ckpt` fits this run (fresh, --resume or --overwrite); writes nothing."""
    work = p.work
    _check_work_folder(work)
    legacy = [name for name in LEGACY_FILES if (work / name).exists()]
    if legacy and (cfg.resume or not cfg.overwrite):
        raise ConfigError(f"{work / legacy[0]} is a pickle from an older ortrefine and is never loaded (unpickling can run code); "
                          "pass --overwrite without --resume to start over")
    if cfg.resume and not (work / STATE_FILE).exists():
        raise ConfigError(f"--resume: no checkpoint at {work / STATE_FILE}; drop --resume to start a new run")
    if not cfg.resume and (work / STATE_FILE).exists() and not cfg.overwrite:
        raise ConfigError(f"an earlier run's checkpoint is at {work}; pass --resume to continue it or --overwrite to start over")
    if cfg.resume:
        _check_stamp(work, fingerprint(cfg, p.bundle.path, p.layers))


def plan(cfg: DistillConfig) -> _Plan:
    """Validate the teacher, layers, paths and text files; raise typed errors, write nothing."""
    p = _plan_inputs(cfg)
    _check_work(cfg, p)
    return p
