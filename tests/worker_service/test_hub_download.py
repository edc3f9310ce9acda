"""A hub id not in the local cache is downloaded (config, safetensors and tokenizer files only,
with HF_TOKEN, at --revision) from HF_ENDPOINT, here a stand-in on 127.0.0.1; HF_HUB_OFFLINE,
unknown repositories and revisions, and missing local paths give errors that say so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.hub_stand_in import HubStandIn, Repo
from yaie.worker_service.hub import resolve_model_dir
from yaie.worker_service.loader import load_model

REPO = "yaie-test/tiny-llama"
NOT_SERVED = ("pytorch_model.bin", "README.md", "onnx/model.onnx")


def _repo_folder(model_dir: Path, into: Path) -> Path:
    """model_dir's files plus some that serving does not need (never downloaded)."""
    shutil.copytree(model_dir, into)
    for name in NOT_SERVED:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(b"not for us")
    return into


@pytest.fixture
def hub(tiny_model_dir, tmp_path, monkeypatch):
    main = _repo_folder(tiny_model_dir(), tmp_path / "main")
    v1 = _repo_folder(tiny_model_dir("LlamaForCausalLM", seed=1), tmp_path / "v1")
    stand_in = HubStandIn({REPO: Repo({"main": main, "v1": v1})})
    monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", "hf_stand_in_token")
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield stand_in
    stand_in.stop()


def test_an_uncached_hub_id_is_downloaded_with_the_serving_files_only(hub, tmp_path):
    snapshot = resolve_model_dir(REPO)
    commit = hub.repos[REPO].commits["main"]
    assert snapshot == tmp_path / "hf-home/hub/models--yaie-test--tiny-llama/snapshots" / commit
    main = tmp_path / "main"
    served = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert {p.name for p in snapshot.iterdir()} == served
    assert sorted(hub.downloaded()) == sorted(served)
    for name in served:
        assert (snapshot / name).read_bytes() == (main / name).read_bytes()
    assert {auth for _, _, auth in hub.requests} == {"Bearer hf_stand_in_token"}
    seen = len(hub.requests)
    assert resolve_model_dir(REPO) == snapshot and len(hub.requests) == seen  # cached now
    assert load_model(REPO, "cpu").architecture == "LlamaForCausalLM"


def test_a_revision_downloads_that_revision(hub, tmp_path):
    snapshot = resolve_model_dir(REPO, "v1")
    assert snapshot.name == hub.repos[REPO].commits["v1"]
    got = load_file(snapshot / "model.safetensors")
    want = load_file(tmp_path / "v1/model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert resolve_model_dir(REPO, "v1") == snapshot  # from the cache (refs/v1)


def test_offline_unknown_and_missing_models_are_named(hub, monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no repository yaie-test/absent.*HF_TOKEN"):
        resolve_model_dir("yaie-test/absent")
    with pytest.raises(FileNotFoundError, match=r"has no revision 'v9'"):
        resolve_model_dir(REPO, "v9")
    for path in ("/nonexistent", "./models/absent", "~/absent-model-dir"):
        with pytest.raises(FileNotFoundError, match="does not exist") as error:
            resolve_model_dir(path)
        assert "hf download" not in str(error.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(hub.requests)
    with pytest.raises(FileNotFoundError, match=r"local Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve_model_dir(REPO)
    assert len(hub.requests) == seen  # offline: nothing was asked
