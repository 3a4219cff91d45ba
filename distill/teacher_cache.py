"""Offline teacher: top-k log-probs and token ids for every training block, written once in shards.

Why: a teacher that does not fit in memory beside the student (or is too slow to run every step)
can still teach. The teacher runs once over the training blocks; training then reads k ids and k
log-probs per token instead of running the teacher.

Layout of a cache directory:
  meta.json                teacher hash, data hash, k, seq_len, vocab, shard size, block count
  shard-00000.safetensors  ids [n, S, k] (uint16 when the vocab fits, else int32) and
                           logp [n, S, k] fp16, for blocks shard*shard_blocks ...
  summary.json             written when every shard exists: bytes/token, shards, time

Shards are written through a temp file + rename, so a killed fill resumes at the first missing
shard. A cache whose teacher hash or data hash differs from the current run is refused, never
silently reused (a cache from another teacher would teach the wrong distribution).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from distill.artifacts import write_json_atomic
from distill.errors import DistillError

logger = logging.getLogger(__name__)

META = "meta.json"
SUMMARY = "summary.json"
FORMAT_VERSION = 1


def tensor_hash(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def teacher_hash(model) -> str:
    """sha256 over the teacher's parameter names, shapes, dtypes and values (config-independent)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _shard_path(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.safetensors"


def _check_meta(root: Path, meta: dict) -> None:
    """Refuse a cache written for another teacher, other data or another k."""
    old = json.loads((root / META).read_text())
    for key, what in (("teacher_sha256", "teacher"), ("data_sha256", "training data"),
                      ("top_k", "top_k"), ("seq_len", "seq_len"), ("vocab", "vocab size"),
                      ("shard_blocks", "shard size")):
        if old.get(key) != meta[key]:
            raise DistillError(
                f"teacher cache '{root}' was written for a different {what} "
                f"({key} {str(old.get(key))[:16]} vs now {str(meta[key])[:16]})",
                "delete that cache directory or set cache.dir to a new one",
            )


@torch.no_grad()
def fill(root: Path, teacher, tokens: torch.Tensor, top_k: int, vocab: int, shard_blocks: int = 256,
         batch_size: int = 8, chunk_size: int = 1024, t_hash: str | None = None) -> dict:
    """Write (or finish writing) the cache of `teacher` over `tokens` [N, S]. -> summary dict.

    Logits are built from final hidden states `chunk_size` rows at a time and reduced to top-k at
    once, so a full [batch, S, V] logit tensor never exists. vocab: the shared vocabulary the
    student is compared on (the teacher head is sliced to it).
    """
    from tqdm.auto import tqdm

    from distill.students import final_hidden, output_head

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_blocks, seq_len = tokens.shape
    meta = {"format_version": FORMAT_VERSION, "teacher_sha256": t_hash or teacher_hash(teacher),
            "data_sha256": tensor_hash(tokens), "top_k": top_k, "seq_len": seq_len, "vocab": vocab,
            "n_blocks": n_blocks, "shard_blocks": shard_blocks,
            "ids_dtype": "uint16" if vocab <= 65536 else "int32", "logp_dtype": "float16"}
    if (root / META).is_file():
        _check_meta(root, meta)
    else:
        write_json_atomic(root / META, meta)
    if (root / SUMMARY).is_file():
        return json.loads((root / SUMMARY).read_text())

    from safetensors.torch import save_file

    ids_dtype = torch.uint16 if meta["ids_dtype"] == "uint16" else torch.int32
    head = output_head(teacher)[:vocab]
    n_shards = -(-n_blocks // shard_blocks)
    todo = [s for s in range(n_shards) if not _shard_path(root, s).is_file()]
    if len(todo) < n_shards:
        logger.info("teacher cache: %d of %d shards already written, resuming", n_shards - len(todo), n_shards)
    t0 = time.perf_counter()
    was_training = teacher.training
    teacher.eval()
    bar = tqdm(total=sum(min(shard_blocks, n_blocks - s * shard_blocks) for s in todo) * seq_len,
               desc="teacher cache", unit="tok", unit_scale=True)
    for shard in todo:
        lo, hi = shard * shard_blocks, min(n_blocks, (shard + 1) * shard_blocks)
        ids_out = torch.empty(hi - lo, seq_len, top_k, dtype=ids_dtype)
        logp_out = torch.empty(hi - lo, seq_len, top_k, dtype=torch.float16)
        for b in range(lo, hi, batch_size):
            batch = tokens[b : min(hi, b + batch_size)]
            hidden = final_hidden(teacher, batch)
            flat = hidden.reshape(-1, hidden.shape[-1])
            ids_rows, logp_rows = [], []
            for c in range(0, flat.shape[0], chunk_size):
                logp = torch.log_softmax((flat[c : c + chunk_size] @ head.t()).float(), dim=-1)
                values, indices = logp.topk(top_k, dim=-1)
                ids_rows.append(indices)
                logp_rows.append(values)
            shape = (batch.shape[0], seq_len, top_k)
            ids_out[b - lo : b - lo + batch.shape[0]] = torch.cat(ids_rows).view(shape).to(ids_dtype)
            logp_out[b - lo : b - lo + batch.shape[0]] = torch.cat(logp_rows).view(shape).half()
            bar.update(batch.numel())
        tmp = _shard_path(root, shard).with_suffix(".tmp")
        save_file({"ids": ids_out, "logp": logp_out}, str(tmp))
        tmp.rename(_shard_path(root, shard))
    bar.close()
    teacher.train(was_training)
    size = sum(_shard_path(root, s).stat().st_size for s in range(n_shards))
    summary = {"shards": n_shards, "tokens": n_blocks * seq_len, "bytes": size,
               "bytes_per_token": round(size / (n_blocks * seq_len), 2), "top_k": top_k,
               "dense_fp16_bytes_per_token": vocab * 2, "fill_seconds": round(time.perf_counter() - t0, 2)}
    write_json_atomic(root / SUMMARY, summary)
    logger.info("teacher cache: %d tokens, %.1f bytes/token (dense fp16 would be %d)", summary["tokens"],
                summary["bytes_per_token"], vocab * 2)
    return summary


class TeacherCache:
    """Reads cached top-k rows by block index (shards opened lazily, memory-mapped by safetensors)."""

    def __init__(self, root: Path, expect_teacher: str | None = None):
        self.root = Path(root)
        if not (self.root / SUMMARY).is_file():
            raise DistillError(f"teacher cache '{self.root}' is incomplete (no {SUMMARY})",
                               "re-run the stage: filling resumes at the first missing shard")
        self.meta = json.loads((self.root / META).read_text())
        if expect_teacher is not None and self.meta["teacher_sha256"] != expect_teacher:
            raise DistillError(f"teacher cache '{self.root}' comes from a different teacher",
                               "delete it or set cache.dir to a new directory")
        self._open: dict[int, object] = {}

    def _shard(self, index: int):
        from safetensors import safe_open

        if index not in self._open:
            self._open[index] = safe_open(str(_shard_path(self.root, index)), framework="pt")
        return self._open[index]

    def lookup(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, S, k] int64, log-probs [B, S, k] fp32) of blocks `rows`."""
        size = self.meta["shard_blocks"]
        ids, logps = [], []
        for row in rows:
            shard = self._shard(row // size)
            local = row % size
            ids.append(shard.get_slice("ids")[local : local + 1])
            logps.append(shard.get_slice("logp")[local : local + 1])
        return torch.cat(ids).to(torch.int64), torch.cat(logps).float()
