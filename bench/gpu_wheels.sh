#!/usr/bin/env bash
# The packages depthpi needs that the lent GPU machine's Python (3.12, x86-64, torch and
# accelerate already there, no network) lacks, as wheels in .whl/ for bench/gpu_check.sh.
# Run here, once, before a device run that carries .whl (about 5 MB):
#   bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p .whl
PY="${PYTHON:-python3}"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    omegaconf==2.4.0 webdataset==1.0.2 braceexpand==0.1.7 \
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0
# DeepSpeed is published as source only: its wheel is pure Python (its kernels compile at
# first use, on the machine that uses them), built here against this Python's torch.
"$PY" -m pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -la .whl
