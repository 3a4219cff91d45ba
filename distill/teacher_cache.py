"""Offline teacher: top-k token ids and log-probs for every training block, written once in shards.

Why: a teacher that does not fit beside the student (or is too slow to run every step) can still
teach. The teacher runs once over the training blocks; training then reads k ids and k log-probs
per token and never loads the teacher.

Layout of a cache directory:
  meta.json                teacher fingerprint, data hash, k, seq_len, vocab, shard size, format,
                           number of filling processes
  shard-00000.safetensors  blocks shard*shard_blocks ... (format below)
  fill-rank-R.json         what process R wrote (shards, tokens, seconds)
  summary.json             written when every shard exists: bytes/token, per-process fill, time

Formats (`cache.format`):
  fp16     ids [n, S, k] uint16 (int32 above 65,536 rows) + logp [n, S, k] fp16: 2k + 2k bytes/token
           (k=64: 256 with uint16 ids, 384 with int32).
  compact  per token, ids in ascending order: the k ids Elias-Fano coded (low floor(log2(V/k)) bits
           each + a k + V/2^low bit unary vector: ~13.2 bits an id for Qwen3's 151,936 rows at
           k=64 instead of 18, still a fixed size per token), the top log-prob, the largest gap
           below it and the log of the tail mass (3 x fp16), and each id's log-prob as a
           `logp_bits`-bit code of its gap below the top, companded by a square root (fine steps
           near the top, where the probability mass is). Decoding rescales the k values so they
           hold exactly 1 - tail: the tail bucket the KD loss reads is the teacher's.
           k=64, 4 bits: 144 bytes/token for Qwen3 (fp16: 384); see bench/results/kd_cache_compact.md.
Old caches (format_version 1, no `format` key) are fp16 and are read as such.

Several processes (torchrun): process r fills shards r, r+N, r+2N, ... each written through a temp
file + rename, so a killed fill resumes at the missing shards; rank 0 merges the per-process records
into summary.json once all are done. A cache whose teacher fingerprint, data hash or format differs
from the run is refused, never silently reused, and so is resuming a half-filled cache with another
number of processes (its shards were assigned for that number).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from distill.artifacts import write_json_atomic
from distill.cache_codec import decode_compact, ef_layout, encode_compact
from distill.errors import DistillError

logger = logging.getLogger(__name__)

META = "meta.json"
SUMMARY = "summary.json"
FORMAT_VERSION = 2
FORMATS = ("compact", "fp16")
FULL_HASH_BYTES = 2 << 30  # weight files up to this size are hashed whole, larger ones sampled
SAMPLE_BYTES, SAMPLE_EVERY = 1 << 20, 1 << 30


# ------------------------------------------------------------------------------ teacher identity
def tensor_hash(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def teacher_hash(model) -> str:
    """sha256 over the teacher's parameter names, shapes, dtypes and values (config-independent)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_fingerprint(model_dir: str | Path) -> str:
    """sha256 of a model directory's config and weight files WITHOUT loading the model, so a run can
    check a cache against a 235B teacher it never loads. Files up to 2 GiB are hashed whole; larger
    ones by size, their first MiB (the safetensors header: every tensor's name, shape, offset) and
    one MiB every GiB."""
    root = Path(model_dir)
    h = hashlib.sha256()
    files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
                   or p.name == "config.json")
    if not any(p.name != "config.json" for p in files):
        raise DistillError(f"teacher '{root}' has no weight files (a shapes-only config?)",
                           "point the teacher at a directory or hub id with weights (e.g. vars.teacher=...); "
                           "config-only directories are for `distill plan`")
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            if size <= FULL_HASH_BYTES:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            else:
                for offset in range(0, size, SAMPLE_EVERY):
                    f.seek(offset)
                    h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def model_dir(source: str, ctx=None) -> str:
    """A local directory for a teacher `source` (a hub id is fetched into the HF cache first)."""
    from distill.models import resolve_source

    path = resolve_source(source, ctx)
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"])
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access: all the user's to fix
        raise DistillError(f"cannot get teacher '{source}': {str(exc).splitlines()[0][:160]}",
                           "download it first (huggingface-cli download) and point the recipe at the directory") from None


