#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite on CPU: the tests in one step (under 15 min on
# 2 cores), then those marked slow in a second one. With arguments, pytest runs just what they say.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
if [ $# -gt 0 ]; then
  exec python -m pytest -p no:cacheprovider "$@"
fi
status=0
python -m pytest -p no:cacheprovider -m "not slow" || status=$?
echo "tests marked slow:"
python -m pytest -p no:cacheprovider -m slow || status=$?
exit "$status"
