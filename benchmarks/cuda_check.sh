#!/usr/bin/env bash
# The project's checks and CUDA figures on one GPU, as one prepared run of under 8 minutes (the plan below, printed
# at the start with each section's budget, adds up to 7 min 30 s on one H100; budgets are estimates until a GPU
# run records the real seconds in the index).
#
#   bash benchmarks/cuda_check.sh                 # on a GPU machine, from the repository root or anywhere
#   bash benchmarks/cuda_check.sh --device cpu    # dry run on a CPU: every section, the real commands included,
#                                                 # at small sizes (dynamo's eager backend for --compile)
#
# Sections, in this order (budget on one H100, seconds; a section may use what earlier ones left unused):
#   preflight  10  python and its modules (triton too on CUDA), torch >= 2.4, the GPU, inductor's toolchain (C
#                  compiler and Python.h), whether the ImageNet teacher weights are in the hub cache (no download)
#   tests      75  pytest -m cuda (tests/test_cuda.py): GlobalBatchNorm's backward on CUDA kernels, channels_last,
#                  in an NCCL group of one; the training step compiled by inductor; bf16 maps; the data path
#   data       20  the synthetic categories at 256 px (main.py synth), generated once, read by every later section
#   bench      70  main.py bench, resnet50, wide_resnet50_2 and convnext_tiny: training images/s with ops per step,
#                  inference, peak memory, the whole category's evaluation, bf16 evaluation speed; the naive
#                  references at 1 step per round and 24 evaluated images (seconds, not minutes)
#   fp32       20  the evaluation with TF32 off: fast and naive metrics identical (resnet50, 24 images)
#   compile   115  the training step compiled by inductor and eager, alternating in one process; compile time
#   commands  140  main.py train (2 runs, bf16, --compile, partial last batch, recompiles counted from dynamo's
#                  log), checkpoint resume of one run to 20 epochs, test with the instruments, the bf16 metric
#                  change of that run at its stated loss, predict
# Outputs go to $OUT (the device runner's result folder) or ./cuda_check_out, emptied first (a folder that is not
# empty and was not made by this script is refused): <section>.json, the index cuda_check.json (status, seconds and
# figures of each section, rewritten as each ends, so a timeout keeps what finished) and cuda_check.log.
# Exit status: 0 when every section passed; 1 when one failed or timed out (every finished section is indexed);
# 2 when the preflight failed or the output folder is refused.
#
# Python: $PYTHON if set, else .venv/bin/python when its torch sees a GPU, else the machine's python3 (GPU
# machines come with their own CUDA torch and no package index: nothing is installed here). Needs torch >= 2.4
# with torchvision, numpy, scipy, scikit-learn, pandas, pillow, tqdm and pytest (and triton on CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "cuda_check.sh: unknown argument $1 (expected --device cuda|cpu)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "cuda_check.sh: --device $DEVICE: expected cuda or cpu" >&2; exit 2 ;; esac

DEST=${OUT:-cuda_check_out}
MARK="$DEST/.cuda_check_output"
if [ -d "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
  if [ ! -f "$MARK" ]; then
    echo "cuda_check.sh: $DEST is not empty and was not written by cuda_check.sh: refusing to empty it (set OUT to" \
         "a new or empty folder)" >&2
    exit 2
  fi
  find "$DEST" -mindepth 1 -delete  # one invocation's sections only: nothing of an earlier run stays in the index
fi
mkdir -p "$DEST" && touch "$MARK"
LOG="$DEST/cuda_check.log"
INDEX="$DEST/cuda_check.json"
DATA="$DEST/data"

SECTIONS=(preflight tests data bench fp32 compile commands)
declare -A BUDGET=([preflight]=10 [tests]=75 [data]=20 [bench]=70 [fp32]=20 [compile]=115 [commands]=140)
declare -A WHAT=([preflight]="python, modules, GPU, compile toolchain, ImageNet weights"
                 [tests]="pytest -m cuda" [data]="synthetic data, once"
                 [bench]="main.py bench: fast paths, naive references"
                 [fp32]="evaluation with TF32 off" [compile]="compiled vs eager step, compile time"
                 [commands]="train --compile bf16, resume, test, bf16 change, predict")
if [ "$DEVICE" = cpu ]; then  # dry run: the same sections at sizes a (shared, slow) CPU finishes; its own limits
  SCALE=${CUDA_CHECK_CPU_SCALE:-5}
  SIZE=64 EVAL_IMAGES=32 TRAIN_BATCH=4 COMMANDS_SIZE=32 COMMANDS_BATCH=8 NAIVE_IMAGES=16 RESUME_EPOCHS=2
  BENCH_BACKBONES=resnet50,convnext_tiny
  BENCH_SIZES=(--image-size 64 --eval-image-size 64 --batch-size 4 --rounds 1 --warmup 0 --steps 1 --threads 1)
  export RD_COMPILE_BACKEND=${RD_COMPILE_BACKEND:-eager}  # CPU inductor takes minutes: trace with dynamo only
else
  SCALE=1
  SIZE=256 EVAL_IMAGES=167 TRAIN_BATCH=16 COMMANDS_SIZE=256 COMMANDS_BATCH=16 NAIVE_IMAGES=24 RESUME_EPOCHS=20
  BENCH_BACKBONES=resnet50,wide_resnet50_2,convnext_tiny
  BENCH_SIZES=(--image-size 256 --naive-steps 1)
fi
# training images: 8 whole benchmark batches (bench.py TRAIN_STEPS_PER_EPOCH) after the 10 % validation hold-out, and a
# partial last batch in train: the figure bench.py run generates when it makes its own data
TRAIN_IMAGES=$(( 8 * TRAIN_BATCH * 10 / 9 + 8 ))

started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
deadline=0  # cumulative budget: each section may end by the sum of the budgets up to it (times SCALE)

torch_sees_gpu() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if [ -x .venv/bin/python ] && { [ "$DEVICE" = cpu ] || torch_sees_gpu .venv/bin/python; }; then
    echo .venv/bin/python; return
  fi
  echo python3
}
PY=$(pick_python)

