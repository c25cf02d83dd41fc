"""Helpers shared by the email worker tests: gateways files pointing at a real aiosmtpd sink,
DKIM keys with their DNS record (for dkimpy, no DNS), campaigns driven through the HTTP API, and
an in-process dispatch + send for the tests that need no worker process."""

from __future__ import annotations

import email
from collections.abc import Mapping
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi.testclient import TestClient

from campaigns.dispatch import Router, dispatch_pass
from gateways.smtp.dkim import public_dns_record
from gateways.smtp.sink import SmtpSink
from loa.db import transaction
from tests.conftest import wait_for
from workers.runtime import Runtime
from workers.send_email import EmailRuntime, send_email_batch

SENDER = "Tổng cục Thống kê <dieutra@gso.gov.vn>"
SENDER_ADDRESS = "dieutra@gso.gov.vn"
DKIM_DOMAIN = "gso.gov.vn"
DKIM_SELECTOR = "loa2026"
HTML = (
    "<p>Kính gửi <b>{{ don_vi }}</b>,</p>"
    "<p>Tài khoản khai báo Tổng điều tra kinh tế 2026 của đơn vị:</p>"
    "<ul><li>Tên đăng nhập: <b>{{ username }}</b></li><li>Mật khẩu: <b>{{ password }}</b></li></ul>"
    "<p>Trân trọng,<br>Tổng cục Thống kê</p>"
)
SUBJECT = "Tài khoản khai báo TĐT kinh tế 2026 - {{ don_vi }}"


def write_dkim_key(directory: Path, kind: str) -> tuple[Path, bytes]:
    """A fresh private key file (PEM) and the TXT record that publishes its public half."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}.pem"
    path.write_bytes(pem)
    return path, public_dns_record(pem).encode()


def dkim_verifies(data: bytes, record: bytes) -> bool:
    """dkimpy's verdict, with the key lookup answered in-process (no DNS)."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{DKIM_SELECTOR}._domainkey.{DKIM_DOMAIN}.".encode(), name
        return record

    return bool(dkim.verify(data, dnsfunc=dnsfunc))


def write_gateways(
    path: Path,
    sink: SmtpSink,
    *,
    connections: int = 2,
    rate: float = 2000,
    domain_rates: Mapping[str, float] | None = None,
    dkim_key: str | None = None,
    retry_after_s: float | None = None,
    auth: tuple[str, str] | None = None,
) -> Path:
    """A gateways file with one relay `mail` pointing at `sink` (TLS and AUTH as the sink wants)."""
    lines = [
        "[[smtp]]",
        'name = "mail"',
        'host = "127.0.0.1"',
        f"port = {sink.port}",
        f"connections = {connections}",
        f"rate = {rate}",
        'local_hostname = "mail.gso.gov.vn"',
    ]
    if sink.config.needs_tls:
        lines.append(f'tls = "{"tls" if sink.config.implicit_tls else "starttls"}"')
        lines.append(f'ca_file = "{sink.tls_cert_path}"')
    if auth is not None:
        lines += [f'username = "{auth[0]}"', f'password = "{auth[1]}"']
    if domain_rates:
        lines.append("domain_rates = { " + ", ".join(f'"{d}" = {r}' for d, r in domain_rates.items()) + " }")
    if dkim_key:
        lines.append(f'dkim = {{ domain = "{DKIM_DOMAIN}", selector = "{DKIM_SELECTOR}", key_file = "{dkim_key}" }}')
    if retry_after_s is not None:
        lines.append(f"retry_after_s = {retry_after_s}")
    path.write_text("\n".join(lines) + "\n")
    return path


def units(count: int, domains: list[str], *, prefix: str = "unit") -> list[dict[str, Any]]:
    """Survey units with Vietnamese names, usernames and distinctive passwords."""
    return [
        {
            "to": f"{prefix}{i:04d}@{domains[i % len(domains)]}",
            "fields": {
                "don_vi": f"Công ty TNHH Thương mại Sông Hồng {i:03d}",
                "username": f"DN2026{i:05d}",
                "password": f"Pw{i:04d}-Đặc-biệt-x9q",
            },
        }
        for i in range(count)
    ]


def start_campaign(client: TestClient, recipients: list[dict[str, Any]], **overrides: Any) -> str:
    body: dict[str, Any] = {
        "name": "Tài khoản khai báo",
        "channel": "email",
        "sender": SENDER,
        "template": {"subject": SUBJECT, "html": HTML},
        "secret_fields": ["password"],
    }
    body.update(overrides)
    created = client.post("/v1/campaigns", json=body)
    assert created.status_code == 201, created.text
    cid = str(created.json()["id"])
    up = client.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": recipients})
    assert up.status_code == 200, up.text
    assert up.json()["accepted"] == len(recipients), up.json()
    launched = client.post(f"/v1/campaigns/{cid}/launch")
    assert launched.status_code == 200, launched.text
    return cid


def wait_completed(client: TestClient, cid: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        c: dict[str, Any] = client.get(f"/v1/campaigns/{cid}").json()
        return c if c["status"] == "completed" else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, what=f"campaign {cid} completed")
    return result


def messages_by_address(client: TestClient, cid: str) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = client.get(f"/v1/campaigns/{cid}/messages", params=params).json()
        items.update({m["to"]: m for m in page["items"]})
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part in {message.get_content_type()}"
    assert part.get_content_type() == f"text/{subtype}"
    content: str = part.get_content()
    return content


def dispatch_and_send(rt: Runtime, er: EmailRuntime, *, rounds: int = 1) -> dict[str, int]:
    """What the dispatcher and an email worker do, in this process: claim, then send each batch."""
    totals: dict[str, int] = {}
    relays = rt.gateways.relay_by_name()
    for _ in range(rounds):
        with transaction(rt.engine) as session:
            batches = dispatch_pass(
                session, rt.gateways, Router(rt.gateways), batch_size=rt.settings.dispatch_batch, lease_s=60
            )
        for b in batches:
            for kind, n in send_email_batch(rt, er, relays[b.gateway], b.campaign_id, b.claim, b.ids).items():
                totals[kind] = totals.get(kind, 0) + n
    return totals
