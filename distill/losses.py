"""Distillation losses: pure functions, tested against hand-computed and library references.

Shapes: logits [B, S, V] (student and teacher share V after vocab alignment), hidden states
[B, S, H], labels [B, S] with -100 marking positions to ignore (already shifted: position t
predicts token t+1). Every divergence is the mean over unmasked tokens, scaled by T^2 so gradient
magnitudes stay comparable across temperatures (Hinton et al. 2015).

Memory: `chunked_kd_ce` never holds full-vocab logits. It takes the final hidden states and the
output-head weights and computes logits `chunk_size` tokens at a time during
the forward pass, gradients included, so only one [chunk, V] fp32 block per model is alive instead
of two [B, S, V] tensors (at V = 151,936 x 2,048 tokens that is 1.2 GB each, per sequence).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
LOGP_FLOOR = -1e4  # exp(-1e4) == 0 in fp32


def token_divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence.

    s_logp, t_logp: [N, V] log-probabilities (student, teacher) -> [N].
    forward_kl = KL(teacher || student) (mode-covering), reverse_kl = KL(student || teacher)
    (mode-seeking), jsd = generalized JSD as in TRL's GKD: with M = beta*P_t + (1-beta)*P_s,
    beta*KL(P_t||M) + (1-beta)*KL(P_s||M); beta -> 0 and 1 are taken as forward / reverse KL.
    """
    # A log-prob of -inf (masked or underflowed token) would make 0 * (-inf - x) = nan; a floor
    # far below any real log-prob keeps the product 0 and its gradient finite. Real nans still
    # propagate, so the training loop can stop on them.
    s_logp, t_logp = s_logp.clamp(min=LOGP_FLOOR), t_logp.clamp(min=LOGP_FLOOR)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    if kind == "jsd":
        mix = torch.logsumexp(torch.stack([s_logp + math.log(1 - beta), t_logp + math.log(beta)]), dim=0)
        kl_t = (t_logp.exp() * (t_logp - mix)).sum(-1)
        kl_s = (s_logp.exp() * (s_logp - mix)).sum(-1)
        return beta * kl_t + (1 - beta) * kl_s
    raise ValueError(f"unknown divergence '{kind}' (valid: {', '.join(DIVERGENCES)})")


def _kept_rows(labels: torch.Tensor | None, n: int, device) -> torch.Tensor:
    """Indices [M] of the flattened positions whose label is not -100."""
    if labels is None:
        return torch.arange(n, device=device)
    return (labels.reshape(-1) != -100).nonzero(as_tuple=True)[0]


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
    """Mean token divergence between teacher and student distributions, times T^2.

    student_logits, teacher_logits: [B, S, V]; labels: [B, S] or None (-100 positions ignored).
    Log-softmax runs `chunk_size` tokens at a time in fp32: only one chunk of fp32 log-probs per
    model is alive at once (the logits themselves are the caller's; see `chunked_kd_ce` to avoid
    materialising them at all). -> scalar.
    """
    vocab = student_logits.shape[-1]
    s_flat = student_logits.reshape(-1, vocab)
    t_flat = teacher_logits.reshape(-1, vocab)
    idx = _kept_rows(labels, s_flat.shape[0], s_flat.device)
    if idx.numel() == 0:
        return student_logits.sum() * 0.0
    total = student_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, idx.numel(), chunk_size):
        rows = idx[start : start + chunk_size]
        s_logp = F.log_softmax(s_flat[rows].float() / temperature, dim=-1)
        t_logp = F.log_softmax(t_flat[rows].float() / temperature, dim=-1)
        total = total + token_divergence(s_logp, t_logp, kind, beta).sum()
    return total / idx.numel() * temperature**2


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits [B, S, V] predict labels [B, S] (already shifted) -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100)


def shift_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Labels [B, S] aligned with logits: position t predicts token t+1; the last is ignored."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def mix(kd: torch.Tensor | None, ce: torch.Tensor | None, kd_weight: float, ce_weight: float) -> torch.Tensor:
    """kd_weight * KD + ce_weight * CE, skipping a term whose weight is 0 (it may be None then)."""
    total = None
    for weight, term in ((kd_weight, kd), (ce_weight, ce)):
        if weight:
            total = weight * term if total is None else total + weight * term
    if total is None:
        raise ValueError("both kd_weight and ce_weight are 0")
    return total


