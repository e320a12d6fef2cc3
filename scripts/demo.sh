#!/usr/bin/env bash
# The demo command: set up (idempotent), then `tuneforge demo` (CPU, offline, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
tuneforge demo "$@"
