#!/usr/bin/env bash
# The one GPU check: everything in ds_prompt that only a GPU can measure, in one run of at most --budget_s
# seconds (default 480), results appended to bench/RESULTS.md (and the raw log under --out).
#
#   bash bench/gpu_check.sh [--budget_s 480] [--out DIR] [--dry_run]
#
# Parts, in order (each gets the time left, so the first ones always run; a part cut short says so):
#   1. Triton kernels vs torch (bench.bench_kernels): ms and GB/s against the device's measured copy bandwidth
#   2. bf16 bench on a random-init SmolLM2-135M shape: ds_prompt vs PEFT vs the plain-PyTorch floor
#   3. the same on a random-init 1.1B Llama shape
#   4. capacity in bf16 (bench.capacity --device cuda): the largest size that trains a step in the time left
# The random-init shapes stand in for the real weights (the GGUF is not on the GPU machine, which has no
# network; step speed does not depend on the weight values). The demo task is used: the GPU machine gets the
# repository only. Without a CUDA device it prints why and exits 0 having measured nothing; --dry_run prints
# the commands. On CPU this script is tested for its argument handling only (tests/test_bench.py).
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=480
OUT=""
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --budget_s) BUDGET="${2:?--budget_s needs a number of seconds}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --dry_run) DRY=1; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument '$1' (use --budget_s N, --out DIR, --dry_run)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: error: --budget_s must be a whole number of seconds" >&2; exit 2 ;; esac
OUT="${OUT:-${OUT_DIR:-/tmp/ds_prompt_gpu_check}}"

PY="${PYTHON:-python}"
PARTS=(
  "kernels|$PY -m bench.bench_kernels --kernel all --repeats 10 --warmup 3"
  "smollm2_bf16|$PY -m bench.peft_compare --family causal --size smollm2 --device cuda --dtype bf16 --steps 40 --batch_size 32 --rounds 4"
  "llama1b_bf16|$PY -m bench.peft_compare --family causal --size llama1b --device cuda --dtype bf16 --steps 20 --batch_size 32 --rounds 2"
  "capacity_bf16|$PY -m bench.capacity --device cuda --sizes 1,3,7 --seq 256 --batch 8"
)

if [ "$DRY" = 1 ]; then
  echo "budget ${BUDGET}s, log under $OUT, results appended to bench/RESULTS.md"
  for part in "${PARTS[@]}"; do echo "${part%%|*}: ${part#*|}"; done
  exit 0
fi

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device here: nothing measured (this check is for the GPU machine; --dry_run lists it)"
  exit 0
fi

mkdir -p "$OUT"
START=$(date +%s)
STAMP=$(date -u +%Y-%m-%dT%H:%MZ)
DEVICE=$($PY -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB')")
SOFT=$($PY -c "import torch, transformers, deepspeed; print(f'torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}')" 2>/dev/null)
{
  echo
  echo "## GPU check $STAMP ($DEVICE)"
  echo
  echo "$SOFT; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); budget ${BUDGET}s; \`bash bench/gpu_check.sh\`"
} >> bench/RESULTS.md

for part in "${PARTS[@]}"; do
  name="${part%%|*}"; cmd="${part#*|}"
  left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    printf '\n### %s\n\nskipped: %ss of the budget left\n' "$name" "$left" >> bench/RESULTS.md
    continue
  fi
  echo "[$name] $cmd (limit ${left}s)"
  t0=$(date +%s)
  timeout "$left" $cmd > "$OUT/$name.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - t0 ))
  {
    printf '\n### %s (%ss, exit %s%s)\n\n`%s`\n\n```\n' "$name" "$took" "$rc" "$([ $rc = 124 ] && echo ': cut at the time limit')" "$cmd"
    grep -v -E '^\[|Warning|warn|it/s\]|^\s*$' "$OUT/$name.log" | tail -n 40
    printf '```\n'
  } >> bench/RESULTS.md
done
cp bench/RESULTS.md "$OUT/RESULTS.md"
echo "done in $(( $(date +%s) - START ))s: bench/RESULTS.md (copy in $OUT)"
