#!/usr/bin/env bash
# Builds .whl/ (git-ignored), the wheels a device call carries for bench/peer_speed_device.sh: what the GPU machine's
# image lacks or holds at another version (its list: the device tool's KINDS.md). Versions are those this project's
# venv runs the tests with, plus bitsandbytes and liger-kernel (the `gpu` extra). bitsandbytes' wheel is cut down to
# its CUDA 13 library so that everything stays under the 64 MiB a call carries. Run from the repository root; then
# `bash bench/serve_wheels.sh` for the serve part's web stack.
set -euo pipefail
rm -rf .whl && mkdir -p .whl
get() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "$@"
}
get transformers==5.25.0 tokenizers==0.23.3 huggingface_hub==2.5.0 trl==1.16.0 peft==0.22.0 accelerate==1.16.0 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 pydantic==2.14.4 pydantic_core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5 liger-kernel==0.8.5 bitsandbytes==0.50.2
# huggingface_hub 2.x's HTTP stack, and the newer click/idna/anyio/h11 it and httpx2 require than the image has
get httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 hf-xet==1.8.0 click==8.5.1 idna==3.21 anyio==4.16.0 h11==0.16.0
# bitsandbytes: keep the CUDA 13 library only (the wheel holds one per CUDA version)
bnb=$(ls .whl/bitsandbytes-*.whl)
tmp=$(mktemp -d)
python3 - "$bnb" "$tmp/$(basename "$bnb")" <<'PY'
import sys, zipfile
src, dst = sys.argv[1:]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        name = item.filename
        if "libbitsandbytes_cuda" in name and "cuda13" not in name:
            continue
        zout.writestr(item, zin.read(name))
PY
mv "$tmp/$(basename "$bnb")" "$bnb" && rmdir "$tmp"
du -sh .whl && ls .whl
