"""What `yaie serve` and `yaie in-process` serve: --model as given (a local directory), a hub
id resolved once to its local snapshot (downloaded first when it is not cached), or, without
--model, the built-in model."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger("yaie.model")


class ModelUnavailable(Exception):
    """The model cannot be had; the message says why and what to do."""


def served_model(model: str | None, revision: str | None = None) -> str:
    """The model directory (or path) that every process of the stack is given. A hub id is
    resolved here, once, so that the workers and the scheduler's tokenizer load the same
    snapshot (and --revision needs no flag of theirs). Raises ModelUnavailable."""
    if model is None:
        if revision is not None:
            raise ModelUnavailable("--revision needs a hub --model")
        return _builtin()
    if Path(model).expanduser().is_dir():
        if revision is not None:
            raise ModelUnavailable(f"--revision needs a hub --model; {model} is a directory")
        return model  # as given: GetModelInfo shows it so
    from yaie.worker_service.hub import resolve_model_dir

    try:
        path = resolve_model_dir(model, revision)
    except FileNotFoundError as error:
        raise ModelUnavailable(str(error)) from error
    logger.info("model %s (revision %s): %s", model, revision or "main", path)
    return str(path)


def _builtin() -> str:
    from yaie.cli.models.builtin_model import (
        DESCRIPTION,
        BuiltinModelUnavailable,
        ensure_builtin_model,
    )

    try:
        path = ensure_builtin_model()
    except BuiltinModelUnavailable as error:
        raise ModelUnavailable(str(error)) from error
    logger.info("no --model: serving the built-in model %s from %s", DESCRIPTION, path)
    return str(path)
