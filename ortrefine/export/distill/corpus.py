"""A run's training and held-out sequences: windows of the given text files, or samples from the
teacher (cached, so --resume trains on the same ones)."""

from __future__ import annotations

from typing import Any

from ortrefine.errors import ConfigError

from .cache import _load_data, _save_data
from .config import DistillConfig
from .planning import _Plan
from .sampling import sample_from_teacher, seed_prompts
from .texts import windows
from .workdir import DATA_FILE, _file_digest


def _corpus(cfg: DistillConfig, p: _Plan, tokenizer: Any) -> tuple[list[list[int]] | None, list[list[int]] | None]:
    """(train, held-out) windows from the text files (None where sampling provides them).

    Raises ConfigError for a corpus that tokenizes to too little; writes nothing.
    """
    heldout = windows(tokenizer, p.eval_texts, cfg.seq_len) if p.eval_texts is not None else None
    if p.eval_texts is not None and not heldout:
        raise ConfigError(f"{cfg.eval_data} gives no sequence of 2+ tokens; add text to it")
    if p.data_texts is None:
        return None, heldout
    seqs = windows(tokenizer, p.data_texts, cfg.seq_len)
    if heldout is None:
        if len(seqs) < 2:
            raise ConfigError(
                f"{cfg.data} gives {len(seqs)} sequence(s) of 2+ tokens; distillation needs 2 (one is held out): "
                "add text, or pass eval_data"
            )
        stride = max(2, min(20, len(seqs)))
        heldout = [s for i, s in enumerate(seqs) if i % stride == stride - 1]
        seqs = [s for i, s in enumerate(seqs) if i % stride != stride - 1]
    if not seqs:
        raise ConfigError(f"{cfg.data} gives no training sequence of 2+ tokens; add text to it")
    return seqs, heldout


def _generated(cfg: DistillConfig, p: _Plan, teacher: Any, tokenizer: Any, heldout: list[list[int]] | None) -> tuple[list[list[int]], list[list[int]]]:
    """Sequences sampled from the teacher (cached in the work folder for --resume)."""
    n_eval = 0 if heldout is not None else max(1, min(32, cfg.n_generate // 10))
    key = {"teacher": str(p.bundle.path.resolve()), "n": cfg.n_generate, "n_eval": n_eval, "seq_len": cfg.seq_len,
           "top_p": cfg.sample_top_p, "seed": cfg.seed, "prompts": _file_digest(cfg.prompts)}
    cache = p.work / DATA_FILE
    cached = _load_data(cache, key)
    if cached is not None:
        return cached[0], heldout if heldout is not None else cached[1]
    seeds = seed_prompts(teacher, tokenizer, p.prompt_texts, cfg.seq_len)
    samples = sample_from_teacher(teacher, seeds, cfg.n_generate + n_eval, cfg.seq_len, cfg.sample_top_p, cfg.seed, cfg.progress)
    train, generated_eval = samples[: cfg.n_generate], samples[cfg.n_generate :]
    _save_data(cache, key, train, generated_eval)
    return train, heldout if heldout is not None else generated_eval
