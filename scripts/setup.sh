#!/usr/bin/env bash
# Create a virtual environment and install tuneforge into it, through constraints.txt (the exact versions the
# test suite last passed with). Safe to run again: it does nothing while constraints.txt and pyproject.toml are
# unchanged since the last set-up of the same profile.
#
#   bash scripts/setup.sh demo     # torch + tuneforge's core libraries: all that `tuneforge demo` imports (.venv)
#   bash scripts/setup.sh test     # + every extra the tests exercise, llama-cpp-python built from source, and Debian's
#                                  # chromium and fonts-noto-cjk for the web UI's browser test (.venv)
#   bash scripts/setup.sh latest   # the test profile at the newest releases pyproject allows (.venv-latest)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-test}
PYTHON=${PYTHON:-python3}
VENV=.venv
LOCK=(-c constraints.txt)
case "$PROFILE" in
  demo) EXTRAS="" ;;
  test) EXTRAS="[test,serve,qlora,llamacpp,deepspeed,tensorboard,eval,preference,grpo,webui,synth,structured]" ;;
  latest) EXTRAS="[test,serve,qlora,llamacpp,deepspeed,tensorboard,eval,preference,grpo,webui,synth,structured]" VENV=.venv-latest LOCK=(--upgrade --upgrade-strategy eager) ;;
  *) echo "scripts/setup.sh: unknown profile '$PROFILE'; use demo, test or latest" >&2; exit 2 ;;
esac
say() { echo "setup ($PROFILE, ${SECONDS}s): $*"; }

# Debian packages the tests use: chromium for the web UI's browser test (driven through Playwright, no
# `playwright install` download); fonts-noto-cjk for its Chinese page and screenshots (without it the glyphs render
# as boxes); shared-mime-info and libtasn1-doc for the real third-party PDFs the synth tests convert.
DEBS=(chromium fonts-noto-cjk shared-mime-info libtasn1-doc)
missing() { for deb in "${DEBS[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || return 0; done; return 1; }
if [ "$PROFILE" != demo ] && missing; then
  SUDO=()
  [ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
  if command -v apt-get >/dev/null 2>&1 && "${SUDO[@]}" true 2>/dev/null; then
    say "installing ${DEBS[*]} from Debian's packages (browser, CJK font, PDFs for the tests), 1-2 min"
    # A failed install must not fail the set-up: the tests that need them skip with the reason.
    if ! { "${SUDO[@]}" apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${DEBS[@]}" \
        >/dev/null; }; then
      say "installing ${DEBS[*]} failed: the tests that need them will skip"
    fi
  else
    say "some of ${DEBS[*]} are absent and apt-get (as root or through sudo) is not available"
  fi
fi

stamp="$VENV/.tuneforge-setup-$PROFILE"
fingerprint=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$PROFILE" != latest ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then
  exit 0
fi
# A venv whose pip is broken (an interrupted pip upgrade leaves it so) would make `pip` below fall through to the
# system's pip and install outside the venv: start it again.
if [ -d "$VENV" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  say "removing $VENV (its pip does not run)"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
# --no-compile: Python compiles the modules it imports on first use; compiling all of torch and transformers up
# front costs about 40 s of CPU (measured for the demo profile).
PIP=(python -m pip install -q --no-compile "${LOCK[@]}")
"${PIP[@]}" --upgrade pip
# The CPU build of torch first: a bare `torch` requirement can pull GBs of CUDA wheels.
say "installing torch 2.13.0 (CPU build), 1-2 min"
"${PIP[@]}" "torch==2.13.0"
if [ -n "$EXTRAS" ] && ! python -c "import llama_cpp" 2>/dev/null; then
  say "installing tuneforge$EXTRAS and building llama-cpp-python from source, about 6 min on 2 cores"
else
  say "installing tuneforge$EXTRAS and its libraries, 1-3 min"
fi
# torch is named again so that `latest` keeps 2.13.0 while upgrading everything else.
"${PIP[@]}" "torch==2.13.0" -e ".$EXTRAS"
echo "$fingerprint" > "$stamp"
say "done"
