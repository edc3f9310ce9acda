"""A whole model on the Triton kernels (fused elementwise layers and attention) against the torch
path: CPU interpreter (fp32) in a child process, CUDA directly. The kernels' own tests, and why a
child process: tests/kernels/elementwise/test_elementwise_triton.py.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
EXPECTED_CHILD_TESTS = 1


def test_model_matches_torch_under_triton_interpreter(interpreter_child) -> None:
    """The interpreter case of this file passes in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS)


@pytest.mark.skipif(not (INTERPRET or CUDA), reason="runs in the interpreter child or on CUDA")
def test_model_on_fused_kernels_matches_the_torch_path(tiny_model_dir, make_forward_batch):
    """Qwen3 (q/k norm) prefill then one decode step: logits of the Triton path (fused layers
    and Triton attention, float32) equal the torch path's (same greedy tokens too)."""
    from yaie.worker_service.loader import load_model

    model_dir = tiny_model_dir("Qwen3ForCausalLM", head_dim=32)
    device = "cuda" if CUDA else "cpu"
    models = [
        load_model(str(model_dir), device, torch.float32, backend)
        for backend in ("torch", "triton")
    ]
    prompts = [[5, 9, 200, 31, 77], list(range(40, 63))]
    results = []
    for model in models:
        kv_cache = torch.zeros(2, 2, 8, 16, 2, 32, device=device)
        tables = [[0, 1, 2], [3, 4, 5]]
        with torch.inference_mode():
            prefill = model(make_forward_batch(prompts, [0, 0], tables, 16, device), kv_cache)
            decode = model(make_forward_batch([[3], [4]], [5, 23], tables, 16, device), kv_cache)
        results.append(torch.cat([prefill, decode]))
    tol = 1e-2 if CUDA else 1e-4  # on CUDA, Triton's float32 tl.dot computes in TF32
    top2 = results[0].topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * tol  # rows whose greedy token is not a near tie
    assert torch.equal(results[1].argmax(-1)[clear], results[0].argmax(-1)[clear])
    torch.testing.assert_close(results[1], results[0], atol=tol, rtol=tol)
