"""`yaie bench --backend openai`: the same workload sent to the OpenAI-compatible HTTP API
(streamed /v1/completions with token-id prompts), timed and counted as the gRPC backend does:
TTFT at the first chunk, an ITL per chunk (the server sends one per engine frame), the tokens
and cache hits from the usage chunk.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx

from yaie.cli.bench import datasets as ds
from yaie.cli.bench.metrics import RequestResult
from yaie.v1 import generation_pb2 as pb

# send(message, results): one request, one result per completion it asks for
Send = Callable[[Any, list[RequestResult]], Awaitable[None]]
DONE = b"data: [DONE]"
_TEXT_CHUNK = b'"finish_reason":null'  # in every chunk of text but the last


def base_url(target: str) -> str:
    """http://HOST:PORT (a bare HOST:PORT gets http://), without a trailing /v1."""
    url = target if "://" in target else f"http://{target}"
    return url.rstrip("/").removesuffix("/v1")


def _client(target: str, api_key: str | None, tls: object) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ca = getattr(tls, "tls_ca", None)
    # No pool limit: every request of the run may be in flight at once, as over gRPC.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(
        base_url=base_url(target), headers=headers, timeout=None, limits=limits, verify=ca or True
    )


async def model_info(target: str, api_key: str | None = None, tls: object = None) -> pb.ModelInfo:
    """The served model from GET /v1/models (its id, vocabulary and context)."""
    async with _client(target, api_key, tls) as client:
        reply = await client.get("/v1/models")
        reply.raise_for_status()
        card = reply.json()["data"][0]
    return pb.ModelInfo(
        model=card["id"], vocab_size=card["vocab_size"], max_context=card["max_model_len"]
    )


def payload(
    request: ds.BenchRequest, temperature: float, json_schema: str | None = None
) -> dict[str, Any]:
    body = {
        "model": "",
        "prompt": request.prompt_ids,
        "max_tokens": request.output_len,
        "temperature": temperature,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if json_schema:
        schema = json.loads(json_schema)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "bench", "schema": schema},
        }
    return body


def encoded_payload(
    request: ds.BenchRequest, temperature: float, json_schema: str | None = None
) -> bytes:
    """payload() as the bytes sent, built before the clock starts (as the gRPC protos are)."""
    return json.dumps(payload(request, temperature, json_schema)).encode()


def _http_error(status: int, body: bytes) -> str:
    try:
        message = json.loads(body).get("error", {}).get("message", "")
    except ValueError:
        message = body[:200].decode(errors="replace")
    return f"HTTP {status}: {message}"


async def _one(client: aiohttp.ClientSession, body: bytes, result: RequestResult) -> None:
    """Streams one request into result: the SSE events that each read of the body completed.
    Only the chunks that end something are parsed: a text chunk says `"finish_reason":null`
    (a text's own quotes are escaped, so it cannot match)."""
    perf_counter, loads = time.perf_counter, json.loads
    start = last = perf_counter()
    finish, usage, chunks, text = None, None, 0, b""
    async with client.post("/v1/completions", data=body) as reply:
        if reply.status != 200:
            result.error = _http_error(reply.status, await reply.read())
            return
        async for data in reply.content.iter_any():  # as it arrives (de-chunked by aiohttp)
            now = perf_counter()
            *events, text = (text + data).split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: ") or event == DONE:
                    continue
                if _TEXT_CHUNK not in event:
                    chunk = loads(event[6:])
                    if "error" in chunk:
                        result.error = chunk["error"]["message"]
                        return
                    if not chunk["choices"]:  # the usage chunk
                        usage = chunk["usage"]
                        continue
                    finish = chunk["choices"][0]["finish_reason"] or finish
                if chunks:
                    result.itls.append(now - last)
                else:
                    result.ttft = now - start
                last, chunks = now, chunks + 1
    result.latency = last - start
    if finish not in ("stop", "length") or usage is None:
        result.error = "stream ended early"
        return
    result.output_tokens = result.completion_tokens = usage["completion_tokens"]
    result.prompt_tokens = usage["prompt_tokens"]
    result.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
    result.ok = True


@asynccontextmanager
async def session(target: str, api_key: str | None, tls: object) -> AsyncIterator[Send]:
    """send(encoded payload, [result]) over one aiohttp session (connections kept and reused,
    no limit on how many are open: every request may be in flight at once, as over gRPC)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    ca = getattr(tls, "tls_ca", None)
    connector = aiohttp.TCPConnector(
        limit=0, ssl=ssl.create_default_context(cafile=ca) if ca else True
    )
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(
        base_url(target), headers=headers, connector=connector, timeout=timeout
    ) as client:

        async def send(body: bytes, results: list[RequestResult]) -> None:
            (result,) = results  # one completion per request (--n is the gRPC backend's)
            try:
                await _one(client, body, result)
            except (aiohttp.ClientError, OSError, ValueError) as error:
                result.error = f"{type(error).__name__}: {error}"

        yield send
