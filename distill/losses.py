"""Distillation losses: pure functions of logits, tested against hand-computed references.

Shapes: logits [B, S, V] (student and teacher share V after vocab alignment), labels [B, S] with
-100 marking positions to ignore. Every divergence returns the mean over unmasked tokens and is
scaled by T^2 so gradient magnitudes stay comparable across temperatures (Hinton et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _token_divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-token divergence [N] from log-probs [N, V]."""
    if kind == "forward_kl":  # KL(teacher || student): mode-covering
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if kind == "reverse_kl":  # KL(student || teacher): mode-seeking
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    if kind == "jsd":  # generalized JSD (as TRL GKD): beta=0 -> forward KL limit, 1 -> reverse
        if beta == 0:
            return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
        if beta == 1:
            return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
        log_beta = torch.log(torch.tensor(beta, dtype=s_logp.dtype, device=s_logp.device))
        log_1mb = torch.log(torch.tensor(1 - beta, dtype=s_logp.dtype, device=s_logp.device))
        mix = torch.logsumexp(torch.stack([s_logp + log_1mb, t_logp + log_beta]), dim=0)
        kl_t = (t_logp.exp() * (t_logp - mix)).sum(-1)
        kl_s = (s_logp.exp() * (s_logp - mix)).sum(-1)
        return beta * kl_t + (1 - beta) * kl_s
    raise ValueError(f"unknown divergence '{kind}'")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Mean token divergence between teacher and student distributions.

    student_logits, teacher_logits: [B, S, V]; labels: [B, S] or None (positions == -100 ignored).
    Computed `chunk_size` tokens at a time in fp32, so only one chunk of fp32 log-probs for both
    models is alive at once instead of two full [B, S, V] fp32 tensors.
    """
    vocab = student_logits.shape[-1]
    s_flat = student_logits.reshape(-1, vocab)
    t_flat = teacher_logits.reshape(-1, vocab)
    keep = torch.ones(s_flat.shape[0], dtype=torch.bool, device=s_flat.device)
    if labels is not None:
        keep = labels.reshape(-1) != -100
    idx = keep.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return student_logits.sum() * 0.0
    total = student_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, idx.numel(), chunk_size):
        rows = idx[start : start + chunk_size]
        s_logp = F.log_softmax(s_flat[rows].float() / temperature, dim=-1)
        t_logp = F.log_softmax(t_flat[rows].float() / temperature, dim=-1)
        total = total + _token_divergence(s_logp, t_logp, kind, beta).sum()
    return total / idx.numel() * temperature**2


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy. logits [B, S, V] predict labels [B, S] (already shifted)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100)


def shift_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Labels aligned with logits: position t predicts token t+1; the last position is ignored."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    return labels
