"""Speed numbers with their conditions: LM prefill/decode tokens/s, ASR RTFx and latency, memory.

A number without batch size, dtype, threads, device, backend, warm-up and timer is not comparable
(Open ASR Leaderboard saw RTFx move 633 -> 729 from warm-up alone), so every entry carries them,
and the load average before and after (on a shared machine the same code runs at half speed).
Timing uses time.perf_counter around whole calls, after `warmup` untimed batches.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time

from distill.errors import DistillError
from distill.provenance import cpu_model

logger = logging.getLogger(__name__)

TIMER = "time.perf_counter"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def load_average() -> list[float] | None:
    """1/5/15-minute load average: on a shared machine it says how contended a speed number was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # not on every platform
        return None


def conditions(adapter, batch_size: int, warmup: int, n: int) -> dict:
    import torch

    return {"batch_size": batch_size, "dtype": adapter.dtype, "threads": torch.get_num_threads(),
            "device": adapter.device, "device_name": device_name(adapter.device),
            "backend": adapter.backend, "warmup_steps": warmup, "timer": TIMER, "n": n}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default rule), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rtfx(audio_seconds: float, compute_seconds: float) -> float:
    """Inverse real-time factor: seconds of audio transcribed per second of compute."""
    return audio_seconds / compute_seconds


def reset_peak_memory(device: str) -> bool:
    """Start a fresh peak-RSS window (Linux: VmHWM reset via /proc/self/clear_refs) and GPU peak.

    Without it, a process that evaluates several models (a recipe's teacher, then each student)
    would report the largest model's peak for all of them. Returns False where RSS cannot be reset.
    """
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory(device: str, window_reset: bool = False, load_avg_before: list[float] | None = None) -> list[dict]:
    """Peak resident memory since `reset_peak_memory` (or of the whole process) and, on GPU, peak
    allocated; `conditions.scope` says which (with the load average over that window)."""
    hwm = _vm_hwm() if window_reset else None
    if hwm is not None:
        rss, scope = hwm, "model load to end of suite"
    else:
        # ru_maxrss is KiB on Linux, bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        scope = "whole process so far"
    load = {"load_avg_before": load_avg_before, "load_avg_after": load_average()}
    out = [{"kind": "peak_rss_bytes", "value": float(rss), "unit": "bytes", "conditions": {"scope": scope, **load}}]
    if device.startswith("cuda"):
        import torch

        # reset_peak_memory always resets the CUDA counter, whatever happened to the RSS one.
        gpu_scope = "model load to end of suite" if window_reset else "whole process so far"
        out.append({"kind": "peak_gpu_allocated_bytes", "unit": "bytes", "conditions": {"scope": gpu_scope, **load},
                    "value": float(torch.cuda.max_memory_allocated(torch.device(device)))})
    return out


def _sync(device: str):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure_lm(lm, text: str, batch_size: int, warmup: int, n: int, prompt_tokens: int,
               new_tokens: int) -> list[dict]:
    """Prefill tok/s (one forward over B x prompt_tokens) and decode tok/s (greedy, KV cache).

    Decode time = generate(prompt, new_tokens) - prefill time of the same batch, so decode tok/s
    counts only the B x new_tokens generated tokens. n = timed batches x batch_size sequences.
    """
    import torch

    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    need = prompt_tokens * batch_size
    if len(ids) < prompt_tokens:
        raise DistillError(f"throughput text has {len(ids)} tokens, fewer than prompt_tokens="
                           f"{prompt_tokens}", "use a longer text_file or fewer prompt_tokens")
    ids = (ids * (need // len(ids) + 1))[:need]  # distinct prompts per row where the text allows
    batch = torch.tensor(ids).view(batch_size, prompt_tokens)
    mask = torch.ones_like(batch)
    n_batches = max(1, -(-n // batch_size))
    load_before = load_average()
    for _ in range(warmup):
        lm.last_logprobs(batch.tolist())
        lm.generate(batch, mask, new_tokens)
    prefill, gen = [], []
    for _ in range(n_batches):
        _sync(lm.device)
        t0 = time.perf_counter()
        lm.last_logprobs(batch.tolist())
        _sync(lm.device)
        t1 = time.perf_counter()
        lm.generate(batch, mask, new_tokens)
        _sync(lm.device)
        t2 = time.perf_counter()
        prefill.append(t1 - t0)
        gen.append(t2 - t1)
    cond = conditions(lm, batch_size, warmup, n_batches * batch_size)
    cond.update(prompt_tokens=prompt_tokens, new_tokens=new_tokens, load_avg_before=load_before,
                load_avg_after=load_average())
    t_prefill, t_gen = sum(prefill), sum(gen)
    decode_s = max(t_gen - t_prefill, 1e-9)
    return [
        {"kind": "lm_prefill_tok_s", "value": n_batches * batch_size * prompt_tokens / t_prefill,
         "unit": "tokens/s", "conditions": cond},
        {"kind": "lm_decode_tok_s", "value": n_batches * batch_size * new_tokens / decode_s,
         "unit": "tokens/s", "conditions": cond},
    ]


def measure_asr(asr, items: list[dict], batch_size: int, warmup: int, n: int, language: str) -> list[dict]:
    """RTFx = sum(audio s) / sum(compute s) over the first n items, length-sorted, after warm-up.

    Latency per utterance = the wall time of the batch it was in (what a caller waits for).
    """
    from distill.evaluation.asr import transcribe

    timed = items[:n]
    if not timed:
        raise DistillError("no audio to time", "check the suite's throughput task")
    load_before = load_average()
    for _ in range(warmup):
        asr.transcribe([it["audio"] for it in timed[:batch_size]], language=language)
    _, timings = transcribe(asr, timed, batch_size, language, desc="asr throughput")
    audio_s = sum(a for a, _, _ in timings)
    compute_s = sum(c for _, c, _ in timings)
    latencies = [c for _, c, b in timings for _ in range(b)]
    cond = conditions(asr, batch_size, warmup, len(timed))
    cond.update(audio_seconds=round(audio_s, 3), load_avg_before=load_before, load_avg_after=load_average())
    return [
        {"kind": "asr_rtfx", "value": rtfx(audio_s, compute_s), "unit": "x realtime", "conditions": cond},
        {"kind": "asr_latency_p50_s", "value": percentile(latencies, 50), "unit": "s", "conditions": cond},
        {"kind": "asr_latency_p95_s", "value": percentile(latencies, 95), "unit": "s", "conditions": cond},
    ]