# ------------------------------------------------------------------------- chunked from hidden states
class _FusedChunkedKD(torch.autograd.Function):
    """Loss and its gradients computed chunk by chunk in forward (the fused linear-loss trick).

    Forward walks the kept rows `chunk` at a time: builds that chunk's logits, its loss, and at
    once the gradients w.r.t. the hidden rows and the head weight, then frees the logits. Backward
    only scales the stored gradients. So no [rows, V] tensor outlives its chunk and nothing is
    recomputed (activation checkpointing would redo every head matmul).
    The teacher is either dense (hidden rows + head weight) or sparse (top-k ids + log-probs).
    """

    @staticmethod
    def forward(ctx, s_hidden, s_head, teacher_a, teacher_b, labels, weights, opts):
        kd_w, ce_w = weights
        kind, temperature, beta, chunk, sparse = opts
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n = labels.numel()
        grad_h = torch.zeros_like(s_hidden, dtype=torch.float32) if want_grad else None
        w_leaf = s_head.detach().requires_grad_(want_grad)
        kd_sum = s_hidden.new_zeros((), dtype=torch.float32)
        ce_sum = s_hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            with torch.enable_grad():
                h = s_hidden[sl].detach().requires_grad_(want_grad)
                s_logits = (h @ w_leaf.t()).float()
                loss = s_logits.new_zeros(())
                if kd_w:
                    s_logp = F.log_softmax(s_logits / temperature, dim=-1)
                    with torch.no_grad():
                        if sparse:  # teacher_a: ids [n, k], teacher_b: log-probs [n, k]
                            t_logp = F.log_softmax(_bucket_logp(teacher_b[sl]) / temperature, dim=-1)
                        else:  # teacher_a: hidden rows [n, Ht], teacher_b: head [V, Ht]
                            t_logp = F.log_softmax((teacher_a[sl] @ teacher_b.t()).float() / temperature, -1)
                    if sparse:
                        s_logp = _bucket_logp(s_logp.gather(-1, teacher_a[sl].long()))
                    kd = token_divergence(s_logp, t_logp, kind, beta).sum()
                    kd_sum += kd.detach()
                    loss = loss + kd * (kd_w * temperature**2 / n)
                if ce_w:
                    ce = F.cross_entropy(s_logits, labels[sl], reduction="sum")
                    ce_sum += ce.detach()
                    loss = loss + ce * (ce_w / n)
                if want_grad:
                    loss.backward()  # accumulates into w_leaf.grad; h.grad is this chunk's rows
                    grad_h[sl] = h.grad
        ctx.dtypes = (s_hidden.dtype, s_head.dtype)
        ctx.save_for_backward(grad_h if want_grad else None,
                              w_leaf.grad if want_grad and w_leaf.grad is not None else None)
        total = kd_w * kd_sum / n * temperature**2 + ce_w * ce_sum / n
        kd_out, ce_out = kd_sum / n * temperature**2, ce_sum / n
        ctx.mark_non_differentiable(kd_out, ce_out)  # reported terms; the gradient is total's
        return total, kd_out, ce_out

    @staticmethod
    def backward(ctx, g_total, _g_kd, _g_ce):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else (grad_h * g_total).to(ctx.dtypes[0])
        gw = None if grad_w is None else (grad_w * g_total).to(ctx.dtypes[1])
        return gh, gw, None, None, None, None, None


