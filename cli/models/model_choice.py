"""What `yaie serve` and `yaie in-process` serve: --model as given (a local directory), a hub
id resolved once to its local snapshot (downloaded first when it is not cached), or, without
--model, the built-in model."""

from __future__ import annotations

import logging

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
    from yaie.worker_service.hub import model_argument

    try:
        return model_argument(model, revision)
    except FileNotFoundError as error:
        raise ModelUnavailable(str(error)) from error


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
