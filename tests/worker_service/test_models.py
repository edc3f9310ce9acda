"""Our Llama-family models on the paged KV pool against transformers, on tiny random-weight models:
prefill logits, greedy generation (batched, chunked prefill, reused prefix blocks)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from yaie.worker_service.loader import load_model
from yaie.worker_service.models import CausalLM, parse_config
from yaie.worker_service.models.layers import rope_inv_freq

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


@functools.cache
def _hf_model(model_dir: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # always MAX_NEW_TOKENS tokens to compare
    return model


@functools.cache
def _hf_greedy(model_dir: Path, prompt: tuple[int, ...]) -> list[int]:
    """transformers' greedy continuation of one prompt (alone: no padding effects)."""
    with torch.no_grad():
        out = _hf_model(model_dir).generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=MAX_NEW_TOKENS
        )
    return out[0, len(prompt) :].tolist()


@dataclass
class PagedSequence:
    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens whose K/V is in the pool
    output: list[int] = field(default_factory=list)


class NaivePagedEngine:
    """Greedy decoding over the paged pool; blocks come from a counter and are never freed."""

    def __init__(self, model: CausalLM, block_size: int, make_batch, num_blocks: int = 512):
        self.model, self.block_size, self.make_batch = model, block_size, make_batch
        self.kv_cache = torch.zeros(
            model.num_layers,
            2,
            num_blocks,
            block_size,
            model.num_kv_heads,
            model.head_dim,
            dtype=model.dtype,
        )
        self.next_block = 0
        self.tokens_run: list[int] = []  # new tokens of each step

    def step(self, seqs: list[PagedSequence], counts: list[int]) -> list[int]:
        for seq, n in zip(seqs, counts, strict=True):
            while len(seq.blocks) * self.block_size < seq.num_cached + n:
                seq.blocks.append(self.next_block)
                self.next_block += 1
        batch = self.make_batch(
            [s.tokens[s.num_cached : s.num_cached + n] for s, n in zip(seqs, counts, strict=True)],
            [s.num_cached for s in seqs],
            [s.blocks for s in seqs],
            self.block_size,
        )
        with torch.inference_mode():
            logits = self.model(batch, self.kv_cache)
        self.tokens_run.append(batch.input_ids.numel())
        for seq, n in zip(seqs, counts, strict=True):
            seq.num_cached += n
        return logits.argmax(dim=-1).tolist()

    def generate(self, seqs: list[PagedSequence], chunk_size: int | None = None) -> None:
        """Runs every sequence to MAX_NEW_TOKENS outputs, all in each step's batch; a prompt is
        prefilled chunk_size tokens per step (whole when None), beside the others' decode."""
        while active := [s for s in seqs if len(s.output) < MAX_NEW_TOKENS]:
            counts = [min(len(s.tokens) - s.num_cached, chunk_size or math.inf) for s in active]
            for seq, token in zip(active, self.step(active, counts), strict=True):
                if seq.num_cached == len(seq.tokens):  # logits of the last known token
                    seq.tokens.append(token)
                    seq.output.append(token)


def _assert_matches_hf(model_dir: Path, prompt: list[int], output: list[int]) -> None:
    expected = _hf_greedy(model_dir, tuple(prompt))
    assert len(expected) == MAX_NEW_TOKENS
    assert output == expected


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tiny_model_dir) -> tuple[Path, CausalLM]:
    architecture, overrides = VARIANTS[request.param]
    model_dir = tiny_model_dir(architecture, **overrides)
    return model_dir, load_model(str(model_dir), "cpu", attention_backend="torch")


def test_prefill_logits_of_ragged_batch_equal_transformers(variant, make_forward_batch):
    model_dir, model = variant
    prompts = _prompts([5, 17, 33])
    batch = make_forward_batch(
        prompts, [0, 0, 0], [list(range(i * 9, i * 9 + 9)) for i in range(3)], block_size=4
    )
    batch.logits_indices = torch.arange(batch.input_ids.numel())  # every row
    kv_cache = torch.zeros(model.num_layers, 2, 27, 4, model.num_kv_heads, model.head_dim)
    with torch.inference_mode():
        logits = model(batch, kv_cache)
        expected = torch.cat([_hf_model(model_dir)(torch.tensor([p])).logits[0] for p in prompts])
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("block_size", [1, 16])
def test_greedy_batch_equals_transformers_generate(variant, make_forward_batch, block_size):
    model_dir, model = variant
    prompts = _prompts([3, 20, 41], seed=2)
    engine = NaivePagedEngine(model, block_size, make_forward_batch)
    seqs = [PagedSequence(list(p)) for p in prompts]
    engine.generate(seqs)
    for prompt, seq in zip(prompts, seqs, strict=True):
        _assert_matches_hf(model_dir, prompt, seq.output)


