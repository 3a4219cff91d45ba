"""KD training-step tokens/s, side by side in one process: this workbench's step (bodies -> fused
chunked KD from hidden states) vs TRL's GKD loss (`GKDTrainer.generalized_jsd_loss`, full
[B, S, V] logits from both models), on the same models, batch, sequence, optimizer and threads.

The TRL side runs its loss inside the same bare loop (no Trainer): Trainer bookkeeping would only
add time to TRL, so this is the loss path compared at its fastest. MFU = model FLOPs (6 N per
trained token for the student incl. head, 2 N per token for the teacher forward) / measured fp32
matmul peak on this machine, same thread count.
  python bench/kd_step_throughput.py  ->  bench/results/kd_step_throughput.json
"""

import json
import os
import time
from pathlib import Path

import torch

THREADS = int(os.environ.get("BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from distill import losses, students  # noqa: E402

VOCAB, SEQ, BATCH, STEPS, WARMUP = 49_152, 256, 4, 4, 1
BASE = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
            head_dim=64, max_position_embeddings=512, tie_word_embeddings=True)


def build(layers, seed):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", num_hidden_layers=layers, **BASE))


def matmul_peak() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - t)


def run(kind: str, teacher, student, batches) -> float:
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    times = []
    for i, batch in enumerate(batches):
        t = time.perf_counter()
        labels = losses.shift_labels(batch)
        if kind == "distill":
            with torch.no_grad():
                t_h = students.final_hidden(teacher, batch)
            loss, _, _ = losses.chunked_kd_ce(students.final_hidden(student, batch), students.output_head(student),
                                              t_h, students.output_head(teacher), labels, kd_weight=1.0,
                                              kind="jsd", beta=0.5, chunk_size=512)
        else:
            from trl.experimental.gkd import GKDTrainer

            s_logits = student(input_ids=batch).logits
            with torch.no_grad():
                t_logits = teacher(input_ids=batch).logits
            loss = GKDTrainer.generalized_jsd_loss(s_logits, t_logits, labels=labels, beta=0.5)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    return BATCH * SEQ * len(times) / sum(times)


def main() -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    teacher, student = build(6, 0).eval(), build(3, 1)
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCAB, (BATCH, SEQ), generator=g) for _ in range(STEPS + WARMUP)]
    peak = matmul_peak()
    result = {"threads": THREADS, "vocab": VOCAB, "seq": SEQ, "batch": BATCH, "timed_steps": STEPS,
              "warmup_steps": WARMUP, "dtype": "float32", "teacher_params": n_t, "student_params": n_s,
              "loss": "generalized JSD beta=0.5, T=1", "matmul_peak_gflops": round(peak / 1e9, 1),
              "torch": torch.__version__}
    import trl

    result["trl"] = trl.__version__
    flops_per_token = 6 * n_s + 2 * n_t
    # alternate the order so machine-load drift hits both sides alike
    for kind in ("trl_gkd", "distill", "trl_gkd", "distill"):
        tps = run(kind, teacher, student, batches)
        result.setdefault(kind, []).append(round(tps, 1))
    for kind in ("trl_gkd", "distill"):
        best = max(result[kind])
        result[f"{kind}_tok_per_s"] = best
        result[f"{kind}_mfu"] = round(best * flops_per_token / peak, 3)
    result["speedup_vs_trl"] = round(result["distill_tok_per_s"] / result["trl_gkd_tok_per_s"], 3)
    dest = Path(__file__).resolve().parent / "results/kd_step_throughput.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
