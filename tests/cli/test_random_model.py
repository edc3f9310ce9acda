"""The offline tokenizer and random-weight model writers (the tests' and benchmarks' models)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from yaie.cli.models.random_model import (
    BOS,
    EOS,
    SPECIAL_TOKENS,
    write_random_model,
    write_tokenizer,
)


def test_tokenizer_round_trips_text_and_renders_chat(tmp_path):
    write_tokenizer(tmp_path / "a")
    write_tokenizer(tmp_path / "b")
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (
        tmp_path / "b/tokenizer.json"
    ).read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert 500 <= len(tokenizer) <= 1000
    assert (tokenizer.bos_token, tokenizer.eos_token) == (BOS, EOS)
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    text = "The capital of France is Paris. Ünïcode ✓ 日本語\n  spaces\tand tabs"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_random_model_is_a_complete_deterministic_hf_directory(tmp_path):
    a = write_random_model(tmp_path / "a", "Qwen3ForCausalLM", seed=3)
    b = write_random_model(tmp_path / "b", "Qwen3ForCausalLM", seed=3)
    c = write_random_model(tmp_path / "c", "Qwen3ForCausalLM", seed=4)
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    weights_c = load_file(c / "model.safetensors")
    assert not torch.equal(weights_a["lm_head.weight"], weights_c["lm_head.weight"])
    config = json.loads((a / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["yaie_random_weights"]
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= 500
    generation = json.loads((a / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 6]
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.head_dim == 16
    assert AutoTokenizer.from_pretrained(a).eos_token_id == 1


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "MistralForCausalLM"])
def test_config_overrides_reach_the_saved_config(tmp_path, architecture):
    path = write_random_model(tmp_path, architecture, num_hidden_layers=3, tie_word_embeddings=True)
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["tie_word_embeddings"]) == (3, True)
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
