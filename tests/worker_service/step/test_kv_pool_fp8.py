"""The fp8 KV pool: sized in fp8 bytes (with its scales), chosen by --kv-cache-dtype, and a
ModelRunner over it decodes close to the same model over an fp32 pool."""

from __future__ import annotations

import pytest
import torch

from tests.worker_service.driver import Driver, Seq, sampling
from tests.worker_service.step.test_runner import LocalStream
from yaie.worker_service.__main__ import build_parser, config_from_args
from yaie.worker_service.config import KVPoolConfig, WorkerConfig, dtype_name
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.kv_pool import KVPool, bytes_per_block
from yaie.worker_service.step.runner import ModelRunner

FP8 = torch.float8_e4m3fn
BLOCK_SIZE, NUM_BLOCKS = 4, 96


def test_an_fp8_pool_holds_about_twice_the_bf16_tokens_in_the_same_budget():
    """head_dim 128: 128 + 4 (its fp32 scale) bytes per token and head against 256."""
    bf16 = bytes_per_block(32, 8, 128, 16, torch.bfloat16)
    fp8 = bytes_per_block(32, 8, 128, 16, FP8)
    assert fp8 == 32 * 2 * 16 * 8 * (128 + 4) and bf16 / fp8 == pytest.approx(1.94, abs=0.01)
    cpu, budget = torch.device("cpu"), KVPoolConfig(4, cpu_memory_bytes=2**20)
    wide = KVPool.allocate(budget, 2, 2, 64, torch.bfloat16, cpu)
    narrow = KVPool.allocate(budget, 2, 2, 64, FP8, cpu)
    assert narrow.num_blocks == 2**20 // bytes_per_block(2, 2, 64, 4, FP8) - 1
    assert 1.8 < narrow.num_blocks / wide.num_blocks < 1.9  # (64 * 2) / (64 + 4)
    assert narrow.cache.dtype == FP8 and wide.scales is None
    assert narrow.scales.shape == (2, 2, narrow.num_blocks + 1, 2, 4)
    assert narrow.scales.dtype == torch.float32 and dtype_name(narrow.dtype) == "fp8_e4m3"


def test_kv_cache_dtype_flag_picks_the_pool_dtype_and_rejects_others():
    args = build_parser().parse_args(["--model", "m", "--kv-cache-dtype", "fp8_e4m3"])
    config = config_from_args(args)
    assert config.kv_torch_dtype(torch.float32, torch.device("cpu")) == FP8
    auto = WorkerConfig(model="m")
    assert auto.kv_torch_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="kv_cache_dtype must be auto or one of"):
        WorkerConfig(model="m", kv_cache_dtype="int8")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--kv-cache-dtype", "fp8_e5m2"])


def _greedy(runner: ModelRunner, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    driver = Driver(LocalStream(runner), BLOCK_SIZE, NUM_BLOCKS)
    seqs = [driver.add(Seq(i + 1, p, len(p), max_new, sampling())) for i, p in enumerate(prompts)]
    driver.run()
    return [s.outputs for s in seqs]


def test_runner_over_an_fp8_pool_decodes_close_to_the_fp32_pool(tiny_model_dir):
    """Batched prefill and decode through store (quantize) and the sdpa path (dequantize): the
    first tokens equal, and most of the rest (a tiny random model has many near-ties)."""
    model = load_model(str(tiny_model_dir("LlamaForCausalLM")), "cpu", torch.float32)
    prompts = [[5, 6, 7, 8, 9], list(range(40, 63)), [300, 301], [7] * 13]
    outputs = {}
    for dtype in (torch.float32, FP8):
        pool = KVPool(
            model.num_layers, model.num_kv_heads, model.head_dim, dtype, "cpu", BLOCK_SIZE, 96
        )
        outputs[dtype] = _greedy(ModelRunner(model, pool), [list(p) for p in prompts], 12)
    exact, fp8 = outputs[torch.float32], outputs[FP8]
    assert all(a[:3] == b[:3] for a, b in zip(exact, fp8, strict=True))
    equal = sum(x == y for a, b in zip(exact, fp8, strict=True) for x, y in zip(a, b, strict=True))
    assert equal >= 0.75 * 4 * 12
