#!/usr/bin/env bash
# The wheels that `bash bench/peer_speed_device.sh serve OUT` needs on the GPU machine beyond those already in .whl/
# (pydantic, anyio, httpx2, ...) and the machine's image (typer, rich, click, h11, jinja2, pyyaml): lorakit serve's
# web stack and the official OpenAI client that drives it. Run here, in the repository root, before the device call;
# the call then installs .whl/*.whl into /tmp/site as usual. Versions: those this project's venv runs the tests with.
set -euo pipefail
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 opentelemetry-api==1.45.2 \
    openai==3.63.0 jiter==0.19.0 sniffio==1.3.1 distro==1.9.0
