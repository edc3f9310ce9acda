"""A real public server (Engine over FakeWorkers, the built-in tokenizer) with the security and
metrics options of issue 6, on 127.0.0.1 in a background event loop: for the auth, TLS, salt,
metrics and fuzz tests (`import served_stack`, like fake_worker).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from fake_worker import FakeWorkerConfig, FakeWorkerHandle, start_fake_worker

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine import Engine
from yaie.scheduler_service.logs import observe_generate
from yaie.scheduler_service.metrics import Metrics
from yaie.scheduler_service.server import GenerationServicer, create_server, set_health
from yaie.scheduler_service.tokenizer import Tokenizer


@dataclass
class ServedStack:
    address: str
    engine: Engine
    workers: list[FakeWorkerHandle]
    loop: asyncio.AbstractEventLoop
    metrics: Metrics | None

    def call(self, coroutine, timeout: float = 30.0):
        """Runs a coroutine on the server's loop (e.g. reading engine state safely)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def served_stack(
    tokenizer: Tokenizer,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    with_metrics: bool = False,
    worker: FakeWorkerConfig | None = None,
    config: SchedulerConfig | None = None,
) -> Iterator[ServedStack]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    worker_config = worker or FakeWorkerConfig(vocab_size=768, max_context=256, num_blocks=128)

    async def start():
        handle = await start_fake_worker(worker_config)
        engine = Engine([handle.address], config or SchedulerConfig())
        await engine.start()
        metrics = None
        if with_metrics:
            metrics = Metrics()
            metrics.watch_engine(engine.stats, loop)
        servicer = GenerationServicer(engine, tokenizer)
        server, health = create_server(servicer, interceptors, observe_generate(metrics))
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        await set_health(health, True)
        return server, engine, handle, metrics, port

    server, engine, handle, metrics, port = asyncio.run_coroutine_threadsafe(start(), loop).result(
        30
    )
    stack = ServedStack(f"127.0.0.1:{port}", engine, [handle], loop, metrics)
    try:
        yield stack
    finally:

        async def stop() -> None:
            await server.stop(0)
            await engine.stop()
            await handle.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        if metrics is not None:
            metrics.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass(frozen=True)
class Pki:
    """PEM bytes of a CA, a server certificate for 127.0.0.1 / localhost, and a client one."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def make_pki() -> Pki:
    """A throwaway CA and two leaf certificates (EC P-256, valid for a day)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def build(subject, key, issuer, issuer_key, ca: bool, san=None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(name("yaie test CA"), ca_key, name("yaie test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = build(name("localhost"), server_key, ca.subject, ca_key, ca=False, san=san)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = build(name("yaie client"), client_key, ca.subject, ca_key, ca=False)
    return Pki(pem(ca), pem(server), pem_key(server_key), pem(client), pem_key(client_key))
