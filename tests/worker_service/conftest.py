"""Shared fixtures for worker tests: tiny random-weight model directories, ForwardBatch building."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from yaie.cli.builtin_model import write_random_model
from yaie.worker_service.forward_batch import ForwardBatch


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
