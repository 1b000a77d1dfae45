"""Training sequences sampled from the teacher itself (sequence-level distillation), for runs
with no corpus: the student then learns the teacher's own distribution."""

from __future__ import annotations

from typing import Any, Sequence

from .schedule import _mix


def _bos(teacher: Any, tokenizer: Any) -> int:
    for value in (teacher.generation_config.bos_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0  # pragma: no cover


def _eos_ids(teacher: Any) -> list[int]:
    eos = teacher.generation_config.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]


def _pad_id(teacher: Any) -> int:
    """Many checkpoints name no pad token; any id works under the mask, eos is the usual stand-in."""
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
