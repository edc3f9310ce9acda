"""After warm_up, no decode batch compiles a Triton kernel (GPU only): the split counts a plain
decode can take, with and without a row order, over tables of any width, are all compiled by
then (the stalls this guards against: benchmarks/NOTES.md, session 16)."""

from __future__ import annotations

import pytest
import torch

from tests.worker_service.conftest import kv_pool_for
from yaie.kernels.attention import decode_attention
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.runner import ModelRunner
from yaie.worker_service.step.warmup import warm_up

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_no_decode_batch_compiles_after_warm_up(tiny_model_dir, monkeypatch):
    from triton import knobs

    device = torch.device("cuda")
    model = load_model(
        str(tiny_model_dir("Qwen3ForCausalLM")), device, torch.bfloat16, attention_backend="triton"
    )
    pool = kv_pool_for(model, 16, 512, device)
    runner = ModelRunner(model, pool, False)
    assert warm_up(runner) > 0.0
    compiled: list[str] = []
    monkeypatch.setattr(
        knobs.runtime, "jit_post_compile_hook", lambda **kw: compiled.append(str(kw.get("repr")))
    )
    k_cache, v_cache = pool.cache[0][0], pool.cache[0][1]
    heads = model.config.num_heads
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3, 8, 9, 12, 17, 24, 33, 40, 64):
        for width in (1, 7, 16, 31):
            q = torch.randn(batch, heads, model.head_dim, dtype=model.dtype, device=device)
            tables = torch.randint(0, 512, (batch, width), generator=generator, dtype=torch.int32)
            lens = torch.randint(
                1, width * 16 + 1, (batch,), generator=generator, dtype=torch.int32
            )
            order = torch.argsort(lens, descending=True).to(torch.int32)
            args = (q, k_cache, v_cache, tables.to(device), lens.to(device), model.head_dim**-0.5)
            decode_attention(*args, backend="triton")
            decode_attention(*args, backend="triton", order=order.to(device))
    torch.cuda.synchronize()
    assert compiled == []
