#!/usr/bin/env bash
# The test suite on the newest releases: a fresh .venv-latest with torch 2.13.0 and everything else at the newest
# version pyproject.toml allows (no constraints.txt). Run it before every submission; when it fails, see
# docs/compatibility.md ("When a new release breaks something").
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-latest
bash scripts/setup.sh latest
. .venv-latest/bin/activate
echo "test-latest: versions under test"
python - <<'PY'
from importlib.metadata import PackageNotFoundError, version

for name in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "huggingface-hub",
             "bitsandbytes", "deepspeed", "gguf", "llama-cpp-python", "trl", "math-verify", "pydantic", "typer", "fastapi",
             "pytest"):
    try:
        print(f"  {name}=={version(name)}")
    except PackageNotFoundError:
        print(f"  {name}: not installed")
PY
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
python -m pytest -p no:cacheprovider "$@"
