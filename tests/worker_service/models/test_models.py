"""Our Llama-family models on the paged KV pool against transformers, on tiny random-weight models:
prefill logits, greedy generation (batched, chunked prefill, reused prefix blocks); each with
aten's matmul and with the oneDNN-packed linear layers a CPU worker serves with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yaie.worker_service.loader import load_model
from yaie.worker_service.models import CausalLM

# name -> (architecture, write_random_model overrides): every flag the decoder has is covered.
VARIANTS = {
    "llama-rope-llama3": (
        "LlamaForCausalLM",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "rope_theta": 500000.0,
        },
    ),
    "llama-tied-bias": (
        "LlamaForCausalLM",
        {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True},
    ),
    "qwen2-tied": ("Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3-head-dim-32": ("Qwen3ForCausalLM", {"head_dim": 32}),
    "mistral": ("MistralForCausalLM", {}),
}
MAX_NEW_TOKENS = 32


def _prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(7, 700, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture
def assert_matches_hf(hf_reference):
    def check(model_dir: Path, prompt: list[int], output: list[int]) -> None:
        expected = hf_reference.greedy(model_dir, tuple(prompt), MAX_NEW_TOKENS)
        assert len(expected) == MAX_NEW_TOKENS
        assert output == expected

    return check


@pytest.fixture(
    scope="module",
    params=[(name, packed) for name in VARIANTS for packed in (False, True)],
    ids=lambda p: f"{p[0]}-{'onednn' if p[1] else 'aten'}",
)
def variant(request, tiny_model_dir) -> tuple[Path, CausalLM]:
    name, packed = request.param
    architecture, overrides = VARIANTS[name]
    model_dir = tiny_model_dir(architecture, **overrides)
    model = load_model(str(model_dir), "cpu", attention_backend="torch")
    if packed:
        # qkv, o, gate_up and down of each layer, and the logits
        assert model.pack_cpu_linears() == 4 * model.num_layers + 1
    return model_dir, model


def test_prefill_logits_of_ragged_batch_equal_transformers(
    variant, make_forward_batch, hf_reference
):
    model_dir, model = variant
    prompts = _prompts([5, 17, 33])
    tables = [list(range(i * 9, i * 9 + 9)) for i in range(3)]
    batch = make_forward_batch(prompts, [0, 0, 0], tables, block_size=4)
    batch.logits_indices = torch.arange(batch.input_ids.numel())  # every row
    kv_cache = torch.zeros(model.num_layers, 2, 27, 4, model.num_kv_heads, model.head_dim)
    with torch.inference_mode():
        logits = model(batch, kv_cache)
    expected = torch.cat([hf_reference.logits(model_dir, p) for p in prompts])
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("block_size", [1, 16])
def test_greedy_batch_equals_transformers_generate(
    variant, paged_engine, paged_sequence, assert_matches_hf, block_size
):
    model_dir, model = variant
    prompts = _prompts([3, 20, 41], seed=2)
    seqs = [paged_sequence(list(p)) for p in prompts]
    paged_engine(model, block_size).generate(seqs, MAX_NEW_TOKENS)
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert_matches_hf(model_dir, prompt, seq.output)


def test_chunked_prefill_beside_decodes_equals_transformers(
    variant, paged_engine, paged_sequence, assert_matches_hf
):
    """Prompts prefilled 7 tokens a step, in the same batches as other requests' decode steps."""
    model_dir, model = variant
    prompts = _prompts([4, 23, 30], seed=3)
    engine = paged_engine(model, 4)
    seqs = [paged_sequence(list(p)) for p in prompts]
    engine.generate(seqs, MAX_NEW_TOKENS, chunk_size=7)
    assert engine.tokens_run[:2] == [4 + 7 + 7, 1 + 7 + 7]  # chunks and a decode share steps
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert_matches_hf(model_dir, prompt, seq.output)


@pytest.mark.parametrize("block_size", [1, 4])
def test_reused_prefix_blocks_equal_transformers(
    variant, paged_engine, paged_sequence, assert_matches_hf, block_size
):
    """A second request reads the first request's first 12 tokens from its blocks, running only
    its own suffix, and still generates transformers' tokens."""
    model_dir, model = variant
    first, suffix, fresh_prompt = _prompts([13, 9, 6], seed=4)
    engine = paged_engine(model, block_size)
    earlier = paged_sequence(list(first))
    engine.step([earlier], [len(first)])
    num_shared = 12
    prompt = first[:num_shared] + suffix
    shared_blocks = earlier.blocks[: num_shared // block_size]
    later = paged_sequence(list(prompt), blocks=list(shared_blocks), num_cached=num_shared)
    fresh = paged_sequence(list(fresh_prompt))
    engine.generate([later, fresh], MAX_NEW_TOKENS)
    assert engine.tokens_run[1] == len(suffix) + len(fresh_prompt)  # the prefix is not rerun
    assert later.blocks[: len(shared_blocks)] == shared_blocks
    assert_matches_hf(model_dir, prompt, later.output)
    assert_matches_hf(model_dir, fresh_prompt, fresh.output)
