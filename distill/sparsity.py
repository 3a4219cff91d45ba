"""Unstructured sparsity of a causal LM's decoder Linear weights, and honest size accounting.

magnitude  the smallest |w| of every decoder Linear set to 0 (per matrix)
2:4        semi-structured: in every group of 4 consecutive input weights the 2 smallest |w| zeroed

Sparsity does not shrink dense storage: `sparse_size` says what the weights take dense and what a
sparse format (bitmask, CSR, 2:4 with 2-bit indices) would take, so records stay honest.
"""

from __future__ import annotations

import torch

from distill.errors import DistillError
from distill.pruning import decoder_layers


def prunable_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """The Linear weights of the decoder layers (embeddings, head and routers excluded)."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer.named_modules():
            is_router = name == "gate" or name.endswith(".gate")
            if isinstance(module, torch.nn.Linear) and not is_router:
                out.append((f"layers.{i}.{name}", module))
    return out


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping the largest |w|: round(sparsity * numel) smallest entries dropped."""
    n_drop = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight, dtype=torch.bool)
    if n_drop:
        drop = weight.abs().flatten().topk(n_drop, largest=False).indices
        mask.view(-1)[drop] = False
    return mask


def n_m_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Bool mask keeping the n largest |w| in every group of m consecutive input weights per row."""
    rows, cols = weight.shape
    if cols % m:
        raise DistillError(f"a {rows}x{cols} weight has input width {cols}, not a multiple of {m}",
                           f"{n}:{m} sparsity needs input widths divisible by {m}")
    groups = weight.abs().reshape(rows, cols // m, m)
    keep = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


@torch.no_grad()
def sparsify(model, method: str, sparsity: float | None = None) -> dict:
    """Zero weights in place: method 'magnitude' (needs sparsity) or '2:4'. -> per-model facts."""
    total = zeros = 0
    for _, linear in prunable_linears(model):
        w = linear.weight
        mask = n_m_mask(w) if method == "2:4" else magnitude_mask(w, sparsity)
        w.mul_(mask)
        total += w.numel()
        zeros += int((~mask).sum())
    return {"pruned_weights": total, "zeroed": zeros, "sparsity": zeros / max(total, 1)}


def sparse_size(model, method: str) -> dict:
    """Bytes of the model dense vs with its prunable weights in a sparse format.

    bitmask: nonzero values + 1 bit per position; csr: nonzero values + int32 column index per value
    + int32 row pointers; 2:4 (method '2:4'): half the values + 2-bit position per kept value (the
    NVIDIA semi-structured layout). The rest of the model (embeddings, norms) counts dense in each.
    """
    value_bytes = next(model.parameters()).element_size()
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    layers = prunable_linears(model)
    pruned_dense = sum(lin.weight.numel() * value_bytes for _, lin in layers)
    nnz = sum(int((lin.weight != 0).sum()) for _, lin in layers)
    numel = sum(lin.weight.numel() for _, lin in layers)
    rows = sum(lin.weight.shape[0] for _, lin in layers)
    rest = dense - pruned_dense
    out = {"dense_bytes": dense, "prunable_dense_bytes": pruned_dense, "nonzero": nnz, "prunable": numel,
           "bitmask_bytes": rest + nnz * value_bytes + (numel + 7) // 8,
           "csr_bytes": rest + nnz * (value_bytes + 4) + (rows + len(layers)) * 4}
    if method == "2:4":
        out["semi_structured_2_4_bytes"] = rest + numel // 2 * value_bytes + numel // 2 * 2 // 8
    return out
