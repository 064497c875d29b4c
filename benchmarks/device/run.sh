#!/usr/bin/env bash
# On the GPU machine (no network, its own python3 with torch and transformers): install phi3v and the wheels that
# prepare.sh downloaded with --no-deps into a scratch folder, check correctness on the GPU, then measure the speed
# table; about 7 minutes (a 450 s budget that every step shares; a step past its time is stopped and reported).
# Writes gpu_report.md, gpu_report.json and run.log into $OUT (the device tool's result folder) or ./device-out.
#
#   benchmarks/device/run.sh                      # on the GPU machine, from anywhere
#   DEVICE=cpu benchmarks/device/run.sh           # the CPU rehearsal at tiny sizes (tests/test_device_rehearsal.py)
#   BUDGET=300 benchmarks/device/run.sh --only install,env,bench-lora   # fewer steps / a shorter budget
#   benchmarks/device/run.sh --work /tmp/keep     # keep the scratch folder (8 GB checkpoint on a GPU)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT_DIR=${OUT:-device-out}
FLAGS=(--out "$OUT_DIR")
[[ -n "${BUDGET:-}" ]] && FLAGS+=(--budget "$BUDGET")
[[ -n "${WORK:-}" ]] && FLAGS+=(--work "$WORK")
"$PY" -u benchmarks/device/run_device.py "${FLAGS[@]}" "$@"
rc=$?
[[ -s "$OUT_DIR/gpu_report.md" ]] && { echo; cat "$OUT_DIR/gpu_report.md"; }
exit "$rc"
