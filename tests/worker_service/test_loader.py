"""load_model / resolve_model_dir: sharded checkpoints, tied embeddings, the local HF cache, and
errors that name the missing file, the unsupported architecture or the mismatched weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from yaie.worker_service.loader import load_model, resolve_model_dir
from yaie.worker_service.models import build_model


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_loads_the_same_weights_as_a_single_file(tiny_model_dir):
    single = tiny_model_dir("Qwen3ForCausalLM")
    sharded = tiny_model_dir("Qwen3ForCausalLM", max_shard_size="40KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = load_model(str(single), "cpu"), load_model(str(sharded), "cpu")
    assert a.dtype == torch.float32 and next(a.parameters()).dtype == torch.float32
    assert _params(a).keys() == _params(b).keys()
    for name, param in _params(a).items():
        assert torch.equal(param, _params(b)[name]), name


def test_tied_embeddings_share_the_embedding_matrix(tiny_model_dir):
    model_dir = tiny_model_dir("LlamaForCausalLM", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(model_dir / "model.safetensors")
    model = load_model(str(model_dir), "cpu")
    assert model.lm_head_weight() is model.model.embed_tokens.weight


def test_explicit_dtype_and_progress_bar(tiny_model_dir, capsys):
    model = load_model(str(tiny_model_dir()), "cpu", dtype=torch.bfloat16, progress=True)
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert "Loading weights" in capsys.readouterr().err


def _fake_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """Lays model_dir out as huggingface_hub caches a downloaded repo; returns the snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return _copy(model_dir, repo / "snapshots" / commit)


def test_hub_id_resolves_in_the_local_hf_cache_only(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(tmp_path / "hub", "yaie-test/tiny-llama", tiny_model_dir())
    assert resolve_model_dir("yaie-test/tiny-llama") == snapshot
    assert load_model("yaie-test/tiny-llama", "cpu").architecture == "LlamaForCausalLM"
    with pytest.raises(FileNotFoundError, match=r"yaie-test/absent.*local Hugging Face cache"):
        resolve_model_dir("yaie-test/absent")


def test_missing_files_are_named(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path), "cpu")
    no_weights = _copy(tiny_model_dir(), tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_model(str(no_weights), "cpu")
    sharded = _copy(tiny_model_dir("Qwen3ForCausalLM", max_shard_size="40KB"), tmp_path / "s")
    lost = sorted(sharded.glob("model-*.safetensors"))[1]
    lost.unlink()
    with pytest.raises(FileNotFoundError, match=lost.name):
        load_model(str(sharded), "cpu")


def test_unsupported_architecture_is_named(tiny_model_dir, tmp_path):
    model_dir = _copy(tiny_model_dir(), tmp_path / "gpt2")
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture GPT2LMHeadModel"):
        load_model(str(model_dir), "cpu")


def test_missing_and_unexpected_weights_are_named(tiny_model_dir, tmp_path):
    model_dir = _copy(tiny_model_dir(), tmp_path / "broken")
    weights = load_file(model_dir / "model.safetensors")
    del weights["model.layers.1.self_attn.k_proj.weight"], weights["lm_head.weight"]
    weights["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(weights, model_dir / "model.safetensors")
    with pytest.raises(ValueError) as error:
        load_model(str(model_dir), "cpu")
    message = str(error.value)
    assert "missing weights: lm_head.weight, model.layers.1.self_attn.k_proj.weight" in message
    assert "unexpected weights: model.layers.0.mlp.extra_proj.weight" in message


def test_misshapen_weight_is_named(tiny_model_dir):
    model_dir = tiny_model_dir()
    model = build_model(json.loads((model_dir / "config.json").read_text()), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"model\.norm\.weight has shape \(3,\)"):
        model.load_weights([("model.norm.weight", torch.ones(3))])


def test_redundant_lm_head_of_a_tied_checkpoint_is_ignored(tiny_model_dir):
    """Some tied checkpoints still store lm_head.weight; the embedding stays the one used."""
    model_dir = tiny_model_dir("Qwen2ForCausalLM", tie_word_embeddings=True)
    model = build_model(json.loads((model_dir / "config.json").read_text()), torch.float32, "cpu")
    weights = load_file(model_dir / "model.safetensors")
    model.load_weights([*weights.items(), ("lm_head.weight", torch.zeros(768, 64))])
    assert torch.equal(model.lm_head_weight(), weights["model.embed_tokens.weight"])
