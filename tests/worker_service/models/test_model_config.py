"""ModelConfig parsing against transformers: rope variants, 4.x and 5.x config formats, limits."""

from __future__ import annotations

import json

import pytest
import torch

from yaie.worker_service.models import parse_config
from yaie.worker_service.models.layers import rope_inv_freq

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
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
    model_dir = tiny_model_dir(rope_scaling=LLAMA3_ROPE, rope_theta=500000.0)
    config5 = json.loads((model_dir / "config.json").read_text())
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