def test_chunked_prefill_beside_decodes_equals_transformers(variant, make_forward_batch):
    """Prompts prefilled 7 tokens a step, in the same batches as other requests' decode steps."""
    model_dir, model = variant
    prompts = _prompts([4, 23, 30], seed=3)
    engine = NaivePagedEngine(model, 4, make_forward_batch)
    seqs = [PagedSequence(list(p)) for p in prompts]
    engine.generate(seqs, chunk_size=7)
    assert engine.tokens_run[:2] == [4 + 7 + 7, 1 + 7 + 7]  # chunks and a decode share steps
    for prompt, seq in zip(prompts, seqs, strict=True):
        _assert_matches_hf(model_dir, prompt, seq.output)


@pytest.mark.parametrize("block_size", [1, 4])
def test_reused_prefix_blocks_equal_transformers(variant, make_forward_batch, block_size):
    """A second request reads the first request's first 12 tokens from its blocks, running only
    its own suffix, and still generates transformers' tokens."""
    model_dir, model = variant
    first, suffix = _prompts([13, 9], seed=4)
    engine = NaivePagedEngine(model, block_size, make_forward_batch)
    earlier = PagedSequence(list(first))
    engine.step([earlier], [len(first)])
    num_shared = 12
    prompt = first[:num_shared] + suffix
    blocks = earlier.blocks[: num_shared // block_size]
    later = PagedSequence(list(prompt), blocks=list(blocks), num_cached=num_shared)
    fresh_prompt = _prompts([6], seed=5)[0]
    fresh = PagedSequence(list(fresh_prompt))
    engine.generate([later, fresh])
    assert engine.tokens_run[1] == len(suffix) + len(fresh_prompt)  # the prefix is not rerun
    _assert_matches_hf(model_dir, prompt, later.output)
    _assert_matches_hf(model_dir, fresh_prompt, fresh.output)


ROPE_CASES = {
    "default": {},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
}


@pytest.mark.parametrize("rope_type", list(ROPE_CASES))
def test_rope_frequencies_equal_transformers(rope_type):
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = ROPE_CASES[rope_type]
    config = Qwen3Config(
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={**scaling} if scaling else None,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    if scaling:
        expected, expected_scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
    else:
        expected = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float) / 128)
        expected_scaling = 1.0
    rope = parse_config(config.to_dict()).rope
    inv_freq, attention_scaling = rope_inv_freq(rope, 128, 131072)
    torch.testing.assert_close(inv_freq, expected, rtol=0, atol=0)
    assert attention_scaling == pytest.approx(expected_scaling, rel=1e-12)


def test_transformers4_and_5_configs_parse_alike(tiny_model_dir):
    """4.x configs keep rope_theta / rope_scaling ("type") at the top level, 5.x rope_parameters."""
    architecture, overrides = VARIANTS["llama-rope-llama3"]
    config5 = json.loads((tiny_model_dir(architecture, **overrides) / "config.json").read_text())
    config4 = dict(config5)
    rope = dict(config4.pop("rope_parameters"))
    config4 = {
        **config4,
        "rope_theta": rope.pop("rope_theta"),
        "rope_scaling": {**rope, "type": rope.pop("rope_type")},
    }
    del config4["rope_scaling"]["rope_type"]
    assert parse_config(config4) == parse_config(config5)
    assert parse_config(config5).rope["rope_type"] == "llama3"


def test_unsupported_rope_and_sliding_window_limits():
    base = {
        "architectures": ["MistralForCausalLM"],
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32768,
    }
    assert parse_config({**base, "sliding_window": 4096}).max_context == 4096
    assert parse_config({**base, "sliding_window": None}).max_context == 32768
    with pytest.raises(ValueError, match="unsupported rope_type 'dynamic'"):
        parse_config({**base, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
