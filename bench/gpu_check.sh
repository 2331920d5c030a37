#!/usr/bin/env bash
# Every GPU path of cai on one GPU in under 10 minutes, with the embedded model exported to a
# plain HF folder (no hub, no internet: only what the venv holds). One line per path:
#   PATH ok FIGURE | PATH failed: REASON | PATH skipped: REASON
# Paths: export, hf (transformers throughput), vllm (in-process vLLM throughput vs hf), sft and
# dpo (bf16 steps), grpo_vllm (GRPO with vLLM colocated), ray (1 replica holding 1 GPU), judges
# (log-prob vs free-text judging pairs/s on in-process vLLM, target >= 5x). Each runs in its own
# process under its own timeout (bench/gpu_paths.py); a failure never stops the others, and the
# script exits 0 once it ran. Without CUDA every GPU path says "skipped: no CUDA".
#
#   bench/gpu_check.sh [--cpu] [--run-on-cpu] [--only hf,vllm] [--work DIR]
#     --cpu         treat the machine as having no GPU (every GPU path: skipped)
#     --run-on-cpu  run the GPU paths on CPU at smoke size (checks this script without a GPU)
#   PYTHON=/path/to/python picks the interpreter (default: .venv/bin/python of this checkout).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=""
ONLY=""
MODE=auto
BUDGET=570 # seconds for all paths together (each also has its own limit below)
while [ $# -gt 0 ]; do
  case "$1" in
  --cpu) MODE=skip ;;
  --run-on-cpu) MODE=cpu ;;
  --only) ONLY=",$2," && shift ;;
  --work) WORK=$2 && shift ;;
  -h | --help) sed -n '2,14p' "$0" && exit 0 ;;
  *) echo "gpu_check: unknown option $1 (see --help)" >&2 && exit 2 ;;
  esac
  shift
done
KEEP=${WORK:+1}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/cai-gpu-check.XXXXXX")}
mkdir -p "$WORK"
MODEL="$WORK/embedded-hf"
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# name:seconds, in order (hf before vllm: vllm's figure is its ratio to hf's)
PATHS="export:90 hf:60 vllm:120 sft:60 dpo:60 grpo_vllm:120 ray:90 judges:120"

cuda_reason() { # empty when the GPU paths should run, else why they are skipped
  case "$MODE" in
  skip) echo "no CUDA (--cpu)" && return ;;
  cpu) return ;;
  esac
  # a GPU with a venv that cannot use it is a failure of each path (its line says why), not a skip
  nvidia-smi -L >/dev/null 2>&1 && return
  "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || echo "no CUDA"
}
NO_CUDA=$(cuda_reason)
DEVICE=cuda
[ "$MODE" = cpu ] && DEVICE=cpu
echo "gpu_check: $(date -u +%FT%TZ) python $PY, work $WORK, device ${NO_CUDA:-$DEVICE}"
[ -n "$NO_CUDA" ] || [ "$MODE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu_check: /'

START=$(date +%s)
for entry in $PATHS; do
  name=${entry%%:*}
  limit=${entry##*:}
  [ -n "$ONLY" ] && [ "${ONLY#*,$name,}" = "$ONLY" ] && continue
  if [ "$name" != export ] && [ -n "$NO_CUDA" ]; then
    echo "$name skipped: $NO_CUDA"
    continue
  fi
  left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 10 ]; then
    echo "$name failed: not started, the ${BUDGET} s budget of the whole check is spent"
    continue
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log="$WORK/$name.log"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$PY" bench/gpu_paths.py "$name" --model "$MODEL" --work "$WORK" --device "$DEVICE" >"$log" 2>&1
  rc=$?
  line=$(grep -E "^$name (ok|failed)" "$log" | tail -1)
  if [ -n "$line" ]; then
    echo "$line [$(($(date +%s) - t0)) s]"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "$name failed: timed out after ${limit} s (log: $log)"
  else
    echo "$name failed: exit $rc: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-300) (log: $log)"
  fi
done
[ -n "$KEEP" ] || rm -rf "$MODEL" "$WORK"/sft "$WORK"/dpo "$WORK"/grpo # keep the logs, not the weights
echo "gpu_check: done in $(($(date +%s) - START)) s (logs in $WORK)"
exit 0
