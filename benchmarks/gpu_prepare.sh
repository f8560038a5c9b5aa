#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh needs on the device machine, which reaches no network:
#   .gpu/wheels/  the packages its CUDA image lacks (gymnasium with Box2D and pygame-ce), as
#                 cp312 manylinux wheels (its python3 is 3.12)
#   .gpu/home/weights/  the converted ImageNet AlexNet features (9.9 MB) from this machine's
#                 EMBENCH_HOME (fetched here first if absent: `embench weights fetch alexnet`)
# .gpu/ is git-ignored; name it in the device tool's `carry`. Run from the repository root:
#   bash benchmarks/gpu_prepare.sh            # then: device run, carry [".gpu"], command
#                                             #   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOME_DIR=${EMBENCH_HOME:-$HOME/.cache/embench}
rm -rf .gpu/wheels && mkdir -p .gpu/wheels .gpu/home/weights
"$PY" -m pip download --quiet --only-binary=:all: --no-deps -d .gpu/wheels \
    --python-version 3.12 --implementation cp --abi cp312 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    "gymnasium==1.4.0" "Box2D==2.3.10" "pygame-ce==2.5.8" "farama-notifications==0.0.6"
if [ ! -f "$HOME_DIR/weights/alexnet-imagenet.safetensors" ]; then
    EMBENCH_HOME="$HOME_DIR" .venv/bin/embench weights fetch alexnet
fi
cp "$HOME_DIR"/weights/alexnet-imagenet.* .gpu/home/weights/
du -sh .gpu
