"""The work folder `<out>.ckpt`: what marks it as distill's, and the checks that keep a run from
writing into, or `--overwrite` from deleting, a folder some user put there.

The stamp doubles as the run's identity: a checkpoint made under other settings would not
continue the same curve, so resuming it is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from ortrefine.errors import ConfigError, ExportError

from .config import DistillConfig

STATE_FILE = "state.safetensors"  # training checkpoint: tensors, the scalar state as JSON in its header
STAMP_FILE = "settings.json"  # the run's settings (checked before --resume loads anything); marks the folder as ours
DATA_FILE = "data.safetensors"  # self-generated sequences (sampling them is the slow part: cached)
STUDENT_DIR = "student"  # the trained student as an HF checkpoint: the student bundle's source
LEGACY_FILES = ("state.pt", "data.pt")  # pickles older versions wrote: refused, never loaded
WORK_ENTRIES = frozenset((STATE_FILE, STAMP_FILE, DATA_FILE, STUDENT_DIR, *LEGACY_FILES))
WRITTEN_BY = "ortrefine distill"  # the stamp's marker


def _file_digest(path: Path | None) -> str | None:
    """Files are keyed by content, not name: an edited corpus must not resume an old curve."""
    if path is None:
        return None
    from ortrefine.runtime.bundle import sha256_file

    return sha256_file(path)


def fingerprint(cfg: DistillConfig, bundle_path: Path, layers: Sequence[int]) -> dict[str, Any]:
    """The settings a checkpoint depends on; resuming under other settings is refused."""
    return {
        "teacher": str(bundle_path.resolve()),
        "layers": list(layers),
        **{k: getattr(cfg, k) for k in ("steps", "batch_size", "seq_len", "grad_accum", "lr", "weight_decay", "max_grad_norm",
                                        "temperature", "alpha_kd", "alpha_ce", "sample_top_p", "train_embeddings", "seed")},
        "self_generated": cfg.n_generate,
        "data": _file_digest(cfg.data),
        "prompts": _file_digest(cfg.prompts),
        "eval_data": _file_digest(cfg.eval_data),
    }


def _save_atomic(write: Callable[[Path], None], path: Path) -> None:
    """write(tmp) then rename: an interrupted save leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_stamp(work: Path, stamp: dict[str, Any]) -> None:
    text = json.dumps({**stamp, "written_by": WRITTEN_BY}, indent=1, sort_keys=True) + "\n"
    _save_atomic(lambda tmp: tmp.write_text(text, encoding="utf-8"), work / STAMP_FILE)


def _read_stamp(work: Path) -> dict[str, Any] | None:
    """None for anything not provably distill's, so that every caller errs on the side of refusing."""
    path = work / STAMP_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(saved, dict):
        return None
    # older versions wrote the bare fingerprint: still distill's own folder (so --overwrite can clear it)
    legacy = {"teacher", "layers", "steps", "seed", "self_generated"} <= saved.keys()
    return saved if saved.get("written_by") == WRITTEN_BY or legacy else None


def _check_work_folder(work: Path) -> None:
    """Refuse a `<out>.ckpt` that distill did not write: the run would write into it, and
    --overwrite delete it. Ours: distill's stamp, and no entry distill does not write."""
    if not work.exists() and not work.is_symlink():
        return
    fix = "move it away or choose another --out"
    if work.is_symlink() or not work.is_dir():
        raise ExportError(f"{work} is not a folder distill wrote, so it is never written into or deleted; {fix}")
    entries = sorted(work.iterdir())
    if not entries:
        return
    if _read_stamp(work) is None:
        raise ExportError(f"{work} has no {STAMP_FILE} stamp of ortrefine distill, so it is never written into or deleted; {fix}")
    known = WORK_ENTRIES | {name + ".tmp" for name in WORK_ENTRIES}
    foreign = [e.name for e in entries if e.name not in known or e.is_symlink()]
    if foreign:
        raise ExportError(f"{work / foreign[0]} was not written by ortrefine distill, so {work} is never deleted; "
                          f"move that out of the folder or choose another --out")


def _check_stamp(work: Path, stamp: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made under other settings (it would not continue the same curve)."""
    saved = _read_stamp(work)
    if saved is None:
        raise ConfigError(f"the checkpoint at {work} has no readable {STAMP_FILE}; pass --overwrite to start over")
    diff = sorted(k for k in stamp if stamp[k] != saved.get(k))
    if diff:
        raise ConfigError(f"the checkpoint at {work} was made with other settings ({', '.join(diff)}); "
                          "use the same settings to resume, or --overwrite to start over")


def open_work(cfg: DistillConfig, work: Path, bundle_path: Path, layers: Sequence[int]) -> dict[str, Any]:
    """Make the work folder ready to write and return the run's stamp.

    The folder is checked again here, just before the first write, because loading the teacher
    takes long enough for someone to have put something there meanwhile.
    """
    _check_work_folder(work)
    if work.exists() and not cfg.resume and cfg.overwrite:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp = fingerprint(cfg, bundle_path, layers)
    _write_stamp(work, stamp)  # first: it is what marks the folder as distill's
    return stamp
