#!/usr/bin/env bash
# On a machine with network to PyPI: download the wheels the GPU run needs that the GPU machine lacks, at the
# versions of requirements/lock-py312.txt (checked against the lock's hashes), into benchmarks/device/wheels/
# (git-ignored), and print what must travel with the checkout. The GPU machine has Python 3.12, torch, transformers,
# peft, accelerate, safetensors, tokenizers, click, rich, pyyaml, pillow, numpy and pyarrow, but no pydantic and no
# bitsandbytes; the checkout plus the wheels must stay under 64 MiB.
#
#   benchmarks/device/prepare.sh                       # pydantic & co., plus bitsandbytes when it fits
#   NO_BITSANDBYTES=1 benchmarks/device/prepare.sh     # leave bitsandbytes (41 MiB) behind: no QLoRA row
#   EXTRA="safetensors" benchmarks/device/prepare.sh   # also carry these at the locked versions
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PY:-python3}
LOCK=requirements/lock-py312.txt
DEST=benchmarks/device/wheels
LIMIT_MIB=${LIMIT_MIB:-64}
# pydantic and what it needs (the target has none of them at the versions pydantic 2 asks for), and peft at the
# version the tests pair with the image's transformers (requirements/gpu-image.txt; the image's own peft is unread)
NEEDED="pydantic pydantic-core annotated-types typing-inspection typing-extensions peft ${EXTRA:-}"
OPTIONAL=bitsandbytes
[[ -n "${NO_BITSANDBYTES:-}" ]] && OPTIONAL=

# The lock's entry for each name: "name==version \" and its "--hash=…" lines (comments dropped).
lock_entries() {
  awk -v names=" $* " '
    /^[A-Za-z0-9]/ { split($1, p, "=="); keep = index(names, " " tolower(p[1]) " ") > 0 }
    keep && !/^[[:space:]]*#/ { print }
  ' "$LOCK"
}

rm -rf "$DEST"
mkdir -p "$DEST"
REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
lock_entries $NEEDED $OPTIONAL >"$REQ"
for name in $NEEDED $OPTIONAL; do
  grep -qi "^$name==" "$REQ" || { echo "prepare.sh: $name is not in $LOCK" >&2; exit 2; }
done
echo "downloading (versions from $LOCK):"
grep '==' "$REQ" | sed 's/ *\\$//; s/^/  /'
# pip matches manylinux tags exactly, so name the glibc levels wheels are published for
"$PY" -m pip download -q --no-deps --require-hashes --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$DEST" -r "$REQ"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
tree_bytes() {  # what the device tool sends besides carried paths: tracked and untracked-not-ignored files
  git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
}
wheel_bytes() { find "$DEST" -name '*.whl' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

TREE=$(tree_bytes)
TOTAL=$((TREE + $(wheel_bytes)))
if [[ -n "$OPTIONAL" ]] && (( TOTAL > LIMIT_MIB * 1048576 )); then
  echo "bitsandbytes does not fit under ${LIMIT_MIB} MiB ($(mib "$TOTAL") MiB with it): left behind, no QLoRA row"
  rm -f "$DEST"/bitsandbytes-*.whl
  TOTAL=$((TREE + $(wheel_bytes)))
fi

echo
echo "wheels in $DEST:"
find "$DEST" -name '*.whl' -printf '  %f  %s\n' | sort | awk '{ printf "  %-80s %7.1f MiB\n", $1, $2 / 1048576 }'
echo "checkout (tracked + untracked, not ignored): $(mib "$TREE") MiB; wheels: $(mib "$(wheel_bytes)") MiB;" \
  "total: $(mib "$TOTAL") MiB of ${LIMIT_MIB} MiB"
(( TOTAL <= LIMIT_MIB * 1048576 )) || { echo "prepare.sh: over ${LIMIT_MIB} MiB even without bitsandbytes" >&2; exit 1; }
echo
echo "carry: [\"$DEST\"]"
echo "on the GPU machine, from the repository root:  benchmarks/device/run.sh   (results in \$OUT, else ./device-out)"