def fill_memory(local_rank: int, local_world: int) -> dict:
    """accelerate max_memory for one filling process: its share of this machine's GPUs (GPUs
    local_rank*g .. local_rank*g+g-1, g = GPUs // processes) at 90 %, then its share of CPU RAM
    for whatever does not fit (offloaded layers: slow, but the fill completes)."""
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    memory: dict = {"cpu": int(ram * 0.8 / local_world)}
    if torch.cuda.is_available():
        n_gpu = torch.cuda.device_count()
        per = max(1, n_gpu // local_world)
        first = (local_rank * per) % n_gpu
        for i in range(first, first + per):
            memory[i] = int(torch.cuda.get_device_properties(i).total_memory * 0.9)
    return memory


def load_for_fill(ref, teacher_dir: str, procs):
    """The teacher for filling the cache, placed by accelerate's big-model path
    (`device_map="auto"` + max_memory from `fill_memory`): one filling process spreads it over its
    share of the GPUs, layer by layer, so a teacher larger than one device still fills the cache."""
    import os

    from transformers import AutoModelForCausalLM

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world_size))
    memory = fill_memory(procs.local_rank, local_world)
    logger.info("teacher cache: rank %d loads the teacher with device_map=auto, max_memory %s", procs.rank,
                {k: f"{v / 2**30:.1f} GiB" for k, v in memory.items()})
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=getattr(torch, ref.dtype), device_map="auto",
                                                 max_memory=memory, trust_remote_code=ref.trust_remote_code)
    return model.eval()


