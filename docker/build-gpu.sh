#!/usr/bin/env bash
# Build the GPU image from a GPU bundle and print its size and times (docs/performance.md quotes them). Not run by
# CI: it downloads about 3 GB of wheels and needs about 20 GB of disk. PyPI's torch is the CUDA build and brings the
# CUDA runtime as nvidia-* wheels, so any base with Python 3.11 will do where no CUDA base image can be pulled
# (tests/test_deploy.py's debootstrap base of Debian bookworm, here).
#   DOCKER_HOST=unix:///path/docker.sock bash docker/build-gpu.sh BASE_IMAGE WORK_DIR
# A WORK_DIR that already holds a bundle (WORK_DIR/bundle/manifest.json) is reused; the image is tagged tuneforge:gpu.
set -euo pipefail
base=$1
work=$2
cd "$(dirname "$0")/.."
mkdir -p "$work"
started=$(date +%s)
if [ ! -f "$work/bundle/manifest.json" ]; then
  python -m tuneforge.cli bundle --out "$work/bundle" --python 3.11 --platform manylinux_2_28_x86_64 --torch pypi \
    --extras serve,webui,qlora,tensorboard
fi
bundled=$(date +%s)
DOCKER_BUILDKIT=0 docker build -q -f docker/Dockerfile --build-arg BASE="$base" -t tuneforge:gpu "$work/bundle"
built=$(date +%s)
# Smoke check without a GPU: torch is the CUDA build, its CUDA libraries load from the nvidia-* wheels, and the CLI runs.
docker run --rm --network none --entrypoint python3 tuneforge:gpu -c \
  "import torch, bitsandbytes; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
docker run --rm --network none tuneforge:gpu --version
size=$(docker image inspect -f '{{.Size}}' tuneforge:gpu)
echo "bundle: $(du -sm "$work/bundle" | cut -f1) MiB in $((bundled - started)) s; image tuneforge:gpu: $((size / 1000000)) MB" \
  "($((size / 1048576)) MiB) built in $((built - bundled)) s on $base; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
