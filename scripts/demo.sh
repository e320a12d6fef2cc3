#!/usr/bin/env bash
# The demo command: set up only what the demo needs (idempotent), then `tuneforge demo` (CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
tuneforge demo "$@"
