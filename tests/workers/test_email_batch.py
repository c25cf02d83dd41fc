"""The email send path in this process (dispatch + `send_email_batch`) against a real aiosmtpd sink,
real database and real Redis: DKIM rsa-sha256 from the gateways file, VERP and List-Unsubscribe,
4xx retried minutes later with the domain slowed down, 5xx failed and suppressed, a connection
lost during DATA resent once and counted. The worker-process tests are in test_email_workers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlmodel import col

from accounts.models import Role
from api.app import create_app
from campaigns.bounces import BounceKeys
from campaigns.models import Message
from gateways.smtp.sink import SinkConfig, SinkFaults, SmtpSink
from loa.db import transaction
from loa.settings import Settings
from loa.timeutil import utcnow
from tests.factories import make_key
from tests.workers.email_support import (
    DKIM_DOMAIN,
    dispatch_and_send,
    dkim_verifies,
    messages_by_address,
    parse,
    start_campaign,
    text_of,
    units,
    write_dkim_key,
    write_gateways,
)
from workers.runtime import Runtime
from workers.send_email import EmailRuntime


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(SinkConfig(port=0)) as running:
        yield running


class Stack:
    """Settings, API client, worker runtime and email runtime for one gateways file."""

    def __init__(self, settings: Settings, client: TestClient) -> None:
        self.settings = settings
        self.client = client
        self.rt = Runtime(settings)
        self.er = EmailRuntime(self.rt)

    def send(self, rounds: int = 1) -> dict[str, int]:
        return dispatch_and_send(self.rt, self.er, rounds=rounds)

    def close(self) -> None:
        self.er.close()
        self.rt.engine.dispose()


@pytest.fixture
def stack(
    make_settings: Callable[..., Settings], db: Engine, redis_client: Any, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def build(gateways: Path) -> Stack:
        settings = make_settings(gateways_file=gateways)
        key = make_key(db, Role.SENDER)
        client = TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"})
        made.append(Stack(settings, client))
        return made[-1]

    yield build
    for s in made:
        s.close()


def message_rows(engine: Engine, cid: str) -> dict[str, Message]:
    with transaction(engine) as session:
        rows = session.scalars(select(Message).where(col(Message.campaign_id) == cid)).all()
        session.expunge_all()
        return {m.to: m for m in rows}


def test_rsa_dkim_verp_and_list_unsubscribe_from_the_gateways_file(
    stack: Callable[..., Stack], sink: SmtpSink, tmp_path: Path
) -> None:
    # The key file is named relative to the gateways file, as an operator would write it.
    key_path, record = write_dkim_key(tmp_path / "keys", "rsa")
    s = stack(write_gateways(tmp_path / "gateways.toml", sink, dkim_key="keys/rsa.pem"))
    assert key_path.exists()
    recipients = units(6, ["dn1.example.vn", "dn2.example.vn"])
    cid = start_campaign(
        s.client,
        recipients,
        template={
            "subject": "Tài khoản {{ don_vi }}",
            "body": "Mật khẩu: {{ password }}",
            "html": "<p>{{ password }}</p>",
        },
        options={"verp": True, "list_unsubscribe": "https://gso.gov.vn/huy/{message_key}, mailto:huy@gso.gov.vn"},
    )

    assert s.send() == {"sent": 6}

    keys = BounceKeys.from_secrets(*s.settings.secret_keys())
    stored = messages_by_address(s.client, cid)
    assert len(sink.received) == 6
    for mail in sink.received:
        assert dkim_verifies(mail.data, record), mail.data[:400]
        signature = mail.data.split(b"\r\n\r\n", 1)[0].decode()
        assert "a=rsa-sha256" in signature
        assert "c=relaxed/relaxed" in signature
        message = parse(mail.data)
        (to,) = mail.rcpt_tos
        row = stored[to]
        # VERP: the envelope sender carries the signed message key, on the From domain.
        local, _, domain = mail.envelope_from.partition("@")
        key = local.removeprefix("bounce+")
        assert (domain, local) == (DKIM_DOMAIN, f"bounce+{key}")
        assert keys.message_id(key) == int(row["id"])
        assert message["Message-ID"] == row["provider_message_id"]
        assert message["List-Unsubscribe"] == f"<https://gso.gov.vn/huy/{key}>, <mailto:huy@gso.gov.vn>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "list-unsubscribe" in signature.lower()  # signed, so it cannot be swapped on the way
        password = next(r["fields"]["password"] for r in recipients if r["to"] == to)
        assert text_of(message, "plain") == f"Mật khẩu: {password}"  # the given text, not derived


def test_greylisting_is_retried_minutes_later_and_slows_the_domain(
    stack: Callable[..., Stack], sink: SmtpSink, tmp_path: Path, db: Engine
) -> None:
    sink.config.faults = SinkFaults(fail_first_n={"@grey.example.vn": 1})
    s = stack(write_gateways(tmp_path / "gateways.toml", sink))  # retry_after_s: the 300 s default
    cid = start_campaign(s.client, units(4, ["grey.example.vn", "ok.example.vn"]))

    before = utcnow()
    assert s.send() == {"sent": 2, "retry": 2}
    rows = message_rows(db, cid)
    grey = [m for m in rows.values() if m.to.endswith("@grey.example.vn")]
    for m in grey:
        assert (m.status, m.attempts, m.error_code) == ("queued", 1, "smtp:451")
        assert m.next_attempt_at is not None
        # Minutes, not a Celery countdown: 300 s +-10 % jitter.
        delay = m.next_attempt_at - before
        assert timedelta(seconds=260) < delay < timedelta(seconds=340), delay
    assert s.rt.limiter.factor("smtp:mail:domain:grey.example.vn") == 0.5
    assert s.rt.limiter.factor("smtp:mail:domain:ok.example.vn") == 1.0

    assert s.send() == {}  # nothing is due yet
    with transaction(db) as session:  # ... five minutes later
        session.execute(update(Message).where(col(Message.campaign_id) == cid).values(next_attempt_at=utcnow()))
    assert s.send() == {"sent": 2}
    rows = message_rows(db, cid)
    assert {m.status for m in rows.values()} == {"sent"}
    assert sorted(m.attempts for m in rows.values()) == [1, 1, 2, 2]
    assert sink.count == 4


def test_5xx_fails_with_code_and_unknown_mailboxes_are_suppressed(
    stack: Callable[..., Stack], sink: SmtpSink, tmp_path: Path, db: Engine
) -> None:
    sink.config.faults = SinkFaults(
        rcpt_replies={
            "gone@x.example.vn": (550, "5.1.1 <gone@x.example.vn>: Recipient address rejected: User unknown"),
            "old@x.example.vn": (553, "sorry, no mailbox here by that name"),  # no enhanced status code
            "full@x.example.vn": (552, "5.2.2 Mailbox full"),
        }
    )
    s = stack(write_gateways(tmp_path / "gateways.toml", sink))
    recipients = [{"to": f"{name}@x.example.vn", "fields": {}} for name in ("gone", "old", "full", "fine")]
    for r in recipients:
        r["fields"] = {"don_vi": "Đơn vị", "username": "u", "password": "p"}
    cid = start_campaign(s.client, recipients)

    assert s.send() == {"sent": 1, "failed": 3}
    view = messages_by_address(s.client, cid)
    assert view["gone@x.example.vn"]["status"] == "failed"
    assert view["gone@x.example.vn"]["error"]["code"] == "smtp:550"
    assert "5.1.1" in view["gone@x.example.vn"]["error"]["text"]
    assert view["old@x.example.vn"]["error"]["code"] == "smtp:553"
    assert view["full@x.example.vn"]["error"] == {"code": "smtp:552", "text": "5.2.2 Mailbox full"}
    suppressed = {i["address"] for i in s.client.get("/v1/suppressions").json()["items"]}
    assert suppressed == {"gone@x.example.vn", "old@x.example.vn"}  # a full mailbox still exists
    assert message_rows(db, cid)["gone@x.example.vn"].secrets is None  # final: the secret is gone


@pytest.mark.parametrize("policy", ["resend", "hold"])
def test_connection_lost_during_data_is_ambiguous_resent_once_and_counted(
    stack: Callable[..., Stack], sink: SmtpSink, tmp_path: Path, db: Engine, policy: str
) -> None:
    sink.config.faults = SinkFaults(drop_first_n={"flaky@z.example.vn": 1}, drop_during_data={"lost@z.example.vn"})
    s = stack(write_gateways(tmp_path / "gateways.toml", sink))
    recipients = [
        {"to": f"{name}@z.example.vn", "fields": {"don_vi": "Đơn vị", "username": "u", "password": "p"}}
        for name in ("flaky", "lost", "fine")
    ]
    cid = start_campaign(s.client, recipients, options={"ambiguous": policy})

    first = s.send()
    rows = message_rows(db, cid)
    if policy == "hold":
        assert first == {"sent": 1, "failed": 2}
        assert {rows[a].error_code for a in ("flaky@z.example.vn", "lost@z.example.vn")} == {"smtp:ambiguous"}
        return
    assert first == {"sent": 1, "ambiguous": 2}
    for address in ("flaky@z.example.vn", "lost@z.example.vn"):
        assert (rows[address].status, rows[address].ambiguous_resends) == ("queued", 1)

    assert s.send() == {"sent": 1, "failed": 1}  # resent at once; the second loss is final
    rows = message_rows(db, cid)
    assert (rows["flaky@z.example.vn"].status, rows["flaky@z.example.vn"].ambiguous_resends) == ("sent", 1)
    lost = rows["lost@z.example.vn"]
    assert (lost.status, lost.error_code, lost.ambiguous_resends) == ("failed", "smtp:ambiguous", 1)
    assert (sink.drops, sink.count) == (3, 2)
    assert s.client.get(f"/v1/campaigns/{cid}").json()["stats"]["ambiguous_resends"] == 2
