"""The settings of a run and what it hands back, checked on construction so that bad input fails
before a teacher is loaded or a folder is touched."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ortrefine.errors import ConfigError

DEFAULT_SELF_GENERATED = 256


@dataclass
class DistillConfig:
    """What to distil, how, and where.

    bundle: teacher bundle folder or catalog name; its manifest's `source` is the checkpoint
        loaded in torch as the teacher.
    layers: teacher layer indices the student keeps, in order (distinct, increasing); None:
        every third layer from 0 with the last layer as the final pick (30 layers →
        0,3,…,24,29).
    steps: optimizer steps. batch_size: sequences per micro-batch. grad_accum: micro-batches
        per step. seq_len: max tokens per sequence (longer texts are cut into windows).
    lr: AdamW peak learning rate (linear warm-up over the first 5 % of steps, cosine decay to
        10 %). weight_decay: AdamW decoupled weight decay. max_grad_norm: gradient clipping.
    temperature: T of the softened distributions in the KD term. alpha_kd / alpha_ce: weights
        of the KD (already × T²) and the cross-entropy terms; at least one must be > 0.
    data: training text: a .jsonl file (field "text", else "prompt", per line) or a text file
        (paragraphs separated by blank lines). Exclusive with self_generated.
    self_generated: number of training sequences sampled from the teacher (used when data is
        None; 256 when both are None). Each sample continues a seed prompt from `prompts`
        (only the BOS token when None); the seeds are every prompt plain and then, when the
        tokenizer has a chat template, every prompt as a user message; sample i continues
        seed i mod len(seeds). Prompts are cut to seq_len // 2 tokens.
    prompts: seed prompts for self_generated (same formats as data).
    sample_top_p: nucleus threshold when sampling from the teacher (temperature 1).
    eval_data: held-out text for perplexity (same formats as data). None: every 20th window
        of `data` is held out, or max(1, min(32, n // 10)) extra sequences are sampled.
    train_embeddings: also train the token embeddings (and an untied lm_head); frozen by
        default: on small CPU budgets they are best kept as the teacher's.
    seed: seeds data order, sampling and dropout (a function of seed and step only).
    checkpoint_every: steps between checkpoints (the last step is always checkpointed).
    resume: continue from the checkpoint in the work folder `<out>.ckpt/`; its settings must
        match this config. The curve is bit-identical to an uninterrupted run's on the same
        machine with the same `threads` (the thread count changes float summation order).
    out: student bundle folder; default `<teacher bundle>-student` beside the teacher.
    overwrite: replace an existing student bundle and discard an earlier run's checkpoint;
        only ever a bundle (every file listed in its manifest) and a work folder distill wrote
        (its stamp, nothing else): any other folder is refused, never deleted.
    threads: torch intra-op threads for this run (restored afterwards); None keeps torch's.
        On a busy box fewer threads can be faster than more (they fight other processes).
    progress: tqdm progress bars (sampling, training with the loss) on stderr.
    on_step: called after every optimizer step as on_step(step, {"loss", "kd", "ce", "lr"})
        (step counts from 1); an exception it raises stops the run (checkpoints stay).
    """

    bundle: str | Path
    layers: Sequence[int] | None = None
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 64
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    temperature: float = 2.0
    alpha_kd: float = 0.5
    alpha_ce: float = 0.5
    data: Path | None = None
    self_generated: int | None = None
    prompts: Path | None = None
    sample_top_p: float = 0.95
    eval_data: Path | None = None
    train_embeddings: bool = False
    seed: int = 0
    checkpoint_every: int = 50
    resume: bool = False
    out: Path | None = None
    overwrite: bool = False
    threads: int | None = None
    progress: bool = False
    on_step: Callable[[int, dict[str, float]], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("data", "prompts", "eval_data", "out"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
            if not self.layers:
                raise ConfigError("layers is empty; give at least one teacher layer index, e.g. 0,3,6")
            if any(i < 0 for i in self.layers):
                raise ConfigError(f"layer indices count from 0; got {list(self.layers)}")
            if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
                raise ConfigError(f"layers must be distinct and increasing; got {list(self.layers)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1; got {self.threads}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.seq_len < 4:
            raise ConfigError(f"seq_len must be at least 4 tokens; got {self.seq_len}")
        for name in ("lr", "temperature"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number; got {value}")
        for name in ("alpha_kd", "alpha_ce", "weight_decay", "max_grad_norm"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0; got {value}")
        if self.alpha_kd == 0 and self.alpha_ce == 0:
            raise ConfigError("alpha_kd and alpha_ce are both 0: nothing to learn; make one of them positive")
        if not 0 < self.sample_top_p <= 1:
            raise ConfigError(f"sample_top_p must be in (0, 1]; got {self.sample_top_p}")
        if self.data is not None and self.self_generated is not None:
            raise ConfigError("give either a data file or self_generated sequences, not both")
        if self.self_generated is not None and self.self_generated < 1:
            raise ConfigError(f"self_generated must be at least 1; got {self.self_generated}")
        if self.prompts is not None and self.data is not None:
            raise ConfigError("prompts seed self-generated data; with a data file, drop prompts")

    @property
    def n_generate(self) -> int:
        """Training sequences to sample from the teacher (0 with a data file)."""
        if self.data is not None:
            return 0
        return self.self_generated if self.self_generated is not None else DEFAULT_SELF_GENERATED


@dataclass
class DistillResult:
    """What a distillation produced.

    path: the student bundle. manifest: its ortrefine.json (with a `distillation` key).
    layers: teacher layers the student was built from.
    losses / kd_losses / ce_losses: per optimizer step (index 0 = step 1), the total loss and
        its two terms (KD already × T²), averaged over the step's tokens.
    teacher_ppl / student_ppl: perplexity on the held-out sequences (torch, fp32);
        student_ppl_before: of the initialised student before any training.
    heldout_kd_before / heldout_kd_after: T²·KL(teacher ‖ student) per held-out token.
    eval_tokens: predicted tokens in the held-out set. train_sequences: training sequences.
    teacher_params / student_params: parameter counts (tied weights once).
    resumed_from: the checkpoint step this run continued from (None for a fresh run).
    checkpoint_dir: the work folder (it keeps the student's HF checkpoint, its source).
    seconds: wall time of this call.
    """

    path: Path
    manifest: dict[str, Any]
    layers: list[int]
    losses: list[float]
    kd_losses: list[float]
    ce_losses: list[float]
    teacher_ppl: float
    student_ppl: float
    student_ppl_before: float
    heldout_kd_before: float
    heldout_kd_after: float
    eval_tokens: int
    train_sequences: int
    teacher_params: int
    student_params: int
    resumed_from: int | None
    checkpoint_dir: Path
    seconds: float
