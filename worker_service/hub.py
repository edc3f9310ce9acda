"""Where a --model lives: a local Hugging Face directory, or a hub id found in the local HF cache
or else downloaded with huggingface_hub (config, safetensors and tokenizer files only; progress
bars; HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE read at call time). No torch: the CLI uses it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
# What serving needs of a repository: no .bin / .pt / .gguf / ONNX copies of the weights.
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "*.jinja",
]
_TRUE = ("1", "on", "yes", "true")


def hub_cache_dir() -> Path:
    """The HF hub cache as huggingface_hub resolves it, read at call time (not import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_hub_id(model: str) -> bool:
    """Whether model can name a hub repository ("name" or "org/name"); paths cannot."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if model.startswith(("/", "~", ".")) or (os.sep != "/" and os.sep in model):
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def resolve_model_dir(model: str, revision: str | None = None) -> Path:
    """A local model directory; or the snapshot of hub id `model` at revision (default: main)
    from the local HF cache, downloaded first when it is not there and HF_HUB_OFFLINE is unset.
    FileNotFoundError saying what was looked for, and where."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"model {model!r} is a file, not a model directory")
    if not is_hub_id(model):
        raise FileNotFoundError(f"model directory {model!r} does not exist")
    cache = hub_cache_dir()
    cached = _cached_snapshot(model, revision, cache)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        raise FileNotFoundError(
            f"model {model!r} is neither a local directory nor a hub id in the local Hugging Face "
            f"cache {cache}, and HF_HUB_OFFLINE is set: unset it to download it, or fetch it "
            f"first with `hf download {model}`"
        )
    return _download(model, revision, cache)


def model_argument(model: str, revision: str | None = None) -> str:
    """--model as every process of a worker (or stack) is given it: a local directory as given,
    a hub id as its local snapshot at revision. FileNotFoundError saying why (--revision with a
    directory included)."""
    if Path(model).expanduser().is_dir():
        if revision is not None:
            raise FileNotFoundError(f"--revision needs a hub --model; {model} is a directory")
        return model  # as given: GetModelInfo shows it so
    path = resolve_model_dir(model, revision)
    log.info("model %s (revision %s): %s", model, revision or "main", path)
    return str(path)


def _cached_snapshot(model: str, revision: str | None, cache: Path) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            model,
            revision=revision,
            cache_dir=cache,
            local_files_only=True,
            allow_patterns=ALLOW_PATTERNS,
        )
        return Path(snapshot)
    except Exception:  # not cached (or incompletely): a download decides
        return None


def _download(model: str, revision: str | None, cache: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or None  # None: huggingface_hub's default hub
    where = endpoint or "the Hugging Face hub"
    log.info(
        "downloading %s (revision %s) from %s into %s", model, revision or "main", where, cache
    )
    try:
        snapshot = snapshot_download(
            model,
            revision=revision,
            cache_dir=cache,
            endpoint=endpoint,
            allow_patterns=ALLOW_PATTERNS,
        )
    except GatedRepoError as error:
        raise FileNotFoundError(
            f"{model} on {where} is gated: accept its terms there and set HF_TOKEN to a token "
            f"that may read it ({error})"
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"{model} on {where} has no revision {revision!r}") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"model {model!r} is not a local directory, and {where} has no repository {model} "
            "(or it is private: set HF_TOKEN to a token that may read it)"
        ) from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise FileNotFoundError(
            f"model {model!r} is not in the local Hugging Face cache {cache} and could not be "
            f"downloaded from {where}: {error}"
        ) from error
    return Path(snapshot)
