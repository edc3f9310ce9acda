"""A lean HTTP/1.1 client for the benchmark's streamed POSTs: asyncio streams, a connection per
request in flight (kept for the next request), the chunked body decoded and split into
Server-Sent Events per socket read. httpx cost the client ~2x the gRPC client per request and
per frame, enough to make the client, not the server, what an HTTP run measured.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

Events = tuple[float, list[bytes]]  # (perf_counter at the read, the SSE events it completed)


class HttpError(Exception):
    """The server answered something other than 200; body: the whole response body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""  # bytes read past what the last response used

    async def read(self) -> bytes:
        data = await self.reader.read(1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    async def head(self) -> tuple[int, dict[bytes, bytes]]:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def sized_body(self, length: int) -> bytes:
        while len(self.buffer) < length:
            self.buffer += await self.read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    async def chunked_events(self) -> AsyncIterator[Events]:
        """The body's SSE events (b"data: ..." without the blank line), batched per read."""
        raw, text, done = self.buffer, b"", False
        self.buffer = b""
        while not done:
            now = time.perf_counter()
            while True:  # every whole chunk in raw
                end = raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(raw[:end].split(b";", 1)[0], 16)
                if len(raw) < end + 2 + size + 2:
                    break
                if size == 0:
                    done, raw = True, raw[end + 4 :]  # no trailers: uvicorn sends none
                    break
                text += raw[end + 2 : end + 2 + size]
                raw = raw[end + 4 + size :]
            *events, text = text.split(b"\n\n")
            if events:
                yield now, events
            if not done:
                raw += await self.read()
        self.buffer = raw


class StreamClient:
    """POSTs to one server (http:// or https://), each streamed back as SSE events."""

    def __init__(self, base: str, headers: dict[str, str], ca: str | None = None) -> None:
        url = urlsplit(base)
        self._host, self._secure = url.hostname or "127.0.0.1", url.scheme == "https"
        self._port = url.port or (443 if self._secure else 80)
        self._ssl = ssl.create_default_context(cafile=ca) if self._secure else None
        host = f"Host: {url.netloc}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._headers = host.encode()
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        if self._idle:
            return self._idle.pop()
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        return _Connection(reader, writer)

    async def post_events(self, path: str, body: bytes) -> AsyncIterator[Events]:
        """The response's events; HttpError for a status other than 200. A caller that stops
        early closes the connection (the server sees a disconnect), as httpx's would."""
        connection, reusable = await self._connect(), False
        request = b"POST %s HTTP/1.1\r\n%sContent-Type: application/json\r\n" % (
            path.encode(),
            self._headers,
        )
        connection.writer.write(request + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        try:
            status, headers = await connection.head()
            if headers.get(b"transfer-encoding") != b"chunked":
                raw = await connection.sized_body(int(headers.get(b"content-length", b"0")))
                if status != 200:
                    raise HttpError(status, raw)
                yield time.perf_counter(), [line for line in raw.split(b"\n\n") if line]
            elif status != 200:
                events = [e async for _, batch in connection.chunked_events() for e in batch]
                raise HttpError(status, b"\n\n".join(events))
            else:
                async for events in connection.chunked_events():
                    yield events
            reusable = headers.get(b"connection") != b"close"
        finally:
            if reusable:
                self._idle.append(connection)
            else:
                connection.writer.close()

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.writer.close()
        self._idle.clear()
