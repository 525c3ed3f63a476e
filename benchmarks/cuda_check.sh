#!/usr/bin/env bash
# Issue 6's CUDA figures on one GPU, as one prepared run of under 10 minutes (sized for an H200):
#   1. `main.py bench` at 256 px for resnet50 and wide_resnet50_2: training images/s (fast vs naive),
#      inference, peak memory, a 167-image category's evaluation, and the 15-category 200-epoch sweep
#      estimate derived from them; the targets (1,500 / 800 img/s, evaluation < 2 s, sweep < 30 min)
#      are checked in its output;
#   2. the evaluation again with --amp off: in fp32 the fast and naive paths must give identical
#      metrics (bf16 features, the default on CUDA, differ from the naive fp32 path by design);
#   3. optional, if time is left: the training step under torch.compile.
# Usage (repository root, a GPU visible):  bash benchmarks/cuda_check.sh
# Outputs go to $OUT (the device runner's result folder) or the current folder: bench_cuda.json,
# bench_cuda_fp32_eval.json, bench_cuda_compile.json and cuda_check.log. Nothing here is claimed
# until a session has run it on a GPU and recorded the figures.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-.}
mkdir -p "$DEST"
LOG="$DEST/cuda_check.log"
started=$(date +%s)
left() { echo $(( 570 - ($(date +%s) - started) )); }

{
  echo "== $(date -u +%FT%TZ) cuda_check on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi unavailable"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

  echo "== 1. bench at 256 px (bf16 fast path, the CUDA default)"
  timeout "$(left)" "$PY" RD4AD-main/main.py bench --device cuda --image-size 256 \
      --backbones resnet50,wide_resnet50_2 --out "$DEST/bench_cuda.json"
  echo "exit status $?"

  echo "== 2. evaluation in fp32: identical metrics expected"
  timeout "$(left)" "$PY" RD4AD-main/main.py bench --device cuda --image-size 256 --backbones resnet50 \
      --parts eval --amp off --out "$DEST/bench_cuda_fp32_eval.json"
  echo "exit status $?"

  if [ "$(left)" -gt 200 ]; then
    echo "== 3. training step under torch.compile (optional)"
    timeout "$(( $(left) - 20 ))" "$PY" RD4AD-main/main.py bench --device cuda --image-size 256 \
        --backbones resnet50 --parts train --compile --out "$DEST/bench_cuda_compile.json"
    echo "exit status $?"
  else
    echo "== 3. skipped: $(left) s left"
  fi
  echo "== done in $(( $(date +%s) - started )) s"
} 2>&1 | tee "$LOG"
