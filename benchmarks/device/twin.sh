#!/usr/bin/env bash
# A CPU twin of the GPU image's Python, to rehearse run.sh where tests/test_device_rehearsal.py cannot reach: that
# test runs on our venv's Python 3.11 and torch 2.13 with only transformers & co. swapped for the image's. The twin is
# CPython 3.12.3 (the image's; built from source, no other 3.12 installs on Debian 12), torch 2.11.0 and
# torchvision 0.26.0 (PyPI's CUDA 13 builds, which run on CPU), the image's transformers, accelerate, tokenizers,
# huggingface-hub, numpy and safetensors at the versions the device tool's KINDS.md lists, and the other packages run
# touches there (tensorboard, timm, pillow, pyarrow, ...). Like the image it has no pydantic, deepspeed or
# bitsandbytes: those come from prepare.sh's wheels, installed by run.sh's install step as on the GPU machine.
#
#   benchmarks/device/twin.sh              # build the twin under $TWIN (/tmp/phi3v-twin) once, then rehearse
#   TWIN=/data/twin benchmarks/device/twin.sh
#
# First build: about 10 minutes and 5 GB (a 3 GB torch download from PyPI); later runs only rehearse (~3 minutes).
# Needs network (PyPI, archive.ubuntu.com for the CPython source), gcc, make and the usual -dev packages
# (libssl, zlib, libffi, libbz2, liblzma, libsqlite3). Found on its first use: the run's tensorboard import failing
# only after the model had loaded, and a Ctrl-C hang in validate's pool that Python 3.12's timing exposed.
set -euo pipefail
cd "$(dirname "$0")/../.."
TWIN=${TWIN:-/tmp/phi3v-twin}
PYTHON_VERSION=3.12.3
PYTHON_SRC=http://archive.ubuntu.com/ubuntu/pool/main/p/python3.12/python3.12_${PYTHON_VERSION}.orig.tar.xz
PYTHON_SHA256=56bfef1fdfc1221ce6720e43a661e3eb41785dd914ce99698d8c7896af4bdaa1
# the image's versions (KINDS.md "pip list" row); names without a version are there at a version nobody has read
IMAGE_PACKAGES=(torch==2.11.0 torchvision==0.26.0 triton==3.6.0 transformers==5.17.0 accelerate==1.15.0
  tokenizers==0.23.2 huggingface_hub==1.33.0 numpy==2.5.2 safetensors==0.8.0 sentencepiece==0.2.2 tiktoken==0.14.0
  timm tensorboard pillow pyyaml click rich pyarrow pandas scipy matplotlib opencv-python-headless psutil einops)

if [[ ! -x "$TWIN/python/bin/python3.12" ]]; then
  echo "building CPython $PYTHON_VERSION into $TWIN/python"
  mkdir -p "$TWIN/src"
  curl -fsSL -o "$TWIN/src/python.tar.xz" "$PYTHON_SRC"
  echo "$PYTHON_SHA256  $TWIN/src/python.tar.xz" | sha256sum -c --quiet
  tar -xf "$TWIN/src/python.tar.xz" -C "$TWIN/src"
  (cd "$TWIN/src/Python-$PYTHON_VERSION" && ./configure --prefix="$TWIN/python" && make -j"$(nproc)" &&
    make install) >"$TWIN/build.log" 2>&1 || { echo "twin.sh: the CPython build failed: $TWIN/build.log" >&2; exit 1; }
  rm -rf "$TWIN/src"
fi
if [[ ! -f "$TWIN/venv/.installed" ]]; then
  echo "installing the image's packages into $TWIN/venv"
  rm -rf "$TWIN/venv"
  "$TWIN/python/bin/python3.12" -m venv "$TWIN/venv"
  "$TWIN/venv/bin/pip" install -q "${IMAGE_PACKAGES[@]}"
  "$TWIN/venv/bin/pip" uninstall -q -y pydantic pydantic-core  # typer pulls them in; the image has neither
  touch "$TWIN/venv/.installed"
fi
"$TWIN/venv/bin/python" -c 'import sys, torch, transformers; print("twin:", sys.version.split()[0], "torch",
  torch.__version__, "transformers", transformers.__version__)'

[[ -n "$(ls benchmarks/device/wheels/*.whl 2>/dev/null)" ]] || PY=${PREPARE_PY:-.venv/bin/python} benchmarks/device/prepare.sh
DEVICE=cpu PY="$TWIN/venv/bin/python" OUT="${OUT:-$TWIN/out}" benchmarks/device/run.sh "$@"
