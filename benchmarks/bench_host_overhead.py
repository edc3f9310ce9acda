"""The host (Python) time of one eager forward on the Triton path, without a GPU: every Triton
kernel is replaced by a no-op launch and the model has tiny fp32 dims, so what is left is what the
host spends per step besides the launches themselves (module calls, wrappers' checks, tensor
metadata, CPU matmuls of the tiny dims). Qwen3 layout, 28 layers, one prefill of --tokens.

`PYTHONPATH=. python benchmarks/bench_host_overhead.py --tokens 128 --profile 18`
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time

import torch
import triton

import yaie.kernels.attention.triton_decode as triton_decode
import yaie.kernels.attention.triton_extend as triton_extend
import yaie.kernels.attention.triton_store as triton_store
import yaie.kernels.elementwise.triton_fused as triton_fused
from yaie.cli.models.random_model import write_random_model
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.kv_pool import KVPool


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--profile", type=int, default=0, help="print the top N functions")
    args = p.parse_args()
    for module in (triton_extend, triton_decode, triton_store, triton_fused):
        for name in dir(module):
            if isinstance(getattr(module, name), triton.runtime.JITFunction):
                setattr(module, name, _NoLaunch())
    dims = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, head_dim=32)
    path = write_random_model(
        tempfile.mkdtemp(), "Qwen3ForCausalLM", seed=0, num_hidden_layers=28,
        num_key_value_heads=2, **dims,
    )  # fmt: skip
    model = load_model(str(path), "cpu", torch.float32, "triton")
    t, block = args.tokens, 16
    pool = KVPool(28, 2, 32, torch.float32, torch.device("cpu"), block, -(-t // block) + 1)
    blocks = -(-t // block)
    batch = ForwardBatch(
        input_ids=torch.arange(t),
        positions=torch.arange(t),
        slots=torch.arange(t),
        block_tables=torch.arange(blocks, dtype=torch.int32).view(1, blocks),
        seq_lens=torch.tensor([t], dtype=torch.int32),
        query_start=torch.tensor([0, t], dtype=torch.int32),
        max_query_len=t,
        is_decode=False,
        logits_indices=torch.tensor([t - 1]),
    )
    with torch.inference_mode():
        for _ in range(5):
            model.forward(batch, pool.cache, None)
        profile = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        for _ in range(args.iters):
            model.forward(batch, pool.cache, None)
        if profile is not None:
            profile.disable()
        ms = (time.perf_counter() - started) / args.iters * 1e3
    print(f"host ms per forward (launches no-op, tiny dims): {ms:.2f}")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
