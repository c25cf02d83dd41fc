"""Bounces for mail the send path really sent (through a real aiosmtpd sink), matched back by the
VERP token or by the original Message-ID, through `POST /v1/bounces` and through the `loa bounces`
SMTP receiver run as a real process."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from accounts.models import Role
from api.app import create_app
from gateways.smtp.sink import ReceivedMail, SinkConfig, SmtpSink
from loa.settings import Settings
from loa.stack import free_port, wait_port
from tests.conftest import Procs, wait_for
from tests.factories import make_key
from tests.workers.email_support import dispatch_and_send, messages_by_address, start_campaign, units, write_gateways
from workers.runtime import Runtime
from workers.send_email import EmailRuntime


def dsn(
    original: ReceivedMail,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    to: str | None = None,
    include_headers: bool = True,
) -> bytes:
    """An RFC 3464 report as Postfix writes it, for one message the sink received."""
    headers = original.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    if headers.startswith("DKIM-Signature:"):  # not needed in the returned headers
        headers = headers[headers.index("\r\nFrom:") + 2 :]
    recipient = original.rcpt_tos[0]
    returned = f"--BOUNDARY\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n\r\n" if include_headers else ""
    text = (
        "Return-Path: <>\r\n"
        f"To: {to or original.envelope_from}\r\n"
        "From: MAILER-DAEMON@mx.example.vn (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"\r\n\r\n'
        "--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--BOUNDARY\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.vn\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox says no\r\n\r\n"
        f"{returned}--BOUNDARY--\r\n"
    )
    return text.encode("ascii")


class Sent:
    """A small campaign sent through the real send path, and what the sink got."""

    def __init__(self, client: TestClient, settings: Settings, cid: str, sink: SmtpSink) -> None:
        self.client, self.settings, self.cid = client, settings, cid
        self.mail = {m.rcpt_tos[0]: m for m in sink.received}

    def status(self, address: str) -> dict[str, Any]:
        return messages_by_address(self.client, self.cid)[address]

    def suppressed(self) -> set[str]:
        return {i["address"] for i in self.client.get("/v1/suppressions").json()["items"]}


@pytest.fixture
def sent(
    make_settings: Callable[..., Settings], db: Engine, redis_client: Any, tmp_path: Path, request: Any
) -> Iterator[Callable[..., Sent]]:
    cleanups: list[Callable[[], None]] = []

    def run(*, verp: bool) -> Sent:
        sink = SmtpSink(SinkConfig(port=0))
        sink.start()
        cleanups.append(sink.stop)
        settings = make_settings(gateways_file=write_gateways(tmp_path / "gateways.toml", sink))
        client = TestClient(create_app(settings), headers={"Authorization": f"Bearer {make_key(db, Role.SENDER)}"})
        cid = start_campaign(client, units(5, ["dn.example.vn"]), options={"verp": verp})
        rt = Runtime(settings)
        er = EmailRuntime(rt)
        cleanups.extend([rt.engine.dispose, er.close])
        assert dispatch_and_send(rt, er) == {"sent": 5}
        return Sent(client, settings, cid, sink)

    yield run
    for cleanup in reversed(cleanups):
        cleanup()


def post(client: TestClient, raw: bytes) -> dict[str, Any]:
    response = client.post("/v1/bounces", content=raw, headers={"Content-Type": "message/rfc822"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_hard_bounce_by_verp_token_bounces_and_suppresses(sent: Callable[..., Sent]) -> None:
    s = sent(verp=True)
    address = "unit0000@dn.example.vn"
    original = s.mail[address]
    assert original.envelope_from.startswith("bounce+")
    # Without the returned headers only the VERP address (the bounce's To) leads back.
    result = post(s.client, dsn(original, include_headers=False))
    assert result["matched"] is True
    assert (result["kind"], result["applied"], result["suppressed"]) == ("hard", "bounced", True)
    view = s.status(address)
    assert view["status"] == "bounced"
    assert view["error"]["code"] == "bounce:5.1.1"
    assert s.suppressed() == {address}
    events = s.client.get(f"/v1/messages/{view['id']}").json()["events"]
    assert events[-1]["kind"] == "bounce"
    assert events[-1]["detail"]["status"] == "5.1.1"
    assert s.status("unit0001@dn.example.vn")["status"] == "sent"  # only that one


def test_bounce_by_original_message_id_and_what_each_kind_does(sent: Callable[..., Sent]) -> None:
    s = sent(verp=False)
    a, b, c = (f"unit000{i}@dn.example.vn" for i in range(3))
    assert s.mail[a].envelope_from == "dieutra@gso.gov.vn"  # no VERP: the Message-ID must do
    # Action failed with 4.x.x: the remote MTA gave up (expired): final, but the address is fine.
    result = post(s.client, dsn(s.mail[a], status="4.4.7", to="dieutra@gso.gov.vn"))
    assert (result["matched"], result["applied"], result["suppressed"]) == (True, "bounced", False)
    assert s.status(a)["status"] == "bounced"
    assert s.status(a)["error"]["code"] == "bounce:4.4.7"
    # A delay notice may still end in delivery: recorded, nothing else.
    result = post(s.client, dsn(s.mail[b], action="delayed", status="4.4.1", to="dieutra@gso.gov.vn"))
    assert (result["matched"], result["applied"]) == (True, "recorded")
    assert s.status(b)["status"] == "sent"
    events = s.client.get(f"/v1/messages/{s.status(b)['id']}").json()["events"]
    assert events[-1]["detail"]["action"] == "delayed"
    # A hard one by Message-ID.
    assert post(s.client, dsn(s.mail[c], to="dieutra@gso.gov.vn"))["applied"] == "bounced"
    assert s.suppressed() == {c}


def test_forged_or_foreign_bounces_change_nothing(
    sent: Callable[..., Sent], db: Engine, make_settings: Callable[..., Settings]
) -> None:
    s = sent(verp=True)
    address = "unit0000@dn.example.vn"
    original = s.mail[address]
    message_id = int(s.status(address)["id"])
    # The right message id with a made-up tag, in the VERP address and in the Message-ID.
    forged_key = f"{message_id}-0123456789ab"
    forged = dsn(original, include_headers=False, to=f"bounce+{forged_key}@gso.gov.vn")
    assert post(s.client, forged)["matched"] is False
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(original.data)
    fake_id = str(headers["Message-ID"]).replace(str(headers["Message-ID"]).split(".")[0], f"<{forged_key}")
    forged = dsn(original, to="dieutra@gso.gov.vn").replace(str(headers["Message-ID"]).encode(), fake_id.encode())
    assert post(s.client, forged)["matched"] is False
    # A genuine bounce, posted by another organisation's key.
    other = TestClient(
        create_app(s.settings), headers={"Authorization": f"Bearer {make_key(db, Role.SENDER, org='other')}"}
    )
    assert post(other, dsn(original))["matched"] is False
    assert s.status(address)["status"] == "sent"
    assert s.suppressed() == set()
    # Mail that is no bounce at all is refused.
    response = s.client.post("/v1/bounces", content=b"From: a@b.vn\r\nSubject: hello\r\n\r\nhi\r\n")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "not_a_bounce"


@pytest.mark.slow
def test_loa_bounces_receiver_applies_bounces_sent_to_it(sent: Callable[..., Sent], procs: Procs) -> None:
    s = sent(verp=True)
    port = free_port()
    procs.start(s.settings, "bounces", "--port", str(port), name="bounces")
    assert wait_port(port, timeout=30), "loa bounces did not open its port"
    hard, soft = "unit0000@dn.example.vn", "unit0001@dn.example.vn"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        # As a remote MTA does: to the VERP address (the envelope recipient carries the token).
        smtp.sendmail("", [s.mail[hard].envelope_from], dsn(s.mail[hard], include_headers=False, to="x@gso.gov.vn"))
        smtp.sendmail("", [s.mail[soft].envelope_from], dsn(s.mail[soft], action="delayed", status="4.4.1"))
        # Not a bounce: accepted and ignored, so the remote MTA does not bounce it back.
        smtp.sendmail("someone@example.vn", ["bounce+x@gso.gov.vn"], b"Subject: hi\r\n\r\nhello\r\n")
    wait_for(lambda: s.status(hard)["status"] == "bounced", timeout=30, what="hard bounce applied")
    assert s.suppressed() == {hard}

    def soft_recorded() -> bool:
        events = s.client.get(f"/v1/messages/{s.status(soft)['id']}").json()["events"]
        return any(e["kind"] == "bounce" for e in events)

    wait_for(soft_recorded, timeout=30, what="delay notice recorded")
    assert s.status(soft)["status"] == "sent"
