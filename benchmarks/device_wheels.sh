#!/usr/bin/env bash
# Fills .whl/ (git-ignored; carry it to the device) with the cp312 wheels the lent GPU machine
# lacks or has too old: gRPC/protobuf matching our generated stubs, xgrammar (the worker imports
# it for grammars) and its pure-Python deps the image does not have. Run here, from the repo
# root; benchmarks/device_env.sh installs them there.
set -euo pipefail
mkdir -p .whl
pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d .whl grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
    protobuf==7.36.2 xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2 pydantic==2.13.4 pydantic-core==2.46.4 \
    annotated-types typing-inspection typing-extensions httptools
du -sh .whl
