"""Did a refactor change the decode kernel's machine code? No GPU needed.

Compiles pass 1 of paged decode attention (`_decode_split_kernel`) for sm_90 with the bar's
configuration (Qwen3-0.6B heads: GQA group 2, head_dim 128, block 16, BLOCK_N 32, 4 warps), from
the working tree and from the file at git revision REV (default cf7442e, the version timed at
94.7% of copy bandwidth), with the same pointer/stride alignment the launcher gets on a GPU, and
prints each one's SASS instruction count, memory and tensor-core ops, and every opcode whose
count differs. Triton's bundled ptxas and cuobjdump do the work on the CPU.

Run: python benchmarks/compare_sass.py [REV]
"""

from __future__ import annotations

import collections
import importlib.util
import pathlib
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNEL_FILE = "kernels/attention/triton_decode.py"
SHAPE = dict(group=2, block_size=16, GROUP_PAD=16, HEAD_DIM=128, BLOCK_N=32)
POINTERS = {
    "q": "*bf16",
    "k_cache": "*bf16",
    "v_cache": "*bf16",
    "block_tables": "*i32",
    "seq_lens": "*i32",
    "kv_start": "*i32",
    "mid_out": "*fp32",
    "mid_lse": "*fp32",
    "final": "*bf16",
    "order": "*i32",
    "k_scale": "*fp32",
    "v_scale": "*fp32",
}
ALIGNED = {
    "q",
    "k_cache",
    "v_cache",
    "mid_out",
    "mid_lse",
    "stride_q_batch",
    "stride_q_head",
    "stride_cache_block",
    "stride_cache_token",
    "stride_cache_head",
}
# The plain path: no kv_start, a bf16 pool (no fp8 scales), partials for the reduce pass.
FLAGS = {"HAS_START": False, "HAS_SCALE": 0, "MERGE": False, "ORDERED": False}
# Arguments a version does not name in do_not_specialize get the divisibility a GPU run sees.
MAYBE_ALIGNED = {"block_tables", "seq_lens", "stride_table"}


def load_kernel(source: str) -> triton.runtime.JITFunction:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(source)
    spec = importlib.util.spec_from_file_location("decode_under_test", file.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._decode_split_kernel


def compile_sass(kernel, num_stages: int) -> tuple[int, collections.Counter]:
    params = kernel.arg_names
    constexprs = {name: value for name, value in SHAPE.items() if name in params}
    if "NUM_SPLITS" in params:
        constexprs["NUM_SPLITS"] = 1
    for flag, value in FLAGS.items():  # a version that lacks a flag compiles without it
        if flag in params:
            constexprs[flag] = value
    signature = {}
    for name in params:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = POINTERS.get(name, "fp32" if name == "qk_scale" else "i32")
    unspecialized = {params[i] if isinstance(i, int) else i for i in kernel.do_not_specialize}
    aligned = ALIGNED | (MAYBE_ALIGNED - unspecialized)
    attrs = {(params.index(n),): [["tt.divisibility", 16]] for n in aligned if n in params}
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(params.index(k),): v for k, v in constexprs.items()},
        attrs=attrs,
    )
    compiled = triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": num_stages}
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as file:
        file.write(compiled.asm["cubin"])
    tool = pathlib.Path(triton.backends.nvidia.__path__[0]) / "bin" / "cuobjdump"
    sass = subprocess.run([tool, "-sass", file.name], capture_output=True, text=True, check=True)
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)", sass.stdout)
    return compiled.metadata.shared, collections.Counter(ops)


def main() -> None:
    revision = sys.argv[1] if len(sys.argv) > 1 else "cf7442e"
    old_source = subprocess.run(
        ["git", "show", f"{revision}:{KERNEL_FILE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = {
        revision: load_kernel(old_source),
        "working tree": load_kernel((ROOT / KERNEL_FILE).read_text()),
    }
    for num_stages in (1, 2):
        print(f"num_stages={num_stages}")
        results = {name: compile_sass(kernel, num_stages) for name, kernel in versions.items()}
        for name, (shared, ops) in results.items():
            print(
                f"  {name:13s} SASS {sum(ops.values()):4d}  LDG {ops['LDG']:2d}  "
                f"HMMA {ops['HMMA']:2d}  MUFU {ops['MUFU']:2d}  BRA {ops['BRA']}  "
                f"shared {shared} B"
            )
        (_, a), (_, b) = results.values()
        differ = {op: (a[op], b[op]) for op in sorted(set(a) | set(b)) if a[op] != b[op]}
        print(f"  opcodes whose count differs ({revision}, working tree): {differ}")


if __name__ == "__main__":
    main()
