#!/usr/bin/env bash
# Before/after on the GPU in one call: the stack bench's random (nano-vllm) workload on an older
# copy of the tree and on this one, alternated A B A B, each from its own import root.
#   benchmarks/bench_ab.sh BEFORE_DIR [ROUNDS] [SHAPE]   (BEFORE_DIR: e.g. `git archive` of a ref)
# Prints one line per run and a summary of output tok/s; results JSON under $OUT/ab-*.json.
set -uo pipefail
before=$(cd "$1" && pwd); rounds=${2:-2}; shape=${3:-qwen3-0.6b}; after=$PWD
out=${OUT:-/tmp/ab}; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
link_tree() {  # $1 import root, $2 source tree: yaie.* -> the tree's top-level folders
    mkdir -p "$1/yaie/worker"
    for d in kernels worker_service scheduler_service cli; do ln -sfn "$2/$d" "$1/yaie/$d"; done
    ln -sfn "$2/protos/yaie/v1" "$1/yaie/v1"
    ln -sfn "$2/protos/yaie/worker/v1" "$1/yaie/worker/v1"
}
link_tree /tmp/ab-root-A "$before"
link_tree /tmp/ab-root-B "$after"
run() {  # $1 A|B, $2 round
    local tree=$before; [ "$1" = B ] && tree=$after
    local dir; dir=$(mktemp -d /tmp/ab-run-XXXX)
    (cd "$tree" && PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:/tmp/ab-root-$1" timeout 240 \
        python3 benchmarks/bench_stack.py --shape "$shape" --skip light,shared,nocache,hf \
        --budget-s 200 --out-dir "$dir" > "$dir/stdout.log" 2>&1)
    cp "$dir/bench_stack.json" "$out/ab-$1$2.json" 2>/dev/null || tail -20 "$dir/stdout.log"
    grep -h -E "worker ready|Output token throughput|step trace of" "$dir/stdout.log" | sed "s/^/$1$2 /"
}
for r in $(seq 1 "$rounds"); do run A "$r"; run B "$r"; done
python3 - "$out" <<'EOF'
import glob, json, sys
rows = {}
for path in sorted(glob.glob(f"{sys.argv[1]}/ab-*.json")):
    random = json.load(open(path)).get("random", {})
    rows[path.rsplit("ab-", 1)[1][:-5]] = random.get("output_throughput")
print("run  output tok/s (random)")
for name, value in rows.items():
    print(f"{name:4} {value}")
EOF
