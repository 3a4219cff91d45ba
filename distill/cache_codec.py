"""The compact teacher-cache layout: top-k ids Elias-Fano coded, log-probs as companded codes.

Per token (k ids out of V rows, ids in ascending order):
  ids_low   k x floor(log2(V/k)) bits: each id's low bits as they are
  ids_high  k + (V >> low) + 1 bits: the high parts as a unary-coded non-decreasing sequence (bit
            high_i + i set), so ~2 + log2(V/k) bits an id at a fixed size per token
  codes     k x logp_bits: each id's log-prob gap below the top, sqrt-companded over [0, span]
            (fine steps near the top, where the probability mass is)
  head      top log-prob, span (largest gap), log of the tail mass, as fp16
Decoding rescales the k values to hold exactly 1 - tail, so the KD loss's tail bucket is the
teacher's. Pure tensor/bit functions: distill.teacher_cache reads and writes the shards.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """[n, m] non-negative ints < 2**bits -> [n, ceil(m*bits/8)] uint8 (little-endian bit stream)."""
    if bits == 0 or values.shape[1] == 0:
        return np.zeros((values.shape[0], 0), dtype=np.uint8)
    shifts = np.arange(bits, dtype=np.uint64)
    bit_rows = ((values.astype(np.uint64)[:, :, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bit_rows.reshape(values.shape[0], -1), axis=1, bitorder="little")


def _unpack(packed: np.ndarray, m: int, bits: int) -> np.ndarray:
    """Inverse of _pack: [n, bytes] uint8 -> [n, m] int64."""
    if bits == 0:
        return np.zeros((packed.shape[0], m), dtype=np.int64)
    bit_rows = np.unpackbits(packed, axis=1, count=m * bits, bitorder="little").reshape(packed.shape[0], m, bits)
    return (bit_rows.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(-1)


def ef_layout(vocab: int, top_k: int) -> tuple[int, int]:
    """Elias-Fano layout of k distinct ids < vocab: (low bits per id, length of the high-bit vector).

    Sorted ids keep their low l = floor(log2(vocab / k)) bits as they are and write the rest as a
    unary-coded, non-decreasing sequence in k + (vocab >> l) + 1 bits: about 2 + log2(vocab / k)
    bits an id at a FIXED size per token (Qwen3, k=64: 11 + 2.2 bits instead of 18)."""
    low = max(0, math.floor(math.log2(vocab / top_k))) if vocab > top_k else 0
    return low, top_k + ((vocab - 1) >> low) + 1


def compact_bytes_per_token(top_k: int, vocab: int, logp_bits: int) -> int:
    low, high = ef_layout(vocab, top_k)
    return -(-top_k * low // 8) + -(-high // 8) + -(-top_k * logp_bits // 8) + 6


def encode_compact(ids: torch.Tensor, logp: torch.Tensor, vocab: int, logp_bits: int) -> dict[str, torch.Tensor]:
    """ids, logp [n, k] (top-k, log-probs over the full vocab) -> compact tensors (order by id)."""
    order = ids.argsort(-1)
    ids, logp = ids.gather(-1, order).to(torch.int64).numpy(), logp.float().gather(-1, order)
    n, k = ids.shape
    low, high = ef_layout(vocab, k)
    upper = np.zeros((n, high), dtype=np.uint8)
    np.put_along_axis(upper, (ids >> low) + np.arange(k), 1, axis=1)
    top = logp.max(-1).values
    gaps = (top[:, None] - logp).clamp(min=0)  # [n, k], 0 at the top token
    span = gaps.max(-1, keepdim=True).values.clamp(min=1e-6)
    levels = (1 << logp_bits) - 1
    codes = (torch.sqrt(gaps / span) * levels).round().clamp(0, levels).to(torch.int64)
    tail = (-torch.expm1(torch.logsumexp(logp, -1).clamp(max=0))).clamp(min=1e-30).log()
    return {"ids_low": torch.from_numpy(_pack(ids & ((1 << low) - 1), low)),
            "ids_high": torch.from_numpy(np.packbits(upper, axis=1, bitorder="little")),
            "codes": torch.from_numpy(_pack(codes.numpy(), logp_bits)),
            "head": torch.stack([top, span[:, 0], tail], dim=-1).half()}


def decode_compact(parts: dict[str, torch.Tensor], top_k: int, vocab: int, logp_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact tensors of n tokens -> (ids [n, k] int64 ascending, their log-probs [n, k] fp32,
    rescaled to hold exactly 1 - tail)."""
    low, high = ef_layout(vocab, top_k)
    n = parts["head"].shape[0]
    bits = np.unpackbits(parts["ids_high"].numpy(), axis=1, count=high, bitorder="little")
    _, cols = np.nonzero(bits)  # row-major: each row's k set bits, ascending
    upper = cols.reshape(n, top_k) - np.arange(top_k)
    ids = torch.from_numpy((upper << low) | _unpack(parts["ids_low"].numpy(), top_k, low))
    head = parts["head"].float()
    top, span, tail = head[:, 0:1], head[:, 1:2], head[:, 2:3]
    frac = torch.from_numpy(_unpack(parts["codes"].numpy(), top_k, logp_bits)).float() / ((1 << logp_bits) - 1)
    logp = top - span * frac.square()
    mass = torch.log((-torch.expm1(tail.clamp(max=-1e-7))).clamp(min=1e-30))  # log(1 - tail)
    return ids, logp + (mass - torch.logsumexp(logp, -1, keepdim=True))