# --------------------------------------------------------------------------------------- filling
def _shard_path(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.safetensors"


def _check_meta(root: Path, meta: dict) -> dict:
    """Refuse a cache written for another teacher, other data, another k or format. -> old meta."""
    old = json.loads((root / META).read_text())
    old.setdefault("format", "fp16")  # format_version 1
    for key, what in (("teacher_sha256", "teacher"), ("data_sha256", "training data"),
                      ("top_k", "top_k"), ("seq_len", "seq_len"), ("vocab", "vocab size"),
                      ("shard_blocks", "shard size"), ("format", "cache.format"),
                      ("id_coding", "id coding"), ("logp_bits", "cache.logp_bits")):
        if key in meta and old.get(key) != meta[key]:
            raise DistillError(
                f"teacher cache '{root}' was written for a different {what} "
                f"({key} {str(old.get(key))[:16]} vs now {str(meta[key])[:16]})",
                "delete that cache directory or set cache.dir to a new one",
            )
    return old


def _meta(fingerprint: str, tokens: torch.Tensor, top_k: int, vocab: int, shard_blocks: int, fmt: str,
          logp_bits: int, processes: int) -> dict:
    if fmt not in FORMATS:
        raise DistillError(f"unknown teacher cache format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    n_blocks, seq_len = tokens.shape
    meta = {"format_version": FORMAT_VERSION, "format": fmt, "teacher_sha256": fingerprint,
            "data_sha256": tensor_hash(tokens), "top_k": top_k, "seq_len": seq_len, "vocab": vocab,
            "n_blocks": n_blocks, "shard_blocks": shard_blocks, "fill_processes": processes}
    if fmt == "compact":
        if logp_bits < 1:
            raise DistillError("cache.logp_bits must be at least 1 for the compact format", "use 4 (the default)")
        meta.update(id_coding="elias-fano", id_low_bits=ef_layout(vocab, top_k)[0], logp_bits=logp_bits)
    else:
        meta.update(ids_dtype="uint16" if vocab <= 65536 else "int32", logp_dtype="float16")
    return meta


def prepare(root: Path, meta: dict) -> dict:
    """Write meta.json, or check an existing cache against it (call on rank 0 first). -> meta on disk."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / META).is_file():
        write_json_atomic(root / META, meta)
        return meta
    old = _check_meta(root, meta)
    if not (root / SUMMARY).is_file() and old.get("fill_processes", 1) != meta["fill_processes"]:
        raise DistillError(
            f"teacher cache '{root}' is half filled by {old.get('fill_processes', 1)} process(es); this run "
            f"has {meta['fill_processes']}",
            f"finish it with {old.get('fill_processes', 1)} processes, or delete the directory to refill it",
        )
    return old


@torch.no_grad()
def _top_k_rows(teacher, batch: torch.Tensor, head: torch.Tensor, top_k: int, chunk_size: int):
    """(ids [rows, k], log-probs [rows, k] fp32) of a batch, logits built chunk_size rows at a time."""
    from distill.students import final_hidden

    hidden = final_hidden(teacher, batch)
    flat = hidden.reshape(-1, hidden.shape[-1]).to(head.device)
    ids, logps = [], []
    for c in range(0, flat.shape[0], chunk_size):
        logp = torch.log_softmax((flat[c : c + chunk_size] @ head.t()).float(), dim=-1)
        values, indices = logp.topk(top_k, dim=-1)
        ids.append(indices.cpu())
        logps.append(values.cpu())
    return torch.cat(ids), torch.cat(logps)


def fill(root: Path, teacher, tokens: torch.Tensor, top_k: int, vocab: int, shard_blocks: int = 256,
         batch_size: int = 8, chunk_size: int = 1024, t_hash: str | None = None, fmt: str = "fp16",
         logp_bits: int = 4, procs=None) -> dict:
    """Write (or finish writing) this process's shards of the cache of `teacher` over `tokens` [N, S].

    teacher: the model, or a function returning it, called only when this process has shards to
    write (so a complete cache never loads the teacher). vocab: the rows the student is compared on
    (the teacher head is sliced to them). procs: distill.context.Processes (None = one process).
    Returns the merged summary on every process.
    """
    from distill.context import Processes

    procs = procs or Processes()
    root = Path(root)
    if t_hash is None:
        teacher = teacher() if callable(teacher) and not isinstance(teacher, torch.nn.Module) else teacher
        t_hash = teacher_hash(teacher)
    meta = _meta(t_hash, tokens, top_k, vocab, shard_blocks, fmt, logp_bits, procs.world_size)
    with procs.main_first():
        meta = prepare(root, meta)
    if (root / SUMMARY).is_file():
        return json.loads((root / SUMMARY).read_text())

    n_blocks, seq_len = tokens.shape
    n_shards = -(-n_blocks // shard_blocks)
    mine = list(range(procs.rank, n_shards, procs.world_size))
    todo = [s for s in mine if not _shard_path(root, s).is_file()]
    t0 = time.perf_counter()
    if todo:
        _fill_shards(root, teacher, tokens, todo, meta, batch_size, chunk_size, procs.rank)
        teacher = None
        if torch.cuda.is_available():  # the teacher's blocks go back before the student trains
            torch.cuda.empty_cache()
    record = {"rank": procs.rank, "shards": len(mine), "written_now": len(todo), "seconds": round(time.perf_counter() - t0, 2),
              "tokens": sum(min(shard_blocks, n_blocks - s * shard_blocks) for s in mine) * seq_len}
    write_json_atomic(root / f"fill-rank-{procs.rank}.json", record)
    procs.barrier()
    if procs.is_main:
        _summarize(root, meta, n_shards)
    procs.barrier()
    if not (root / SUMMARY).is_file():  # only when a process runs without its peers (tests)
        raise DistillError(f"teacher cache '{root}' is incomplete: rank 0 has not merged it",
                           "run every process of the fill together (torchrun)")
    return json.loads((root / SUMMARY).read_text())


def _fill_shards(root: Path, teacher, tokens: torch.Tensor, todo: list[int], meta: dict, batch_size: int,
                 chunk_size: int, rank: int) -> None:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from distill.students import output_head

    if callable(teacher) and not isinstance(teacher, torch.nn.Module):
        teacher = teacher()
    n_blocks, seq_len = tokens.shape
    top_k, vocab, size = meta["top_k"], meta["vocab"], meta["shard_blocks"]
    head = output_head(teacher)[:vocab]
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    logger.info("teacher cache: rank %d fills %d shard(s)", rank, len(todo))
    bar = tqdm(total=sum(min(size, n_blocks - s * size) for s in todo) * seq_len, desc=f"teacher cache r{rank}",
               unit="tok", unit_scale=True, position=rank)
    for shard in todo:
        lo, hi = shard * size, min(n_blocks, (shard + 1) * size)
        ids, logp = [], []
        for b in range(lo, hi, batch_size):
            batch = tokens[b : min(hi, b + batch_size)].to(device)
            i, v = _top_k_rows(teacher, batch, head, top_k, chunk_size)
            ids.append(i)
            logp.append(v)
            bar.update(batch.numel())
        ids, logp = torch.cat(ids), torch.cat(logp)
        shape = (hi - lo, seq_len, -1)
        if meta["format"] == "compact":
            tensors = {k: v.reshape(hi - lo, seq_len, v.shape[1])
                       for k, v in encode_compact(ids, logp, vocab, meta["logp_bits"]).items()}
        else:
            ids_dtype = torch.uint16 if meta["ids_dtype"] == "uint16" else torch.int32
            tensors = {"ids": ids.view(shape).to(ids_dtype), "logp": logp.view(shape).half()}
        tmp = _shard_path(root, shard).with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.rename(_shard_path(root, shard))
    bar.close()
    teacher.train(was_training)


def _summarize(root: Path, meta: dict, n_shards: int) -> None:
    missing = [s for s in range(n_shards) if not _shard_path(root, s).is_file()]
    if missing:
        raise DistillError(f"teacher cache '{root}': shards {missing[:5]} were not written",
                           "re-run the stage: filling resumes at the missing shards")
    ranks = [json.loads(p.read_text()) for p in sorted(root.glob("fill-rank-*.json"))]
    size = sum(_shard_path(root, s).stat().st_size for s in range(n_shards))
    tokens = meta["n_blocks"] * meta["seq_len"]
    summary = {"shards": n_shards, "tokens": tokens, "bytes": size, "bytes_per_token": round(size / tokens, 2),
               "top_k": meta["top_k"], "format": meta["format"], "logp_bits": meta.get("logp_bits"),
               "dense_fp16_bytes_per_token": meta["vocab"] * 2, "fill_processes": meta["fill_processes"],
               "per_process": ranks, "fill_seconds": max((r["seconds"] for r in ranks), default=0.0)}
    write_json_atomic(root / SUMMARY, summary)
    logger.info("teacher cache: %d tokens, %.1f bytes/token (%s; dense fp16 would be %d)", tokens,
                summary["bytes_per_token"], meta["format"], meta["vocab"] * 2)


# --------------------------------------------------------------------------------------- reading
class TeacherCache:
    """Reads cached top-k rows by block index (shards opened lazily, memory-mapped by safetensors)."""

    def __init__(self, root: Path, expect_teacher: str | None = None):
        self.root = Path(root)
        if not (self.root / SUMMARY).is_file():
            raise DistillError(f"teacher cache '{self.root}' is incomplete (no {SUMMARY})",
                               "re-run the stage: filling resumes at the first missing shard")
        self.meta = json.loads((self.root / META).read_text())
        self.meta.setdefault("format", "fp16")  # format_version 1
        if self.meta["format"] == "compact" and self.meta.get("id_coding") != "elias-fano":
            raise DistillError(f"teacher cache '{self.root}' has an older compact layout this version does "
                               "not read", "delete it (the next run refills it) or set cache.dir to a new one")
        if expect_teacher is not None and self.meta["teacher_sha256"] != expect_teacher:
            raise DistillError(f"teacher cache '{self.root}' comes from a different teacher",
                               "delete it or set cache.dir to a new directory")
        self._open: dict[int, object] = {}

    def _shard(self, index: int):
        from safetensors import safe_open

        if index not in self._open:
            self._open[index] = safe_open(str(_shard_path(self.root, index)), framework="pt")
        return self._open[index]

    def _rows(self, name: str, rows: list[int]) -> torch.Tensor:
        size = self.meta["shard_blocks"]
        return torch.cat([self._shard(r // size).get_slice(name)[r % size : r % size + 1] for r in rows])

    def lookup(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, S, k] int64, log-probs [B, S, k] fp32) of blocks `rows`."""
        if self.meta["format"] == "fp16":
            return self._rows("ids", rows).to(torch.int64), self._rows("logp", rows).float()
        m, k = self.meta, self.meta["top_k"]
        parts = {name: self._rows(name, rows) for name in ("ids_low", "ids_high", "codes", "head")}
        b, s = parts["head"].shape[:2]
        ids, logp = decode_compact({n: p.reshape(b * s, -1) for n, p in parts.items()}, k, m["vocab"], m["logp_bits"])
        return ids.view(b, s, k), logp.view(b, s, k)
