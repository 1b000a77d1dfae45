"""Distil a smaller student from a bundle's teacher checkpoint, then export it as a bundle.

Teacher: the torch checkpoint the bundle was exported from (its manifest's `source`).
Student: the teacher's config with fewer layers; embeddings, final norm, lm_head and the chosen
layers' weights are copied from the teacher (DistilBERT / DistilGPT2 initialisation).
Loss per token (DistilGPT2 recipe, Hinton et al.):

    loss = alpha_kd · T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T)) + alpha_ce · CE(text)

averaged over the real (non-padding) tokens of a batch. Data: a text file / JSONL, or sequences
sampled from the teacher itself (sequence-level distillation: no corpus needed).

Reproducible and resumable: the data order, dropout and sampling of step s depend only on
(seed, s); checkpoints (student, optimizer, step, RNG states, data position, loss curve) go
to `<out>.ckpt/state.safetensors` every `checkpoint_every` steps, and `resume=True` continues
from it with the same loss curve an uninterrupted run gives.

Nothing in the work folder is ever unpickled: a checkpoint or data cache is something a user
copies between machines, and loading a pickle runs whatever code it names. Tensors are
safetensors, everything else JSON; a `*.pt` pickle an older version wrote is refused unread.
And nothing the tool did not write is deleted: `--overwrite` removes `<out>.ckpt` only when it
carries distill's stamp and nothing else, and replaces `<out>` only when it is a bundle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ortrefine.errors import BundleError, ConfigError, ExportError

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"  # training checkpoint: tensors, the scalar state as JSON in its header
STAMP_FILE = "settings.json"  # the run's settings (checked before --resume loads anything); marks the folder as ours
DATA_FILE = "data.safetensors"  # self-generated sequences (sampling them is the slow part: cached)
STUDENT_DIR = "student"  # the trained student as an HF checkpoint: the student bundle's source
LEGACY_FILES = ("state.pt", "data.pt")  # pickles older versions wrote: refused, never loaded
WORK_ENTRIES = frozenset((STATE_FILE, STAMP_FILE, DATA_FILE, STUDENT_DIR, *LEGACY_FILES))
WRITTEN_BY = "ortrefine distill"  # the stamp's marker
STATE_FORMAT = "ortrefine-distill-state/1"
DATA_FORMAT = "ortrefine-distill-data/1"
DEFAULT_SELF_GENERATED = 256
SOURCE_KINDS = ("tiny", "gguf", "local", "hub")


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
        On a busy 2-core box 1 thread can be 2-3x faster than 2 (they fight other processes).
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


# -- teacher ---------------------------------------------------------------------------------


def default_layers(n_layers: int) -> list[int]:
    """Every third layer from 0, the last layer as the final pick (30 → 0,3,…,24,29)."""
    picks = list(range(0, n_layers, 3))
    if picks[-1] != n_layers - 1:
        if len(picks) > 1:
            picks[-1] = n_layers - 1
        else:
            picks.append(n_layers - 1)
    return picks


def teacher_layer_count(config: dict[str, Any]) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise BundleError("the bundle's config.json names no layer count (num_hidden_layers / n_layer); re-export it")


def teacher_source(bundle: Any) -> Any:
    """The bundle's source checkpoint as a `Source`, or BundleError saying how to get one."""
    from ortrefine.export.sources import Source

    fix = "re-export the teacher with `ortrefine export <checkpoint>` so its manifest records a source checkpoint"
    described = bundle.manifest.get("source")
    if not isinstance(described, dict) or not described.get("kind") or not described.get("location"):
        raise BundleError(f"{bundle.path}: the manifest records no source checkpoint to load the teacher from; {fix}")
    try:
        src = Source(**described)
    except TypeError as e:
        raise BundleError(f"{bundle.path}: the manifest's source {described} is not understood ({e}); {fix}") from None
    if src.kind not in SOURCE_KINDS:
        raise BundleError(f"{bundle.path}: unknown source kind {src.kind!r} in the manifest; {fix}")
    if src.kind in ("gguf", "local") and not Path(src.location).exists():
        raise BundleError(f"{bundle.path}: its source checkpoint {src.location} no longer exists; restore it or {fix}")
    return src


