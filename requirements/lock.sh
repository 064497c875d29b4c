#!/usr/bin/env bash
# Refresh the lock files that `make demo`, `make test` and .ci/run install from (run it as `make lock`).
#
# One lock per CPython (3.10-3.12, Linux x86-64), every package pinned with its hashes, resolved by uv from
# pyproject.toml's ranges with the `all` and `dev` extras. torch is the CPU build, torch==$TORCH+cpu: taken from
# $TORCH_FIND_LINKS when it holds the wheel, else from the PyTorch CPU index. Where neither serves a Python (no
# network to that index), that Python's lock is resolved against PyPI's torch==$TORCH of the same version and
# leaves out torch with the CUDA-only packages it pulls; the Makefile then installs torch from the CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-uv}
TORCH=${TORCH:-2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH_FIND_LINKS=${TORCH_FIND_LINKS:-/opt/wheels}
PYTHONS=${PYTHONS:-3.10 3.11 3.12}

common=(pyproject.toml --extra all --extra dev --python-platform x86_64-manylinux_2_28 --generate-hashes
        --no-header --quiet --custom-compile-command "make lock")
links=()
[ -d "$TORCH_FIND_LINKS" ] && links=(--find-links "$TORCH_FIND_LINKS")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The torch pins live at a fixed path, so the locks' "via -c" annotations do not change from run to run.
echo "torch==$TORCH+cpu" > requirements/torch-cpu.txt
echo "torch==$TORCH" > requirements/torch-pypi.txt

for py in $PYTHONS; do
  out="requirements/lock-py${py/./}.txt"
  if [ ${#links[@]} -gt 0 ] && "$UV" pip compile "${common[@]}" --python-version "$py" -c requirements/torch-cpu.txt "${links[@]}" \
       -o "$tmp/lock.txt" 2>/dev/null; then
    echo "$out: torch $TORCH+cpu from $TORCH_FIND_LINKS, with its hashes"
  elif "$UV" pip compile "${common[@]}" --python-version "$py" -c requirements/torch-cpu.txt --extra-index-url "$TORCH_INDEX" \
       --index-strategy unsafe-best-match -o "$tmp/lock.txt" 2>/dev/null; then
    echo "$out: torch $TORCH+cpu from $TORCH_INDEX, with its hashes"
  else
    # No CPU wheel for this Python within reach: lock the rest against PyPI's torch of the same version.
    "$UV" pip compile "${common[@]}" --python-version "$py" -c requirements/torch-pypi.txt -o "$tmp/full.txt"
    cuda_only=$(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' "$tmp/full.txt" | tr -d '=' || true)
    skip=(--no-emit-package torch)
    for name in $cuda_only; do skip+=(--no-emit-package "$name"); done
    "$UV" pip compile "${common[@]}" --python-version "$py" -c requirements/torch-pypi.txt "${skip[@]}" -o "$tmp/lock.txt"
    echo "$out: no torch $TORCH+cpu wheel for $py within reach; torch left out (the Makefile installs it from $TORCH_INDEX)"
  fi
  mv "$tmp/lock.txt" "$out"
done
