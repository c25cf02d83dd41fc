"""Fixtures for the SMTP gateway tests: real aiosmtpd sinks on ephemeral loopback ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from gateways.smtp.pool import RelayConfig
from gateways.smtp.sink import SinkConfig, SmtpSink

SENDER = "tongdieutra@gso.gov.vn"
CREDENTIALS = ("loa-relay", "correct horse battery staple")
MESSAGE = (
    b"From: tongdieutra@gso.gov.vn\r\nTo: someone@example.vn\r\nSubject: test\r\n"
    b"Message-ID: <t1.0123456789abcdef@gso.gov.vn>\r\n\r\nXin chao\r\n.leading dot\r\n"
)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A plain sink: no TLS, no AUTH."""
    with SmtpSink(SinkConfig(port=0)) as running:
        yield running


@pytest.fixture
def secure_sink() -> Iterator[SmtpSink]:
    """STARTTLS required (self-signed certificate generated) and AUTH required."""
    with SmtpSink(SinkConfig(port=0, require_starttls=True, auth=CREDENTIALS)) as running:
        yield running


def relay_for(sink: SmtpSink, **overrides: Any) -> RelayConfig:
    """A relay pointing at ``sink``; TLS and AUTH set up to match the sink's configuration."""
    cfg = RelayConfig(name="test-relay", host="127.0.0.1", port=sink.port, timeout_s=5.0, local_hostname="gso.gov.vn")
    if sink.config.needs_tls:
        cfg = replace(
            cfg,
            tls="tls" if sink.config.implicit_tls else "starttls",
            ca_file=str(sink.tls_cert_path),
        )
    if sink.config.auth is not None:
        cfg = replace(cfg, username=sink.config.auth[0], password=sink.config.auth[1])
    return replace(cfg, **overrides)


def free_port() -> int:
    """A loopback port nobody listens on (bound and released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
