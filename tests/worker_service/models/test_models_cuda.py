"""The models on CUDA with the Triton attention kernels, against transformers on the CPU."""

from __future__ import annotations

import pytest
import torch

from yaie.worker_service.loader import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ARCHITECTURES = {
    "LlamaForCausalLM": {"tie_word_embeddings": True, "attention_bias": True},
    "Qwen3ForCausalLM": {"head_dim": 32},
}
MAX_NEW_TOKENS = 32


def _prompts(lengths: list[int], seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(7, 700, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_triton_fp32_greedy_equals_transformers(
    architecture, tiny_model_dir, hf_reference, paged_engine, paged_sequence
):
    model_dir = tiny_model_dir(architecture, **ARCHITECTURES[architecture])
    model = load_model(str(model_dir), "cuda", dtype=torch.float32, attention_backend="triton")
    prompts = _prompts([3, 20, 41, 70], seed=7)
    seqs = [paged_sequence(list(p)) for p in prompts]
    paged_engine(model, 16).generate(seqs, MAX_NEW_TOKENS, chunk_size=32)
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert seq.output == hf_reference.greedy(model_dir, tuple(prompt), MAX_NEW_TOKENS)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_bf16_by_default_and_logits_close_to_fp32(
    architecture, tiny_model_dir, hf_reference, make_forward_batch
):
    model_dir = tiny_model_dir(architecture, **ARCHITECTURES[architecture])
    model = load_model(str(model_dir), "cuda")
    assert model.dtype == torch.bfloat16
    prompts = _prompts([9, 33, 64], seed=8)
    tables = [list(range(i * 8, i * 8 + 8)) for i in range(3)]
    batch = make_forward_batch(prompts, [0, 0, 0], tables, block_size=16, device="cuda")
    batch.logits_indices = torch.arange(batch.input_ids.numel(), device="cuda")
    shape = (model.num_layers, 2, 24, 16, model.num_kv_heads, model.head_dim)
    kv_cache = torch.zeros(shape, dtype=torch.bfloat16, device="cuda")
    with torch.inference_mode():
        logits = model(batch, kv_cache).cpu()
    assert logits.dtype == torch.bfloat16  # the sampler's input, as transformers' lm_head's
    logits = logits.float()
    expected = torch.cat([hf_reference.logits(model_dir, p) for p in prompts])
    error = (logits - expected).abs().max().item()
    agreement = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
    print(f"{architecture}: bf16 max abs error {error:.3f}, top-1 agreement {agreement:.3f}")
    assert error < 0.25 * expected.abs().max().item()
    assert agreement >= 0.9
