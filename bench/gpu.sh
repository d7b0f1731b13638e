#!/usr/bin/env bash
# The DPO and GRPO benchmarks against TRL on one CUDA GPU, at Qwen2-VL-2B's real dimensions.
#
#   bench/gpu.sh                      # on a CUDA machine, from the repository root, after `make venv`
#   bench/gpu.sh --dry-run            # the same pipeline on the CPU with the tiny Qwen2-VL (minutes)
#
# Builds a random Qwen2-VL-2B-shaped model in bf16 from bench/configs/qwen2_vl_2b.json (`--model
# qwen2-vl-2b`: 28 × 1536 decoder, 32 × 1280 ViT, 151,936-word vocabulary), then runs
#   1. vlalign bench dpo  --model qwen2-vl-2b --device cuda   (one epoch of 32 pairs, batch 4)
#   2. vlalign bench grpo --model qwen2-vl-2b --device cuda   (4 prompts × 4 samples × 128 tokens, HF generate)
#   3. the same GRPO with vLLM rollouts on both sides, when vllm is installed and time is left
# and writes the same JSON reports as the CPU runs into $OUT (default bench/results/gpu/). The whole
# script stays within $BUDGET seconds (default 480 = 8 min): each command gets what is left.
set -euo pipefail

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) echo "usage: bench/gpu.sh [--dry-run]" >&2; exit 2 ;;
  esac
done

PY=${PY:-.venv/bin/python}
VLALIGN=${VLALIGN:-.venv/bin/vlalign}
OUT=${OUT:-bench/results/gpu}
WORK=${WORK:-runs/bench_gpu}
BUDGET=${BUDGET:-480}
START=$SECONDS
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

left() { echo $((BUDGET - (SECONDS - START))); }
run_step() {  # run_step NAME COMMAND...: run with the time that is left; a failure is reported, not fatal
  local name=$1; shift
  local t; t=$(left)
  if (( t < 30 )); then echo "[gpu.sh] $name: skipped, ${t}s left of ${BUDGET}s" >&2; return 0; fi
  echo "[gpu.sh] $name (up to ${t}s): $*" >&2
  if ! timeout "$t" "$@"; then echo "[gpu.sh] $name: FAILED or timed out (see $WORK)" >&2; FAILED=1; fi
}

test -x "$VLALIGN" || { echo "no $VLALIGN: run \`make venv\` first" >&2; exit 2; }
"$PY" -c "import trl" 2>/dev/null || "$PY" -m pip install -q -c requirements/constraints.txt -e ".[bench]"
mkdir -p "$OUT" "$WORK"
cat /proc/loadavg > "$OUT/loadavg_start.txt"

if (( DRY_RUN )); then
  DEVICE=cpu; MODEL=tiny; SUFFIX=dryrun_cpu
  EXTRA=(--steps 1 --warmup 1)
  # the 2B model itself is built on the meta device only (no memory): its dimensions come from the config
  "$PY" bench/model_shapes.py --check-config
else
  DEVICE=cuda; MODEL=qwen2-vl-2b; SUFFIX=gpu
  EXTRA=()
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA GPU visible (use --dry-run on a CPU)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
fi

FAILED=0
run_step "DPO" "$VLALIGN" bench dpo --model "$MODEL" --family qwen2_vl --device "$DEVICE" "${EXTRA[@]}" \
  --workdir "$WORK" --json "$OUT/dpo_${MODEL}_${SUFFIX}.json"
run_step "GRPO (HF generate)" "$VLALIGN" bench grpo --model "$MODEL" --family qwen2_vl --device "$DEVICE" "${EXTRA[@]}" \
  --workdir "$WORK" --json "$OUT/grpo_${MODEL}_${SUFFIX}.json"
if (( ! DRY_RUN )) && "$PY" -c "import vllm" 2>/dev/null; then
  run_step "GRPO (vLLM)" "$VLALIGN" bench grpo --model "$MODEL" --family qwen2_vl --device cuda --vllm \
    --workdir "$WORK/vllm" --json "$OUT/grpo_${MODEL}_${SUFFIX}_vllm.json"
else
  echo "[gpu.sh] GRPO (vLLM): skipped (dry run or vllm not installed)" >&2
fi
echo "[gpu.sh] done in $((SECONDS - START))s; reports in $OUT" >&2
exit $FAILED
