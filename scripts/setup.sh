#!/usr/bin/env bash
# Create .venv with the CPU build of torch first (a bare `torch` requirement pulls GBs of CUDA wheels),
# then tuneforge with the extras the tests exercise. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e ".[test,serve,qlora,llamacpp,deepspeed,tensorboard,preference]"