# -- student ---------------------------------------------------------------------------------


def _layer_list(model: Any) -> tuple[str, Any]:
    """(dotted name, ModuleList) of the decoder blocks: the ModuleList as long as the layer count."""
    import torch

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name.split(".")[-1] in ("layers", "h", "blocks", "layer"):
            return name, module
    raise ExportError(f"cannot find the decoder layers of {type(model).__name__}; distillation supports llama- and gpt2-style models")


def build_student(teacher: Any, layers: Sequence[int]) -> Any:
    """Teacher config with len(layers) layers; every weight copied from the teacher.

    Student layer j is teacher layer layers[j]; embeddings, position embeddings, final norm and
    lm_head are the teacher's. Per-layer config lists (e.g. `layer_types`) are subset alike.
    """
    import copy

    from transformers import AutoModelForCausalLM

    n = teacher.config.num_hidden_layers
    if any(not 0 <= i < n for i in layers):
        raise ConfigError(f"layer indices must be in 0..{n - 1} (the teacher has {n} layers); got {list(layers)}")
    config = copy.deepcopy(teacher.config)
    for key, value in list(config.to_dict().items()):
        if isinstance(value, list) and len(value) == n and key not in ("architectures",):
            setattr(config, key, [value[i] for i in layers])
    config.num_hidden_layers = len(layers)  # gpt2 maps it to n_layer
    student = AutoModelForCausalLM.from_config(config, attn_implementation=teacher.config._attn_implementation)
    prefix, _ = _layer_list(teacher)
    teacher_sd = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        source_key = key
        if key.startswith(prefix + "."):
            j, rest = key[len(prefix) + 1 :].split(".", 1)
            source_key = f"{prefix}.{layers[int(j)]}.{rest}"
        state[key] = teacher_sd[source_key].detach().clone()
    student.load_state_dict(state, strict=True)
    student.tie_weights()
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def count_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


# -- data ------------------------------------------------------------------------------------


def read_texts(path: Path, what: str = "data") -> list[str]:
    """Non-empty texts of a .jsonl ("text", else "prompt") or text file (blank-line paragraphs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no {what} file at {path}; give a text file or a .jsonl file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8") from None
    texts: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e}); one JSON object per line") from None
            text = record.get("text", record.get("prompt")) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ConfigError(f'{path}:{lineno}: no string field "text" or "prompt"; every line needs one')
            texts.append(text)
    else:
        texts = raw.split("\n\n")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ConfigError(
            f'{path} holds no text (empty {what}); give a UTF-8 text file (paragraphs separated by blank lines) '
            'or JSONL with a "text" or "prompt" field'
        )
    return texts


def windows(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Each text tokenized (with the tokenizer's BOS) and cut into windows of <= seq_len tokens."""
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        out += [ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) >= 2]
    return out


def _bos(teacher: Any, tokenizer: Any) -> int:
    for value in (teacher.generation_config.bos_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0  # pragma: no cover


def _eos_ids(teacher: Any) -> list[int]:
    eos = teacher.generation_config.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]


def _pad_id(teacher: Any) -> int:
    pad = teacher.generation_config.pad_token_id
    return int(pad) if pad is not None else (_eos_ids(teacher) or [0])[0]


