"""The distillation loss and the held-out figures, computed the same way so that the numbers a
run reports are the quantity it optimised.

    loss = alpha_kd · T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T)) + alpha_ce · CE(text)

averaged over the real (non-padding) tokens of a batch (DistilGPT2 recipe, Hinton et al.).
"""

from __future__ import annotations

import math
from typing import Any, Sequence


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
