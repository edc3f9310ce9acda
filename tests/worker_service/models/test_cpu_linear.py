"""oneDNN-packed linear layers (models/cpu_linear.py): F.linear's results, which layers a model
packs, and that a CPU worker serves with them except in deterministic mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yaie.worker_service.app import build_runner
from yaie.worker_service.config import WorkerConfig
from yaie.worker_service.loader import load_model
from yaie.worker_service.models.cpu_linear import PackedLinear, pack_linears, packing_works
from yaie.worker_service.models.parallel import RowParallelLinear

pytestmark = pytest.mark.skipif(not packing_works(), reason="this torch has no oneDNN linear")


@pytest.mark.parametrize("rows", [0, 1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_computes_f_linear(rows, bias):
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(300, 72, generator=generator)
    b = torch.randn(300, generator=generator) if bias else None
    x = torch.randn(rows, 72, generator=generator)
    with torch.inference_mode():
        out = PackedLinear(weight, b)(x)
    assert out.shape == (rows, 300)
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-4, atol=1e-4)


def test_only_plain_float32_cpu_linears_are_packed():
    class Group:  # stands for a tensor-parallel group: its layer's input is split
        pass

    layers = nn.ModuleDict(
        {
            "plain": nn.Linear(8, 8),
            "row_alone": RowParallelLinear(8, 8, False, torch.float32, None),
            "row_split": RowParallelLinear(8, 8, False, torch.float32, Group()),
            "bf16": nn.Linear(8, 8, dtype=torch.bfloat16),
            "nested": nn.Sequential(nn.Linear(8, 8)),
        }
    )
    assert pack_linears(layers) == 3
    assert [type(layers[k]).__name__ for k in ("plain", "row_alone", "row_split", "bf16")] == [
        "PackedLinear",
        "PackedLinear",
        "RowParallelLinear",
        "Linear",
    ]
    assert isinstance(layers["nested"][0], PackedLinear)


@pytest.mark.parametrize("tied", [False, True])
def test_a_packed_model_keeps_its_logits_and_drops_its_dense_weights(tiny_model_dir, tied):
    model_dir = tiny_model_dir("LlamaForCausalLM", tie_word_embeddings=tied)
    dense = load_model(str(model_dir), "cpu")
    packed = load_model(str(model_dir), "cpu")
    assert packed.pack_cpu_linears() == 4 * packed.num_layers + 1
    assert not any(isinstance(m, nn.Linear) for m in packed.modules())
    assert packed.pack_cpu_linears() == 0  # once only: nothing is left to pack
    h = torch.randn(5, packed.config.hidden_size)
    with torch.inference_mode():
        torch.testing.assert_close(
            packed.packed_logits(h), F.linear(h, dense.lm_head_weight()), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_cpu_worker_packs_except_in_deterministic_mode(tiny_model_dir, deterministic):
    config = WorkerConfig(
        model=str(tiny_model_dir("LlamaForCausalLM")),
        device="cpu",
        block_size=4,
        num_blocks=16,
        deterministic=deterministic,
    )
    runner, _ = build_runner(config)
    assert (runner.model.packed_logits is None) == deterministic
