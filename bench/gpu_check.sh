#!/usr/bin/env bash
# GPU check: a few minutes on one node with >= 2 CUDA GPUs (80 GB class). Never part of the tests.
# Not run yet: the machine this was written on has no GPU. Run it on a GPU node and commit $OUT.
#   bash bench/gpu_check.sh                 # NPROC=2 by default; OUT=bench/results/gpu_check
# 1. the real-shape Qwen3-ASR 1.7B -> 0.6B smoke (bench/qwen3_asr_real_shape.py), when present;
# 2. two FSDP steps of a real-shaped Qwen3-1.7B student (random weights, offline-KD loss over a
#    top-64 cache of the real 151,936 vocabulary) through the shared training loop, printing each
#    process's peak CUDA memory beside `distill plan`'s per-device total for the same stage.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-2}
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= int('$NPROC') else 'needs $NPROC CUDA GPUs')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv"
"$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee "$OUT/versions.txt"

echo "== 1/2 Qwen3-ASR real-shape smoke"
if [ -f bench/qwen3_asr_real_shape.py ]; then
  timeout 900 "$PY" bench/qwen3_asr_real_shape.py --out "$OUT/qwen3_asr_real_shape" 2>&1 | tail -n 20
else
  echo "skipped: bench/qwen3_asr_real_shape.py is not in this checkout"
fi

echo "== 2/2 FSDP, $NPROC processes, real-shaped Qwen3-1.7B student, 2 steps"
timeout 900 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" bench/fsdp_real_shape.py \
  --config recipes/moe/configs/qwen3-1.7b --steps 2 --batch 2 --seq 2048 --out "$OUT/fsdp_real_shape.json" \
  2>&1 | grep -v -i warning | tail -n 5
echo "done: $OUT"
