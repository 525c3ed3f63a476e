#!/usr/bin/env bash
# The project's CUDA figures on one GPU, as one prepared run of under 8 minutes (sized for an H200).
#
#   bash benchmarks/cuda_check.sh                 # on a GPU machine, from the repository root or anywhere
#   bash benchmarks/cuda_check.sh --device cpu    # dry run on a CPU: the same sections at small sizes
#
# Sections, each written to JSON as soon as it ends (and `main.py bench` itself rewrites its JSON after every
# backbone), so a timeout loses only the section it interrupts:
#   1. bench   `main.py bench` at 256 px for resnet50, wide_resnet50_2 and convnext_tiny: training images/s
#              (recipe.train_step as train.py runs it) fast vs naive with the ops and casts per step,
#              inference ms/image and images/s, peak memory, the evaluation of a 167-image category (float32,
#              as `main.py test`) fast vs naive, then the same evaluation in bf16 (--eval-amp bf16): its
#              speed-up and the metric change it causes; the 15-category sweep estimate; the targets.
#   2. fp32    the evaluation again with TF32 off (--no-tf32): exact float32, so the fast and naive paths must
#              give identical metrics (TF32 convolutions, cuDNN's default, differ from exact float32).
#   3. compile (if time is left) the training step under --compile: images/s and ops per step.
# Outputs go to $OUT (the device runner's result folder) or ./cuda_check_out: bench_<section>.json, the
# index cuda_check.json (status, seconds and figures of every finished section) and cuda_check.log.
# Exit status: 0 when every section that ran exited 0; 1 when any failed or timed out (every finished
# section's JSON is still written); 2 when the preflight failed. The compile section is skipped, with a line
# saying why, when inductor would need a C compiler ($CC, else gcc or clang) or Python.h and one is missing
# (triton builds its launcher with them); the CPU dry run traces with dynamo's eager backend, which needs neither.
#
# Python: $PYTHON if set, else .venv/bin/python when its torch sees a GPU, else the machine's python3 (GPU
# machines often come with their own CUDA torch and no package index: nothing is installed here). Needs
# torch >= 2.4 (checked; the code is written against the APIs of torch 2.4 to 2.14) with numpy, scipy,
# scikit-learn, pandas, pillow and tqdm; a missing module is named and the run stops.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "cuda_check.sh: unknown argument $1 (expected --device cuda|cpu)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "cuda_check.sh: --device $DEVICE: expected cuda or cpu" >&2; exit 2 ;; esac

DEST=${OUT:-cuda_check_out}
mkdir -p "$DEST"
LOG="$DEST/cuda_check.log"
INDEX="$DEST/cuda_check.json"
BUDGET_S=${CUDA_CHECK_BUDGET_S:-450}  # 7.5 min: the whole check stays under 8 minutes
started=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - started) )); }

torch_sees_gpu() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if [ -x .venv/bin/python ] && { [ "$DEVICE" = cpu ] || torch_sees_gpu .venv/bin/python; }; then
    echo .venv/bin/python; return
  fi
  echo python3
}
PY=$(pick_python)

if [ "$DEVICE" = cpu ]; then  # dry run: every section, at sizes a CPU finishes in about a minute
  SIZES=(--image-size 64 --eval-image-size 64 --eval-images 32 --batch-size 4 --rounds 1 --warmup 0 --steps 1
         --threads 1)
  export RD_COMPILE_BACKEND=${RD_COMPILE_BACKEND:-eager}  # CPU inductor takes minutes: trace with dynamo only
else
  SIZES=(--image-size 256)
fi

index() {  # index SECTION STATUS SECONDS FILE: add a finished section to cuda_check.json (atomically)
  "$PY" - "$INDEX" "$1" "$2" "$3" "$4" "$DEVICE" <<'EOF'
import json, os, sys, time
index, section, status, seconds, figures_file, device = sys.argv[1:]
payload = json.load(open(index)) if os.path.isfile(index) else {"device": device, "sections": {}}
entry = {"exit_status": int(status), "seconds": int(seconds), "file": os.path.basename(figures_file),
         "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
if os.path.isfile(figures_file):
    entry["figures"] = json.load(open(figures_file))
payload["sections"][section] = entry
with open(index + ".tmp", "w") as handle:
    json.dump(payload, handle, indent=1)
os.replace(index + ".tmp", index)
EOF
}

section() {  # section NAME SECONDS_LIMIT BENCH_ARGS...: one `main.py bench` run, then its index entry
  local name=$1 limit=$2; shift 2
  local file="$DEST/bench_$name.json" begin=$(date +%s)
  echo "== $(date -u +%T) section $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$PY" RD4AD-main/main.py bench --device "$DEVICE" "${SIZES[@]}" "$@" --out "$file"
  local status=$?
  echo "exit status $status after $(( $(date +%s) - begin )) s$([ "$status" = 124 ] && echo ' (timed out)')"
  index "$name" "$status" "$(( $(date +%s) - begin ))" "$file"
  [ "$status" = 0 ] || FAILED+=("$name (exit status $status)")
}
FAILED=()

compile_toolchain() {  # prints what inductor lacks to build triton's launcher (nothing when all is there)
  local compiler=${CC:-}
  if [ -n "$compiler" ]; then
    command -v "$compiler" >/dev/null 2>&1 || echo "no C compiler (CC=$compiler not found)"
  elif ! command -v gcc >/dev/null 2>&1 && ! command -v clang >/dev/null 2>&1; then
    echo "no C compiler (neither gcc nor clang on PATH, and CC unset)"
  fi
  "$PY" -c "import os, sys, sysconfig; h = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); \
sys.exit(0 if os.path.isfile(h) else h + ' missing (install the Python development headers)')" 2>&1 | tail -1
}

{
  echo "== $(date -u +%FT%TZ) cuda_check on $(hostname), device $DEVICE, python $PY"
  [ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
      || echo "nvidia-smi unavailable"; }
  if ! "$PY" - "$DEVICE" <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "torchvision", "numpy", "scipy", "sklearn", "pandas", "PIL", "tqdm")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python modules: {', '.join(missing)} (set PYTHON to an interpreter that has them)")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 4):
    sys.exit(f"torch {torch.__version__} is too old: 2.4 or newer is needed")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("this torch sees no GPU: run on a GPU machine, or --device cpu for the dry run")
EOF
  then
    echo "preflight failed: nothing measured"
    index preflight 2 0 /nonexistent
    exit 2
  fi

  lacking=$(compile_toolchain)
  echo "compile toolchain (C compiler, Python.h): ${lacking:-found}"

  backbones=resnet50,wide_resnet50_2,convnext_tiny
  section bench "$(( $(left) - 75 ))" --backbones "$backbones"
  section fp32 "$(( $(left) > 20 ? $(left) - 10 : 10 ))" --backbones resnet50 --parts eval --no-tf32
  backend=${RD_COMPILE_BACKEND:-inductor}
  if [ -n "$lacking" ] && [ "$backend" = inductor ]; then
    echo "== compile section skipped: inductor needs a C compiler and Python.h: $lacking"
  elif [ "$(left)" -gt 100 ]; then
    [ -n "$lacking" ] && echo "== note: $lacking (not needed by the $backend backend)"
    section compile "$(( $(left) - 10 ))" --backbones resnet50 --parts train --compile
  else
    echo "== compile section skipped: $(left) s left"
  fi
  echo "== done in $(( $(date +%s) - started )) s; figures in $INDEX"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "== FAILED: ${FAILED[*]}; the finished sections' figures are in $INDEX"
    exit 1
  fi
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