def chunked_kd_ce(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_head: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int = 256,
    teacher_top_idx: torch.Tensor | None = None,
    teacher_top_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kd_weight * KD * T^2 + ce_weight * CE from final hidden states, never holding [B, S, V].

    student_hidden: [B, S, Hs] (after the final norm); student_head: [V, Hs] output-embedding weight
    (sliced to the shared vocab); labels: [B, S], -100 ignored. The teacher is either online,
    teacher_hidden [B, S, Ht] + teacher_head [V, Ht], or cached, teacher_top_idx [B, S, k] +
    teacher_top_logp [B, S, k] (then the KD term is `sparse_kd_loss`'s k+1-bucket divergence);
    all None when kd_weight is 0. Means are over kept tokens.
    Returns (total loss with gradient, KD term * T^2 detached, CE term detached).
    """
    sparse = teacher_top_idx is not None
    if kd_weight and not sparse and (teacher_hidden is None or teacher_head is None):
        raise ValueError("kd_weight > 0 needs teacher_hidden + teacher_head, or the cached top-k")
    if not kd_weight and not ce_weight:
        raise ValueError("both kd_weight and ce_weight are 0")
    idx = _kept_rows(labels, labels.numel(), labels.device)
    if idx.numel() == 0:
        zero = student_hidden.sum() * 0.0
        return zero, zero.detach(), zero.detach()
    s_rows = student_hidden.reshape(-1, student_hidden.shape[-1])[idx]
    if not kd_weight:
        t_a = t_b = None
    elif sparse:
        k = teacher_top_idx.shape[-1]
        t_a, t_b = teacher_top_idx.reshape(-1, k)[idx], teacher_top_logp.reshape(-1, k)[idx]
    else:
        t_a, t_b = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])[idx], teacher_head
    lab = labels.reshape(-1)[idx]
    return _FusedChunkedKD.apply(s_rows, student_head, t_a, t_b, lab, (kd_weight, ce_weight),
                                 (kind, temperature, beta, chunk_size, sparse))


# -------------------------------------------------------------------------------- sparse (top-k)
def _bucket_logp(top_logp: torch.Tensor) -> torch.Tensor:
    """[N, k] log-probs of k tokens -> [N, k+1] with a last bucket holding the remaining mass."""
    top_logp = top_logp.float()
    rest = torch.logsumexp(top_logp, dim=-1, keepdim=True).clamp(max=0.0)
    # log(1 - exp(a)) for a <= 0, stable near 0; floor keeps log(0) finite when top-k covers all.
    tail = torch.log((-torch.expm1(rest)).clamp(min=1e-30))
    return torch.cat([top_logp, tail], dim=-1)


def sparse_kd_loss(
    student_logits: torch.Tensor,
    teacher_top_idx: torch.Tensor,
    teacher_top_logp: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int = 256,
) -> torch.Tensor:
    """KD against a cached teacher given only its top-k log-probs (k + 1 buckets).

    student_logits: [B, S, V]; teacher_top_idx: [B, S, k] token ids; teacher_top_logp: [B, S, k]
    teacher log-probs at T=1 over the full vocab; labels: [B, S] or None. Both distributions are
    reduced to k+1 buckets: the k teacher tokens and "everything else" (1 - their mass). This is
    exact when k = V and T = 1; the student's tail is exact at any T, the teacher's tail is
    tempered as if it were one token. -> scalar (mean over kept tokens, times T^2).
    """
    vocab = student_logits.shape[-1]
    k = teacher_top_idx.shape[-1]
    s_flat = student_logits.reshape(-1, vocab)
    i_flat = teacher_top_idx.reshape(-1, k).long()
    t_flat = teacher_top_logp.reshape(-1, k)
    idx = _kept_rows(labels, s_flat.shape[0], s_flat.device)
    if idx.numel() == 0:
        return student_logits.sum() * 0.0
    total = student_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, idx.numel(), chunk_size):
        rows = idx[start : start + chunk_size]
        s_full = F.log_softmax(s_flat[rows].float() / temperature, dim=-1)
        s_b = _bucket_logp(s_full.gather(-1, i_flat[rows]))
        t_b = F.log_softmax(_bucket_logp(t_flat[rows]) / temperature, dim=-1)
        total = total + token_divergence(s_b, t_b, kind, beta).sum()
    return total / idx.numel() * temperature**2


def top_k_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [.., k] int64, log-probs [.., k] fp32) of the k most likely tokens; logits [.., V]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    values, indices = logp.topk(k, dim=-1)
    return indices, values


# ------------------------------------------------------------------------------- hidden states
def even_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer index for each of n_student layers: evenly spaced, first and last kept."""
    if n_student > n_teacher:
        raise ValueError(f"cannot map {n_student} student layers onto {n_teacher} teacher layers")
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


class HiddenProjector(torch.nn.Module):
    """Learned linear maps student width -> teacher width, one per matched layer (identity if equal)."""

    def __init__(self, student_width: int, teacher_width: int, n_layers: int):
        super().__init__()
        self.needed = student_width != teacher_width
        self.maps = torch.nn.ModuleList(
            [torch.nn.Linear(student_width, teacher_width, bias=False) for _ in range(n_layers)]
            if self.needed else []
        )

    def forward(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.maps[i](hidden) if self.needed else hidden


def hidden_loss(
    student_states: list[torch.Tensor] | tuple[torch.Tensor, ...],
    teacher_states: list[torch.Tensor] | tuple[torch.Tensor, ...],
    pairs: list[tuple[int, int]],
    *,
    kind: str = "mse",
    projector: HiddenProjector | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean hidden-state distance over matched layers.

    student_states / teacher_states: per-layer [B, S, Hs] / [B, S, Ht] (HF `hidden_states`, index 0
    = embeddings); pairs: (student index, teacher index); projector maps Hs -> Ht when they differ;
    mask: [B, S] bool of positions to count (None = all). mse = mean squared error per feature;
    cosine = 1 - cosine similarity per token. -> scalar (mean over pairs and positions).
    """
    if not pairs:
        raise ValueError("hidden_loss needs at least one (student, teacher) layer pair")
    total = None
    for n, (si, ti) in enumerate(pairs):
        s = student_states[si].float()
        if projector is not None:
            s = projector(n, s)
        t = teacher_states[ti].float().detach()
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"hidden widths differ ({s.shape[-1]} vs {t.shape[-1]}): pass a HiddenProjector")
        if kind == "mse":
            per_tok = (s - t).pow(2).mean(-1)
        elif kind == "cosine":
            per_tok = 1 - F.cosine_similarity(s, t, dim=-1)
        else:
            raise ValueError(f"unknown hidden loss '{kind}' (valid: mse, cosine)")
        term = per_tok[mask].mean() if mask is not None else per_tok.mean()
        total = term if total is None else total + term
    return total / len(pairs)
