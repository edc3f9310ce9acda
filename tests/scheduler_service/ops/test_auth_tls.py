"""TLS on the public channel: a client that trusts the CA is served, one that does not (or
speaks plaintext) is not; with a client CA (mTLS) a client needs a certificate from it."""

from __future__ import annotations

import grpc
import pytest
import served_stack

from yaie.scheduler_service.ops.channel_security import server_credentials
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc


@pytest.fixture(scope="module")
def pki() -> served_stack.Pki:
    pytest.importorskip("cryptography")
    return served_stack.make_pki()


@pytest.fixture(scope="module")
def pem_files(pki, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pki")
    files = {"ca": pki.ca, "cert": pki.server_cert, "key": pki.server_key}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: str(root / name) for name in files}


def _model_info(channel: grpc.Channel) -> pb.ModelInfo:
    stub = generation_pb2_grpc.GenerationStub(channel)
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)


def test_tls_serves_a_client_trusting_the_ca_and_no_other(tokenizer, pki, pem_files) -> None:
    credentials = server_credentials(pem_files["cert"], pem_files["key"], None)
    with served_stack.served_stack(tokenizer, credentials=credentials) as stack:
        trusting = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        with grpc.secure_channel(stack.address, trusting) as channel:
            assert _model_info(channel).vocab_size == 768
        with grpc.secure_channel(stack.address, grpc.ssl_channel_credentials()) as channel:
            with pytest.raises(grpc.RpcError) as error:  # system roots do not know our CA
                _model_info(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(stack.address) as channel:
            with pytest.raises(grpc.RpcError) as error:
                _model_info(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_needs_a_client_certificate_from_the_ca(tokenizer, pki, pem_files) -> None:
    credentials = server_credentials(pem_files["cert"], pem_files["key"], pem_files["ca"])
    with served_stack.served_stack(tokenizer, credentials=credentials) as stack:
        with_cert = grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.client_cert)
        with grpc.secure_channel(stack.address, with_cert) as channel:
            assert _model_info(channel).vocab_size == 768
        without = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        with grpc.secure_channel(stack.address, without) as channel:
            with pytest.raises(grpc.RpcError) as error:
                _model_info(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_options_are_checked(pem_files) -> None:
    assert server_credentials(None, None, None) is None
    for bad in ((pem_files["cert"], None, None), (None, None, pem_files["ca"])):
        with pytest.raises(ValueError):
            server_credentials(*bad)
    with pytest.raises(ValueError, match="cannot read"):
        server_credentials("/nonexistent/cert.pem", pem_files["key"], None)
