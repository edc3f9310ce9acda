"""Shared fixtures for worker tests: tiny random-weight model directories, ForwardBatch building."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from yaie.cli.models.random_model import write_random_model
from yaie.worker_service.config import KVPoolConfig
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.step.kv_pool import KVPool


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: tiny_model_dir(architecture="LlamaForCausalLM", seed=0, **config_overrides) -> a
    complete HF model directory (config, safetensors, tokenizer), written once per session per
    distinct arguments. Overrides go to write_random_model (e.g. tie_word_embeddings=True)."""
    made: dict[str, Path] = {}

    def make(architecture: str = "LlamaForCausalLM", seed: int = 0, **overrides) -> Path:
        key = json.dumps([architecture, seed, overrides], sort_keys=True, default=str)
        if key not in made:
            path = tmp_path_factory.mktemp(architecture.replace("ForCausalLM", "").lower())
            made[key] = write_random_model(path, architecture, seed=seed, **overrides)
        return made[key]

    return make


def kv_pool_for(
    model: torch.nn.Module, block_size: int, num_blocks: int, device: torch.device | str = "cpu"
) -> KVPool:
    """A pool of num_blocks blocks shaped for model (its layers, KV heads, head_dim, dtype)."""
    config = KVPoolConfig(block_size, num_blocks)
    return KVPool.allocate(
        config,
        model.num_layers,
        model.num_kv_heads,
        model.head_dim,
        model.dtype,
        torch.device(device),
    )


def build_forward_batch(
    new_tokens: Sequence[Sequence[int]],
    num_cached: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    device: torch.device | str = "cpu",
) -> ForwardBatch:
    """ForwardBatch for requests that each run new_tokens[b] after num_cached[b] tokens already
    in the pool, with their blocks listed in block_tables[b]; logits of each request's last
    token."""
    lengths = [len(tokens) for tokens in new_tokens]
    positions = [
        p for cached, n in zip(num_cached, lengths, strict=True) for p in range(cached, cached + n)
    ]
    request_of_token = [b for b, n in enumerate(lengths) for _ in range(n)]
    slots = [
        block_tables[b][p // block_size] * block_size + p % block_size
        for b, p in zip(request_of_token, positions, strict=True)
    ]
    max_blocks = max(len(table) for table in block_tables)
    padded_tables = [list(table) + [0] * (max_blocks - len(table)) for table in block_tables]
    query_start = [0]
    for n in lengths:
        query_start.append(query_start[-1] + n)

    def tensor(values: Sequence, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    return ForwardBatch(
        input_ids=tensor([t for tokens in new_tokens for t in tokens], torch.int64),
        positions=tensor(positions, torch.int64),
        slots=tensor(slots, torch.int64),
        block_tables=tensor(padded_tables, torch.int32),
        seq_lens=tensor([c + n for c, n in zip(num_cached, lengths, strict=True)], torch.int32),
        query_start=tensor(query_start, torch.int32),
        max_query_len=max(lengths),
        is_decode=all(n == 1 for n in lengths),
        logits_indices=tensor([end - 1 for end in query_start[1:]], torch.int64),
    )


@pytest.fixture
def make_forward_batch() -> Callable[..., ForwardBatch]:
    """build_forward_batch(new_tokens, num_cached, block_tables, block_size, device="cpu")."""
    return build_forward_batch


@dataclass
class PagedSequence:
    """One request of NaivePagedEngine: its tokens so far and where their K/V lives."""

    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens whose K/V is in the pool
    output: list[int] = field(default_factory=list)


class NaivePagedEngine:
    """Greedy decoding of a CausalLM over a paged pool on the model's device: blocks come from a
    counter and are never freed; every active sequence runs in every step's batch."""

    def __init__(self, model, block_size: int, num_blocks: int = 512) -> None:
        self.model, self.block_size = model, block_size
        self.device = next(model.parameters()).device
        shape = (model.num_layers, 2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=model.dtype, device=self.device)
        self.next_block = 0
        self.tokens_run: list[int] = []  # new tokens of each step

    def step(self, seqs: list[PagedSequence], counts: list[int]) -> list[int]:
        """Runs counts[i] new tokens of seqs[i]; returns each one's argmax after its last token."""
        for seq, n in zip(seqs, counts, strict=True):
            while len(seq.blocks) * self.block_size < seq.num_cached + n:
                seq.blocks.append(self.next_block)
                self.next_block += 1
        batch = build_forward_batch(
            [s.tokens[s.num_cached : s.num_cached + n] for s, n in zip(seqs, counts, strict=True)],
            [s.num_cached for s in seqs],
            [s.blocks for s in seqs],
            self.block_size,
            self.device,
        )
        with torch.inference_mode():
            logits = self.model(batch, self.kv_cache)
        self.tokens_run.append(batch.input_ids.numel())
        for seq, n in zip(seqs, counts, strict=True):
            seq.num_cached += n
        return logits.argmax(dim=-1).tolist()

    def generate(
        self, seqs: list[PagedSequence], max_new_tokens: int, chunk_size: int | None = None
    ) -> None:
        """Runs every sequence to max_new_tokens outputs; a prompt is prefilled chunk_size tokens
        a step (whole when None), in the same batches as the other sequences' decode steps."""
        while active := [s for s in seqs if len(s.output) < max_new_tokens]:
            counts = [min(len(s.tokens) - s.num_cached, chunk_size or math.inf) for s in active]
            for seq, token in zip(active, self.step(active, counts), strict=True):
                if seq.num_cached == len(seq.tokens):  # logits of the last known token
                    seq.tokens.append(token)
                    seq.output.append(token)


@pytest.fixture
def paged_engine() -> type[NaivePagedEngine]:
    """NaivePagedEngine(model, block_size); sequences are PagedSequence (see paged_sequence)."""
    return NaivePagedEngine


@pytest.fixture
def paged_sequence() -> type[PagedSequence]:
    return PagedSequence


class TransformersReference:
    """transformers' own results on a model directory (float32, CPU), cached per session."""

    @functools.cache  # noqa: B019 (one instance per session)
    def model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        model.generation_config.eos_token_id = None  # always max_new_tokens tokens to compare
        return model

    @functools.cache  # noqa: B019
    def greedy(self, model_dir: Path, prompt: tuple[int, ...], max_new_tokens: int) -> list[int]:
        """model.generate(do_sample=False) of one prompt alone (no padding effects)."""
        with torch.no_grad():
            out = self.model(model_dir).generate(
                torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens
            )
        return out[0, len(prompt) :].tolist()

    def logits(self, model_dir: Path, prompt: list[int]) -> torch.Tensor:
        """[len(prompt), vocab] float32 logits of one prompt."""
        with torch.no_grad():
            return self.model(model_dir)(torch.tensor([prompt])).logits[0]


@pytest.fixture(scope="session")
def hf_reference() -> TransformersReference:
    return TransformersReference()
