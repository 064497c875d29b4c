#!/usr/bin/env bash
# The speed table on one CUDA GPU, in a few minutes: Phi-3.5-vision at full size with random weights (nothing is
# downloaded), the synthetic DocVQA workload (num_crops 16, ~2,443 tokens), four strategies × sdpa/flash-attention.
# Writes benchmarks/results/gpu_speed_table.md (card, driver, date, table). Installs nothing: run it from the
# repository root with the project's venv already set up (make venv, plus `pip install flash-attn` for flash rows).
#
#   benchmarks/gpu_speed_table.sh                      # defaults below
#   STEPS=10 BATCH=2 benchmarks/gpu_speed_table.sh     # more steps / a larger per-device batch
#   benchmarks/gpu_speed_table.sh --no-gradient-checkpointing   # extra flags go to `phi3v-train bench`
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PHI3V_BIN:-.venv/bin}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
BATCH=${BATCH:-1}
OUT=benchmarks/results/gpu_speed_table.md

command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this script needs a CUDA GPU" >&2; exit 1; }
"$BIN/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU')"
CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)
echo "card: $CARD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/phi3v-gpu-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "building a random-weight phi-3.5-vision checkpoint (about 8 GB) in $WORK …"
"$BIN/phi3v-train" init-tiny "$WORK/model" --preset phi-3.5-vision --num-crops 16

rc=0
"$BIN/phi3v-train" bench --preset phi-3.5-vision --model "$WORK/model" \
  --strategy full --strategy frozen-vision --strategy lora --strategy qlora \
  --attention sdpa --attention flash \
  --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --gradient-checkpointing \
  --out "$WORK/table.md" "$@" || rc=$?   # 1 = some configuration failed (e.g. out of memory): still keep the table

if [[ -s "$WORK/table.md" ]]; then
  mkdir -p "$(dirname "$OUT")"
  {
    echo "<!-- written by benchmarks/gpu_speed_table.sh; model: phi-3.5-vision size, random weights -->"
    echo "card: $CARD (nvidia-smi: name, memory, driver); run $(date -u '+%Y-%m-%d %H:%M UTC'); host $(hostname)"
    echo
    cat "$WORK/table.md"
  } > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
  echo "wrote $OUT"
fi
exit "$rc"