index() {  # index SECTION STATUS SECONDS FILE [NOTE]: add a finished section to cuda_check.json (atomically)
  "$PY" - "$INDEX" "$1" "$2" "$3" "$4" "$DEVICE" "${5:-}" <<'EOF'
import json, os, sys, time
sys.path.insert(0, "RD4AD-main")
from atomic_files import atomic_write_text
index, section, status, seconds, figures_file, device, note = sys.argv[1:]
payload = json.load(open(index)) if os.path.isfile(index) else {"device": device, "sections": {}}
entry = {"exit_status": int(status), "seconds": int(seconds), "file": os.path.basename(figures_file),
         "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
if note:
    entry["note"] = note
if os.path.isfile(figures_file):
    entry["figures"] = json.load(open(figures_file))
payload["sections"][section] = entry
atomic_write_text(index, json.dumps(payload, indent=1))
EOF
}

FAILED=()
section() {  # section NAME COMMAND...: run it within its budget, then index it
  local name=$1; shift
  local file="$DEST/$name.json" begin limit status
  begin=$(date +%s)
  deadline=$(( deadline + BUDGET[$name] * SCALE ))
  limit=$(( deadline - $(elapsed) ))
  if [ "$limit" -lt 5 ]; then
    echo "== section $name skipped: its budget is spent ($(elapsed) s elapsed)"
    index "$name" 124 0 /nonexistent "skipped: the budget was spent by earlier sections"
    FAILED+=("$name (no time left)")
    return
  fi
  echo "== $(date -u +%T) section $name (limit ${limit} s): ${WHAT[$name]}"
  timeout --kill-after=10 "$limit" "$@"
  status=$?
  echo "exit status $status after $(( $(date +%s) - begin )) s$([ "$status" = 124 ] && echo ' (timed out)')"
  index "$name" "$status" "$(( $(date +%s) - begin ))" "$file"
  [ "$status" = 0 ] || FAILED+=("$name (exit status $status)")
}

plan() {
  local total=0 name
  echo "plan: section, budget on one H100 (s)$([ "$DEVICE" = cpu ] && echo ", this dry run's limit (x$SCALE)")"
  for name in "${SECTIONS[@]}"; do
    printf '  %-10s %4d%s  %s\n' "$name" "${BUDGET[$name]}" \
      "$([ "$DEVICE" = cpu ] && printf ' %6d' $(( BUDGET[$name] * SCALE )))" "${WHAT[$name]}"
    total=$(( total + BUDGET[$name] ))
  done
  echo "plan total: $total s on one H100 ($(( total / 60 )) min $(( total % 60 )) s; under 8 minutes)"
}

{
  echo "== $(date -u +%FT%TZ) cuda_check on $(hostname), device $DEVICE, python $PY"
  plan
  [ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
      || echo "nvidia-smi unavailable"; }

  # 1. preflight: one Python process (torch is imported once); its figures name what the later sections need
  deadline=$(( BUDGET[preflight] * SCALE ))
  begin=$(date +%s)
  timeout --kill-after=5 "$(( deadline * 3 ))" "$PY" - "$DEVICE" "$DEST/preflight.json" <<'EOF'
import importlib.util, json, os, sys
device, out = sys.argv[1:]
needed = ["torch", "torchvision", "numpy", "scipy", "sklearn", "pandas", "PIL", "tqdm", "pytest"]
needed += ["triton"] if device == "cuda" else []
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python modules: {', '.join(missing)} (set PYTHON to an interpreter that has them)")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 4):
    sys.exit(f"torch {torch.__version__} is too old: 2.4 or newer is needed")
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("this torch sees no GPU: run on a GPU machine, or --device cpu for the dry run")
figures = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
if device == "cuda":
    import triton  # imported, not just found: a broken install fails here, not in the compile section
    figures["triton"] = triton.__version__
    print("triton", triton.__version__)
sys.path.insert(0, "RD4AD-main")
import toolchain
from backbones import get_backbone
from weights import hub_checkpoint_dir, weights_file_name
figures["compile_backend"] = toolchain.compile_backend()
figures["compile_toolchain_missing"] = toolchain.missing_for_compile(device)
print(f"compile toolchain of inductor on {device} (backend {figures['compile_backend']}): "
      + ("missing " + "; ".join(figures["compile_toolchain_missing"]) if figures["compile_toolchain_missing"]
         else "found" if figures["compile_backend"] == "inductor" else "not needed"))
present = {}
for name in ("resnet50", "wide_resnet50_2", "convnext_tiny"):
    weights = get_backbone(name).default_weights
    present[name] = (hub_checkpoint_dir() / weights_file_name(weights)).is_file()
figures["imagenet_weights_present"] = present
print("ImageNet teacher weights in the hub cache: "
      + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in present.items())
      + ("" if all(present.values()) else " (nothing is downloaded: the checks use random teachers where absent)"))
json.dump(figures, open(out, "w"), indent=1)
EOF
  status=$?
  index preflight "$status" "$(( $(date +%s) - begin ))" "$DEST/preflight.json"
  if [ "$status" != 0 ]; then
    echo "preflight failed: nothing measured"
    exit 2
  fi
  read -r LACKING PRETRAINED < <("$PY" -c "import json, sys; f = json.load(open(sys.argv[1])); \
print('yes' if f['compile_toolchain_missing'] and f['compile_backend'] == 'inductor' else 'no', \
'yes' if f['imagenet_weights_present']['resnet50'] else 'no')" "$DEST/preflight.json")

  # 2. the GPU tests, first: a wrong kernel contract or a failed compile shows before any figure is taken
  section tests "$PY" benchmarks/cuda_tests.py --out "$DEST/tests.json"
  # 3. the data, once
  section data "$PY" RD4AD-main/main.py synth --data-root "$DATA" --n-categories 2 --image-size "$SIZE" \
    --train "$TRAIN_IMAGES" --test "$EVAL_IMAGES" --seed 0
  # 4-6. main.py bench: fast paths, naive references, TF32 off, compile
  section bench "$PY" RD4AD-main/main.py bench --device "$DEVICE" --data-root "$DATA" "${BENCH_SIZES[@]}" \
    --backbones "$BENCH_BACKBONES" --naive-images "$NAIVE_IMAGES" --out "$DEST/bench.json"
  section fp32 "$PY" RD4AD-main/main.py bench --device "$DEVICE" --data-root "$DATA" "${BENCH_SIZES[@]}" \
    --backbones resnet50 --parts eval --no-tf32 --naive-images "$NAIVE_IMAGES" --out "$DEST/fp32.json"
  if [ "$LACKING" = yes ]; then
    deadline=$(( deadline + BUDGET[compile] * SCALE ))
    echo "== compile section skipped: inductor lacks its toolchain (see the preflight); the commands section" \
         "trains eagerly"
    index compile 0 0 /nonexistent "skipped: inductor's toolchain is missing"
  else
    section compile "$PY" RD4AD-main/main.py bench --device "$DEVICE" --data-root "$DATA" "${BENCH_SIZES[@]}" \
      --backbones resnet50 --parts train --compile --out "$DEST/compile.json"
  fi
  # 7. the real commands on a tiny study
  section commands "$PY" benchmarks/cuda_check_commands.py --data-root "$DATA" --device "$DEVICE" \
    --image-size "$COMMANDS_SIZE" --batch-size "$COMMANDS_BATCH" --resume-epochs "$RESUME_EPOCHS" \
    --work "$DEST/study" --out "$DEST/commands.json" \
    $([ "$PRETRAINED" = yes ] && echo --pretrained) $([ "$LACKING" = yes ] && echo --no-compile)

  echo "== done in $(elapsed) s; figures in $INDEX"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "== FAILED: ${FAILED[*]}; the finished sections' figures are in $INDEX"
    exit 1
  fi
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