def seed_prompts(teacher: Any, tokenizer: Any, prompts: Sequence[str] | None, seq_len: int) -> list[list[int]]:
    """Prompt ids to sample from: each prompt plain, then (with a chat template) as a user message."""
    limit = max(1, seq_len // 2)
    if not prompts:
        return [[_bos(teacher, tokenizer)]]
    seeds = []
    for p in prompts:
        seeds.append(tokenizer(p)["input_ids"][:limit] or [_bos(teacher, tokenizer)])
    if getattr(tokenizer, "chat_template", None):
        for p in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            seeds.append(tokenizer(text, add_special_tokens=False)["input_ids"][:limit])
    return seeds


def sample_from_teacher(
    teacher: Any, seeds: Sequence[Sequence[int]], n: int, seq_len: int, top_p: float, seed: int, progress: bool, batch: int = 16
) -> list[list[int]]:
    """n sequences of <= seq_len tokens: sample i continues seeds[i % len(seeds)], cut after eos.

    Batch b (samples b·batch …) is sampled under torch seed (seed, b): the result depends on
    the seed only, not on earlier batches.
    """
    import torch
    from tqdm import tqdm

    pad, eos = _pad_id(teacher), _eos_ids(teacher)
    out: list[list[int]] = []
    bar = tqdm(total=n, desc="sampling from the teacher", unit="seq", disable=not progress, leave=False)
    for b, start in enumerate(range(0, n, batch)):
        prompts = [list(seeds[i % len(seeds)]) for i in range(start, min(n, start + batch))]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):  # left padding: generation appends on the right
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        torch.manual_seed(_mix(seed, 1, b))
        with torch.no_grad():
            gen = teacher.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=top_p,
                max_new_tokens=seq_len - min(len(p) for p in prompts), pad_token_id=pad, eos_token_id=eos or None,
            )
        for r, p in enumerate(prompts):
            new = gen[r, width:].tolist()
            cut = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))
            out.append((p + new[:cut])[:seq_len])
        bar.update(len(prompts))
    bar.close()
    return out


# -- losses ----------------------------------------------------------------------------------


