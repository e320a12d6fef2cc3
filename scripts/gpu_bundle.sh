#!/usr/bin/env bash
# Prepares what bench/gpu_check.py needs on the device machine (one H200, Python 3.12, no network), in the repo root:
#   .gpu/assets/  the assets the check reads (Qwen3 tokenizer, model configs, the throughput dataset)
#   .whl/         CPython 3.12 manylinux x86_64 wheels of what the image lacks or holds at another version than
#                 constraints.txt (the image's list: /work/.library/device/KINDS.md, read 2026-11-17)
# Both are git-ignored; they travel with `carry`. Prints the travelling size (limit 64 MiB) and the device call.
#   bash scripts/gpu_bundle.sh            # bitsandbytes left out when it would pass the limit
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'rm -rf .gpu.tmp .whl.tmp .bnb.tmp' EXIT  # a failed run leaves no half-made folder
ASSETS="${TUNEFORGE_ASSETS:-../shared/assets}"
PY="${PYTHON:-python3}"
LIMIT=$((64 * 1024 * 1024))

# Assets: only what gpu_check's steps read (qwen3-tokenizer: all steps; model-configs: 8B and tiny shapes;
# the dataset: train_throughput).
rm -rf .gpu.tmp && mkdir -p .gpu.tmp/assets/data
cp -r "$ASSETS/qwen3-tokenizer" "$ASSETS/model-configs" .gpu.tmp/assets/
cp "$ASSETS/data/medical_o1_reasoning_demo.json" .gpu.tmp/assets/data/
rm -rf .gpu && mv .gpu.tmp .gpu

# Wheels, at the versions constraints.txt locks (huggingface_hub 2 for transformers 5.24; it needs httpx2, httpx2 needs truststore).
# fsspec too: datasets wants <= 2026.9.0 and the image's version is not known. The image already holds torch, numpy,
# pandas, pyarrow (>= 24 for datasets: not known, too large to carry), safetensors, tokenizers, typer, rich, pyyaml,
# psutil, xxhash, requests, tqdm, filelock, httpx, packaging: not carried.
pin() { grep -i "^$1==" constraints.txt | head -1; }
# pip's flags for the device (CPython 3.12, manylinux_2_28 x86_64 and every older manylinux tag), as `tuneforge bundle`
# makes them for a target.
read -r -a TARGET <<< "$(PYTHONPATH=src "$PY" -c 'from tuneforge.bundle.wheels import Target
print(" ".join(Target("3.12", "manylinux_2_28_x86_64", "cpu").pip_flags()))')"
fetch() {  # fetch DIR SPEC: the CPython 3.12 manylinux x86_64 wheel of SPEC, alone
  "$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$1" "$2"
}
WHEELS=(pydantic pydantic_core annotated-types typing-inspection typing_extensions datasets dill multiprocess
        trl transformers peft accelerate huggingface_hub hf-xet httpx2 httpcore2 truststore fsspec)
rm -rf .whl.tmp && mkdir .whl.tmp
for name in "${WHEELS[@]}"; do
  spec="$(pin "$name")"
  [ -n "$spec" ] || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  fetch .whl.tmp "$spec"
done

tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
sized() { du -cb "$@" | tail -1 | cut -f1; }
# bitsandbytes: the whole wheel if it fits, else slimmed to the CUDA 13 libraries (the device's torch is cu130), else
# left out (the QLoRA step then records "skipped: bitsandbytes not installed").
bnb="$(pin bitsandbytes)"
mkdir -p .bnb.tmp
fetch .bnb.tmp "$bnb"
without=$((tracked + $(sized .gpu .whl.tmp)))
bnb_note="whole wheel carried ($(sized .bnb.tmp) bytes)"
if [ $((without + $(sized .bnb.tmp))) -gt $LIMIT ]; then
  bnb_note="whole wheel $(sized .bnb.tmp) bytes would pass 64 MiB ($((without + $(sized .bnb.tmp))) in all)"
  "$PY" scripts/gpu_wheels.py slim .bnb.tmp/bitsandbytes-*.whl cuda13
  bnb_note="$bnb_note; slimmed to its CUDA 13 libraries: $(sized .bnb.tmp) bytes"
fi
if [ $((without + $(sized .bnb.tmp))) -le $LIMIT ]; then
  mv .bnb.tmp/*.whl .whl.tmp/
else
  bnb_note="$bnb_note; left out"
fi
rm -rf .bnb.tmp .whl && mv .whl.tmp .whl

# Every wheel's needs must be carried or in the image (checked by name; versions the image's pip list gives too).
"$PY" scripts/gpu_wheels.py check .whl

total=$((tracked + $(sized .gpu .whl)))
echo "tracked files $tracked bytes; .gpu $(sized .gpu); .whl $(sized .whl) ($(ls .whl | wc -l) wheels)"
echo "$bnb: $bnb_note"
echo "travelling total $total bytes of $LIMIT ($((total * 100 / LIMIT)) %)"
[ "$total" -le $LIMIT ] || { echo "over the device's 64 MiB limit" >&2; exit 1; }
cat <<CALL

Device call (tool run), timeout_s 540, carry [".gpu", ".whl"], command:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit; export PYTHONPATH=/tmp/site:src TUNEFORGE_ASSETS=.gpu/assets PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1; set -o pipefail; python3 bench/gpu_check.py --device cuda --out-dir \$OUT 2>&1 | tee \$OUT/gpu_check.log
CALL
