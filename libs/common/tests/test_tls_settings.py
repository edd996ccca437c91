"""Production refuses a gRPC server or channel without mutual TLS, unless a setting says a mesh provides it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatplane.dev import devcerts
from chatplane.common.grpc_client import channel
from chatplane.common.grpc_server import GrpcService
from chatplane.common.tls import TlsSettings


def test_production_refuses_plaintext_servers_and_channels(monkeypatch):
    monkeypatch.setenv("CHATPLANE_ENVIRONMENT", "production")
    for name in ("CERT", "KEY", "CA"):
        monkeypatch.delenv(f"CHATPLANE_TLS_{name}_FILE", raising=False)
    with pytest.raises(ValidationError, match="CHATPLANE_TLS_ALLOW_PLAINTEXT"):
        GrpcService(["x.v1.X"])
    with pytest.raises(ValidationError, match="production needs mutual TLS"):
        channel("127.0.0.1:1")
    monkeypatch.setenv("CHATPLANE_TLS_ALLOW_PLAINTEXT", "true")  # a mesh provides it: explicitly allowed
    assert not TlsSettings().enabled


def test_production_with_certificates_and_development_without(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATPLANE_ENVIRONMENT", "production")
    for name, value in devcerts.env(devcerts.ensure(tmp_path, ["auth"]), "auth").items():
        monkeypatch.setenv(name, value)
    assert TlsSettings().files() is not None
    monkeypatch.setenv("CHATPLANE_ENVIRONMENT", "development")
    for name in ("CERT", "KEY", "CA"):
        monkeypatch.delenv(f"CHATPLANE_TLS_{name}_FILE")
    assert TlsSettings().files() is None