def collate(seqs: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    """Right-padded (ids, mask): (batch, max_len) int64 each; mask 1 on real tokens."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def distill_losses(student_logits: Any, teacher_logits: Any, ids: Any, mask: Any, temperature: float) -> tuple[Any, Any, Any, Any]:
    """(kd, ce, kd_tokens, ce_tokens): means over real tokens.

    student_logits / teacher_logits: (B, S, V) float32. kd = T² · Σ_v p_t(v) (log p_t(v) −
    log p_s(v)) with p = softmax(z / T), at every real position. ce = −log p_s(ids[t+1]) at
    positions whose next token is real.
    """
    import torch.nn.functional as F

    real = mask.bool()
    s_logp = F.log_softmax(student_logits[real] / temperature, dim=-1)  # (N, V)
    t_logp = F.log_softmax(teacher_logits[real] / temperature, dim=-1)
    kd = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean() * temperature**2
    nxt = real[:, 1:]
    ce = F.cross_entropy(student_logits[:, :-1][nxt], ids[:, 1:][nxt])
    return kd, ce, int(real.sum()), int(nxt.sum())


def heldout_metrics(teacher: Any, student: Any, seqs: Sequence[Sequence[int]], pad: int, temperature: float, batch: int) -> dict[str, float]:
    """Perplexities of teacher and student and the KD term, per token, over held-out sequences."""
    import torch
    import torch.nn.functional as F

    sums = {"teacher_nll": 0.0, "student_nll": 0.0, "kd": 0.0}
    kd_tokens = ce_tokens = 0
    was_training = student.training
    student.eval()
    with torch.no_grad():
        for start in range(0, len(seqs), batch):
            ids, mask = collate(seqs[start : start + batch], pad)
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits.float()
            s_logits = student(input_ids=ids, attention_mask=mask).logits.float()
            kd, ce, n_kd, n_ce = distill_losses(s_logits, t_logits, ids, mask, temperature)
            nxt = mask[:, 1:].bool()
            t_ce = F.cross_entropy(t_logits[:, :-1][nxt], ids[:, 1:][nxt]) if n_ce else torch.tensor(0.0)
            sums["kd"] += float(kd) * n_kd
            sums["student_nll"] += float(ce) * n_ce
            sums["teacher_nll"] += float(t_ce) * n_ce
            kd_tokens += n_kd
            ce_tokens += n_ce
    student.train(was_training)
    return {
        "teacher_ppl": math.exp(sums["teacher_nll"] / max(ce_tokens, 1)),
        "student_ppl": math.exp(sums["student_nll"] / max(ce_tokens, 1)),
        "kd": sums["kd"] / max(kd_tokens, 1),
        "tokens": ce_tokens,
    }


# -- reproducibility -------------------------------------------------------------------------


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_indices(seed: int, position: int, size: int, n: int) -> list[int]:
    """Indices of `size` sequences starting at data position `position` (sequences consumed so
    far): epoch e visits a permutation of range(n) drawn from (seed, e) only."""
    out = []
    for p in range(position, position + size):
        epoch, k = divmod(p, n)
        out.append(int(_permutation(seed, epoch, n)[k]))
    return out


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng(_mix(seed, 2, epoch)).permutation(n)


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 10 % of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _file_digest(path: Path | None) -> str | None:
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


def _check_replaceable(out: Path) -> None:
    """--overwrite deletes `out` before the new bundle takes its place: only a bundle qualifies
    (every entry a plain file listed in its manifest), or an empty folder."""
    from ortrefine.runtime.bundle import MANIFEST

    fix = "--overwrite only replaces a bundle ortrefine wrote: move it away or choose another --out"
    if out.is_symlink() or not out.is_dir():
        raise ExportError(f"{out} is not a bundle folder; {fix}")
    entries = sorted(out.iterdir())
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ExportError(f"{out} has no readable {MANIFEST}: not a bundle; {fix}")
    foreign = [e.name for e in entries if e.name != MANIFEST and (e.name not in files or e.is_symlink() or not e.is_file())]
    if foreign:
        raise ExportError(f"{out / foreign[0]} is not a file of that bundle's {MANIFEST}; {fix}")


def _check_out(cfg: DistillConfig, out: Path) -> None:
    if out.exists() or out.is_symlink():
        if not cfg.overwrite:
            raise ExportError(f"{out} already exists; pass --overwrite or choose another output folder")
        _check_replaceable(out)


def _tensors(seqs: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    import torch

    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    tokens = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
    return tokens, lengths


def _sequences(tokens: Any, lengths: Any) -> list[list[int]]:
    flat, out, at = tokens.tolist(), [], 0
    for n in lengths.tolist():
        out.append(flat[at : at + n])
        at += n
    if at != len(flat):
        raise ValueError("token count does not match the lengths")
    return out


def _save_data(path: Path, key: dict[str, Any], train: list[list[int]], heldout: list[list[int]]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, seqs in (("train", train), ("heldout", heldout)):
        tensors[f"{name}.tokens"], tensors[f"{name}.lengths"] = _tensors(seqs)
    metadata = {"format": DATA_FORMAT, "key": json.dumps(key, sort_keys=True)}
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), path)


def _load_data(path: Path, key: dict[str, Any]) -> tuple[list[list[int]], list[list[int]]] | None:
    """(train, heldout) cached for these settings; None (sample afresh) when absent, unreadable or stale."""
    from safetensors import SafetensorError, safe_open

    if path.is_symlink() or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != DATA_FORMAT or json.loads(meta.get("key", "null")) != key:
                return None
            return (_sequences(f.get_tensor("train.tokens"), f.get_tensor("train.lengths")),
                    _sequences(f.get_tensor("heldout.tokens"), f.get_tensor("heldout.lengths")))
    except (SafetensorError, OSError, ValueError, KeyError):  # json.JSONDecodeError is a ValueError
        return None


def _plain(value: Any) -> Any:
    """JSON-ready copy of optimizer hyper-parameters (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def _save_state(path: Path, student: Any, opt: Any, scalars: dict[str, Any]) -> None:
    """Student weights, AdamW moments (keyed by param index) and torch's RNG state as tensors;
    the rest as JSON in the same file's header, so one rename replaces the whole checkpoint."""
    import torch
    from safetensors.torch import save_file

    # clone: tied weights share storage, which safetensors refuses to write twice
    tensors = {f"student.{k}": v.detach().clone().contiguous() for k, v in student.state_dict().items()}
    osd = opt.state_dict()
    per_param: dict[str, dict[str, Any]] = {}
    for idx, entries in osd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{int(idx)}.{name}"] = value.detach().clone().contiguous()
            else:
                per_param.setdefault(str(int(idx)), {})[name] = _plain(value)
    tensors["rng.torch"] = torch.get_rng_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        **scalars,
        "optimizer": {"param_groups": _plain(osd["param_groups"]), "state": per_param},
        "rng": {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "python": [version, list(internal), gauss_next]},
    }
    metadata = {"format": STATE_FORMAT, "state": json.dumps(state)}
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), path)


