# Source on the lent GPU machine (from the repo root): makes `yaie.*` importable without
# `pip install -e .` (which does not take there) and installs the carried gRPC/protobuf wheels
# (the machine's grpcio is older than our generated stubs; `bash benchmarks/device_wheels.sh`
# fills .whl/ here, with xgrammar and pydantic too). Usage:
#   source benchmarks/device_env.sh && python3 benchmarks/bench_stack.py ...
mkdir -p /tmp/p/yaie/worker
for d in kernels worker_service scheduler_service cli; do ln -sfn "$PWD/$d" "/tmp/p/yaie/$d"; done
ln -sfn "$PWD/protos/yaie/v1" /tmp/p/yaie/v1
ln -sfn "$PWD/protos/yaie/worker/v1" /tmp/p/yaie/worker/v1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:/tmp/p
else
    export PYTHONPATH=/tmp/p
fi
export PYTHONUNBUFFERED=1
