"""A cached model folder is built once (racing callers wait for one build), reused unchanged,
never left half-written, and rebuilt when it is partial or damaged."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from yaie.cli.models.model_cache import MANIFEST, check_folder, ensure_folder
from yaie.cli.models.random_model import write_random_model

RECIPE = "tiny llama, seed 0"


class CountingBuilder:
    """Writes a tiny random model; counts its builds."""

    def __init__(self) -> None:
        self.builds = 0
        self._lock = threading.Lock()

    def __call__(self, out: Path) -> None:
        with self._lock:
            self.builds += 1
        write_random_model(out, "LlamaForCausalLM", seed=0)


def test_folder_is_built_once_even_when_two_callers_race(tmp_path: Path) -> None:
    build = CountingBuilder()
    final = tmp_path / "tiny"
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_folder(final, RECIPE, build), range(2)))
    assert paths == [final, final] and build.builds == 1
    # Nothing temporary left over: the folder and its lock file only.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "tiny"]
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert ensure_folder(final, RECIPE, build) == final and build.builds == 1
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
    manifest = json.loads((final / MANIFEST).read_text())
    assert manifest["recipe"] == RECIPE and "model.safetensors" in manifest["files"]
    assert check_folder(final, RECIPE) is None


@pytest.mark.parametrize(
    "damage",
    ["truncate weights", "edit config", "remove tokenizer", "remove manifest", "other recipe"],
)
def test_a_partial_or_damaged_folder_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    build = CountingBuilder()
    final = ensure_folder(tmp_path / "tiny", RECIPE, build)
    recipe = RECIPE
    if damage == "truncate weights":
        weights = final / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "edit config":
        config = final / "config.json"
        config.write_text(config.read_text().replace('"hidden_size": 64', '"hidden_size": 65'))
    elif damage == "remove tokenizer":
        (final / "tokenizer.json").unlink()
    elif damage == "remove manifest":
        (final / MANIFEST).unlink()
    else:
        recipe = "tiny llama, seed 1"
    assert check_folder(final, recipe) is not None
    assert ensure_folder(final, recipe, build) == final and build.builds == 2
    assert check_folder(final, recipe) is None


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def failing(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("offline")

    with pytest.raises(RuntimeError, match="offline"):
        ensure_folder(tmp_path / "tiny", RECIPE, failing)
    assert [p.name for p in tmp_path.iterdir()] == [".tiny.lock"]