def _load_state(path: Path, student: Any, opt: Any) -> dict[str, Any]:
    """Restore student, optimizer and RNG states in place; return the scalar state."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {STATE_FORMAT!r}")
            state = json.loads(meta["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        weights = {k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")}
        moments: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optimizer."):
                idx, name = k[len("optimizer."):].split(".", 1)
                moments.setdefault(int(idx), {})[name] = v
        for idx, entries in state["optimizer"]["state"].items():
            moments.setdefault(int(idx), {}).update(entries)
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                  for g in state["optimizer"]["param_groups"]]
        student.load_state_dict(weights, strict=True)
        opt.load_state_dict({"state": moments, "param_groups": groups})
        kind, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
        version, internal, gauss_next = state["rng"]["python"]
        torch.set_rng_state(tensors["rng.torch"])
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate((version, tuple(internal), gauss_next))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ConfigError(f"the checkpoint {path} cannot be restored ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "pass --overwrite without --resume to start over") from None
    return state


# -- the run ---------------------------------------------------------------------------------


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


def output_path(cfg: DistillConfig, bundle_path: Path) -> Path:
    """The student's folder as an absolute, normalised path (`.` and `a/..` have no name of their
    own, and `<out>.ckpt` is named after it); ConfigError for the current folder or one holding it
    (a finished run replaces its output as a whole)."""
    raw = cfg.out if cfg.out is not None else Path(bundle_path).parent / f"{Path(bundle_path).name}-student"
    out = Path(os.path.abspath(os.fspath(raw)))
    try:
        cwd = os.getcwd()
    except OSError:  # the current folder was deleted: nothing to hold
        return out
    for target, here in ((str(out), cwd), (os.path.realpath(out), os.path.realpath(cwd))):
        if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
            raise ConfigError(f"the student's output {raw} is the current folder or holds it, and the finished bundle replaces "
                              "its output folder as a whole; give a new folder, e.g. --out student, or run from elsewhere")
    return out


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


def _check_stamp(work: Path, stamp: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made under other settings (it would not continue the same curve)."""
    saved = _read_stamp(work)
    if saved is None:
        raise ConfigError(f"the checkpoint at {work} has no readable {STAMP_FILE}; pass --overwrite to start over")
    diff = sorted(k for k in stamp if stamp[k] != saved.get(k))
    if diff:
        raise ConfigError(f"the checkpoint at {work} was made with other settings ({', '.join(diff)}); "
                          "use the same settings to resume, or --overwrite to start over")


