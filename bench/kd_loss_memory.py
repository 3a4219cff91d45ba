"""Peak RSS of one KD loss forward+backward at the real Qwen3 vocab (151,936) x seq 2048:
naive full-vocab KL (logits materialised for both models) vs the workbench's fused chunked loss.

Each variant runs in a fresh subprocess so ru_maxrss is its own peak. The "model" is just the last
hidden states [1, 2048, 64] and two output heads [151936, 64] (a tiny model with a real vocab).
  python bench/kd_loss_memory.py  ->  bench/results/kd_loss_memory.json
"""

import json
import resource
import subprocess
import sys
from pathlib import Path

V, S, H = 151_936, 2048, 64

CHILD = """
import resource, sys, time, torch, torch.nn.functional as F
from distill import losses
torch.manual_seed(0)
V, S, H, mode = {V}, {S}, {H}, sys.argv[1]
sh = torch.randn(1, S, H, requires_grad=True); w = (torch.randn(V, H) * 0.02).requires_grad_()
th = torch.randn(1, S, H); tw = torch.randn(V, H) * 0.02
labels = torch.randint(0, V, (1, S))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "naive":
    s_logits = sh @ w.t()
    with torch.no_grad():
        t_logits = th @ tw.t()
    loss = F.kl_div(F.log_softmax(s_logits, -1).view(-1, V), F.log_softmax(t_logits, -1).view(-1, V),
                    log_target=True, reduction="batchmean")
else:
    loss, _, _ = losses.chunked_kd_ce(sh, w, th, tw, labels, kd_weight=1.0, ce_weight=0.0, chunk_size=256)
loss.backward()
print(float(loss), base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)
"""


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    out = {"vocab": V, "seq": S, "hidden": H, "batch": 1, "dtype": "float32", "chunk_size": 256,
           "threads": 1, "unit": "MiB (ru_maxrss of a fresh process, minus its RSS before the loss)"}
    for mode in ("naive", "chunked"):
        res = subprocess.run([sys.executable, "-c", CHILD.format(V=V, S=S, H=H), mode], cwd=root, check=True,
                             capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
                                                                  "PATH": "/usr/bin:/bin"})
        loss, base, peak, secs = res.stdout.split()
        out[mode] = {"loss": float(loss), "peak_mib": round((int(peak) - int(base)) / 1024, 1),
                     "process_peak_mib": round(int(peak) / 1024, 1), "seconds": round(float(secs), 2)}
    out["ratio_chunked_over_naive"] = round(out["chunked"]["peak_mib"] / out["naive"]["peak_mib"], 3)
    out["loss_abs_diff"] = abs(out["naive"]["loss"] - out["chunked"]["loss"])
    dest = root / "bench/results/kd_loss_memory.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
