"""The HTTP API refuses a body over 16 MiB (the gRPC API's message limit) with 413 and OpenAI's
error object, before holding it in memory or parsing it on the event loop; one just under the
limit is parsed as usual."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from yaie.scheduler_service.api.frontend import Frontend
from yaie.scheduler_service.api.http.routes import MAX_BODY_BYTES, create_app
from yaie.scheduler_service.ops.auth import KeyTable


@pytest.fixture
def client() -> TestClient:
    engine = SimpleNamespace(ready=False, model_info=None)  # a body is refused before either
    return TestClient(create_app(Frontend(engine), KeyTable(None, environ={}), None))


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_body_over_the_limit_is_413(client, route) -> None:
    body = b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}'
    reply = client.post(route, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert "larger than" in reply.json()["error"]["message"]


def test_a_streamed_body_over_the_limit_is_413(client) -> None:
    def chunks():  # no content-length: the limit holds while the body is read
        for _ in range(17):
            yield b" " * (1 << 20)

    reply = client.post("/v1/completions", content=chunks())
    assert reply.status_code == 413


def test_a_body_under_the_limit_is_parsed(client) -> None:
    body = b'{"prompt": 5, "padding": "' + b"a" * (MAX_BODY_BYTES - 64) + b'"}'
    reply = client.post("/v1/completions", content=body)
    assert reply.status_code == 400  # parsed: a prompt must be text or token ids
    assert "prompt" in reply.json()["error"]["message"]