def _run(cfg: DistillConfig, p: _Plan, t0: float, claim: Any) -> DistillResult:
    import torch
    from tqdm import tqdm

    from ortrefine.export.sources import load_source

    teacher, tokenizer = load_source(p.source)
    teacher.eval().requires_grad_(False)
    if teacher.config.num_hidden_layers != teacher_layer_count(p.bundle.config):
        raise BundleError(f"{p.bundle.path}: its source checkpoint has {teacher.config.num_hidden_layers} layers, "
                          f"the bundle {teacher_layer_count(p.bundle.config)}; re-export the teacher")
    student = build_student(teacher, p.layers)
    pad = _pad_id(teacher)
    train, heldout = _corpus(cfg, p, tokenizer)  # the last check of the input: nothing is written before it
    _check_work_folder(p.work)  # again, just before writing: loading the teacher took a while
    if p.work.exists() and not cfg.resume and cfg.overwrite:
        shutil.rmtree(p.work)
    p.work.mkdir(parents=True, exist_ok=True)
    stamp = fingerprint(cfg, p.bundle.path, p.layers)
    _write_stamp(p.work, stamp)  # first: it is what marks the folder as distill's
    if train is None:
        train, heldout = _generated(cfg, p, teacher, tokenizer, heldout)

    if not cfg.train_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
        if student.get_output_embeddings() is not None:
            student.get_output_embeddings().weight.requires_grad_(False)
    params = [q for q in student.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: dict[str, list[float]] = {"loss": [], "kd": [], "ce": []}
    start, resumed_from = 0, None
    if cfg.resume:
        state = _load_state(p.work / STATE_FILE, student, opt)
        if state.get("fingerprint") != stamp:
            raise ConfigError(f"the checkpoint {p.work / STATE_FILE} does not match its {STAMP_FILE}; pass --overwrite without --resume to start over")
        history, before = state["history"], state["before"]
        start = resumed_from = int(state["step"])
    else:
        before = heldout_metrics(teacher, student, heldout, pad, cfg.temperature, cfg.batch_size)

    student.train()
    per_step = cfg.batch_size * cfg.grad_accum
    bar = tqdm(total=cfg.steps, initial=start, desc="distill", unit="step", disable=not cfg.progress)
    for step in range(start, cfg.steps):
        torch.manual_seed(_mix(cfg.seed, 3, step))  # dropout of step s depends on (seed, s) only
        lr = lr_at(step, cfg.steps, cfg.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        totals = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
        for micro in range(cfg.grad_accum):
            idx = batch_indices(cfg.seed, step * per_step + micro * cfg.batch_size, cfg.batch_size, len(train))
            ids, mask = collate([train[i] for i in idx], pad)
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, attention_mask=mask).logits
            s_logits = student(input_ids=ids, attention_mask=mask).logits
            kd, ce, _, _ = distill_losses(s_logits, t_logits, ids, mask, cfg.temperature)
            loss = cfg.alpha_kd * kd + cfg.alpha_ce * ce
            (loss / cfg.grad_accum).backward()
            for k, v in (("loss", loss), ("kd", kd), ("ce", ce)):
                totals[k] += float(v.detach()) / cfg.grad_accum
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for k in history:
            history[k].append(totals[k])
        bar.update()
        bar.set_postfix(loss=f"{totals['loss']:.3f}", kd=f"{totals['kd']:.3f}", ce=f"{totals['ce']:.3f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save_state(p.work / STATE_FILE, student, opt, {
                "fingerprint": stamp, "step": done, "history": history, "before": before, "data_position": done * per_step,
            })
        if cfg.on_step is not None:
            cfg.on_step(done, {**totals, "lr": lr})
    bar.close()

    student.eval()
    after = heldout_metrics(teacher, student, heldout, pad, cfg.temperature, cfg.batch_size)
    teacher_params, student_params = count_params(teacher), count_params(student)
    distillation = {
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
        "train_sequences": len(train),
        "heldout": {"source": str(cfg.eval_data) if cfg.eval_data else "split", "tokens": after["tokens"],
                    "teacher_ppl": after["teacher_ppl"], "student_ppl": after["student_ppl"],
                    "student_ppl_before": before["student_ppl"], "kd_before": before["kd"], "kd_after": after["kd"]},
        "teacher_params": teacher_params,
        "student_params": student_params,
    }
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
