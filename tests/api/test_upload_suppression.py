"""The organisation's suppression list (JSON and CSV through the API) applied at import, and the
per-organisation frequency cap applied when messages are dispatched."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text, update
from sqlmodel import Session, col, select

from accounts.models import Role
from campaigns.dispatch import Router, dispatch_pass
from campaigns.models import Message, MessageStatus
from gateways.config import parse_gateways
from loa.settings import Settings
from loa.stack import builtin_gateways_toml
from loa.timeutil import to_utc, utcnow
from tests.api.test_upload import api_client, csv_bytes, new_campaign, post_file
from tests.factories import make_key, sms_campaign


@pytest.fixture
def client(settings: Settings, db: Engine) -> Iterator[TestClient]:
    with api_client(settings, make_key(db, Role.ADMIN)) as c:
        yield c


def statuses(db: Engine, campaign: str) -> dict[str, str]:
    with db.connect() as conn:
        rows = conn.execute(text('SELECT "to", status FROM message WHERE campaign_id = :c'), {"c": campaign})
        return dict(rows.tuples().all())


LIST = [["phone", "ten"], ["0912345678", "An"], ["0987654321", "Bình"], ["0911111111", "Chi"]]


def test_suppressed_at_import_from_json_and_csv_lists(client: TestClient, db: Engine) -> None:
    response = client.post("/v1/suppressions", json={"address": "0912 345 678", "reason": "replied STOP"})
    assert response.status_code == 201, response.text
    listed = b"address,reason\r\n+84 98 765 4321,complaint\r\n"
    response = client.post("/v1/suppressions", files={"file": ("optout.csv", listed, "text/csv")})
    assert response.status_code == 201, response.text
    items = client.get("/v1/suppressions").json()["items"]
    assert [(i["address"], i["reason"]) for i in items] == [
        ("+84912345678", "replied STOP"),
        ("+84987654321", "complaint"),
    ]

    campaign = new_campaign(client)
    body = post_file(client, campaign, "list.csv", csv_bytes(LIST)).json()
    assert (body["total_rows"], body["accepted"], body["suppressed"], body["rejected"]) == (3, 1, 2, 0)
    assert statuses(db, campaign) == {
        "+84912345678": "suppressed",
        "+84987654321": "suppressed",
        "+84911111111": "queued",
    }
    view = client.get(f"/v1/campaigns/{campaign}").json()
    assert (view["counts"]["suppressed"], view["counts"]["queued"]) == (2, 1)

    # Off the list again: a later upload of that number is sent (the earlier row stays as it was).
    assert client.delete("/v1/suppressions/0912345678").status_code == 204
    again = new_campaign(client)
    assert post_file(client, again, "list.csv", csv_bytes(LIST)).json()["suppressed"] == 1


def test_suppressing_later_stops_queued_messages(client: TestClient, db: Engine) -> None:
    campaign = new_campaign(client)
    assert post_file(client, campaign, "list.csv", csv_bytes(LIST)).json()["accepted"] == 3
    client.post("/v1/suppressions", json=[{"address": "0911111111"}])
    assert statuses(db, campaign)["+84911111111"] == "suppressed"


# ---------------------------------------------------------------- frequency cap


def dispatch(db: Engine, settings: Settings) -> list[Any]:
    gateways = parse_gateways(tomllib.loads(builtin_gateways_toml(2775, 2525)), "test")
    with Session(db, expire_on_commit=False) as session:
        batches = dispatch_pass(session, gateways, Router(gateways), batch_size=100, lease_s=60)
        session.commit()
    return batches


def message(db: Engine, campaign: str, to: str) -> Message:
    with Session(db, expire_on_commit=False) as session:
        return session.exec(select(Message).where(col(Message.campaign_id) == campaign, col(Message.to) == to)).one()


def sent_hours_ago(db: Engine, campaign: str, to: str, hours: float) -> None:
    with Session(db) as session:
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == campaign, col(Message.to) == to)
            .values(status=MessageStatus.DELIVERED, submitted_at=utcnow() - timedelta(hours=hours))
        )
        session.commit()


def launched(client: TestClient, rows: list[list[str]]) -> str:
    campaign = new_campaign(client, sms_campaign(template={"body": "Kính gửi {{ ten }}"}))
    assert post_file(client, campaign, "list.csv", csv_bytes([["phone", "ten"], *rows])).status_code == 200
    assert client.post(f"/v1/campaigns/{campaign}/launch").json()["status"] == "running"
    return campaign


def test_frequency_cap_holds_recipients_until_the_window_frees_them(
    client: TestClient, db: Engine, settings: Settings
) -> None:
    assert client.get("/v1/org").json()["frequency_cap"] is None  # off by default
    response = client.patch("/v1/org", json={"frequency_cap": 2})
    assert response.status_code == 200, response.text

    # Two messages already went to An (20 h and 3 h ago), one to Bình.
    first = launched(client, [["0912345678", "An"], ["0987654321", "Bình"]])
    second = launched(client, [["0912345678", "An"]])
    with db.begin() as conn:
        conn.execute(text("UPDATE campaign SET status = 'completed' WHERE id IN (:a, :b)"), {"a": first, "b": second})
    sent_hours_ago(db, first, "+84912345678", 20)
    sent_hours_ago(db, second, "+84912345678", 3)
    sent_hours_ago(db, first, "+84987654321", 1)

    third = launched(client, [["0912345678", "An"], ["0987654321", "Bình"], ["0911111111", "Chi"]])
    dispatch(db, settings)
    an = message(db, third, "+84912345678")
    assert an.status == "queued"
    assert an.error_code == "frequency_cap"
    # Free again when the older of the two leaves the 24-hour window, four hours from now.
    assert an.next_attempt_at is not None
    assert an.error_text is not None
    assert abs(to_utc(an.next_attempt_at) - (utcnow() + timedelta(hours=4))) < timedelta(minutes=1)
    assert "2 messages in the last 24 h (cap 2)" in an.error_text
    assert message(db, third, "+84987654321").status == "dispatching"
    assert message(db, third, "+84911111111").status == "dispatching"

    timeline = client.get(f"/v1/messages/{an.id}").json()
    assert timeline["status"] == "queued"
    assert timeline["error"]["code"] == "frequency_cap"
    assert [e["kind"] for e in timeline["events"]][-1] == "held"

    # A later pass leaves it alone until then; once the time has come, it goes.
    dispatch(db, settings)
    assert message(db, third, "+84912345678").status == "queued"
    sent_hours_ago(db, first, "+84912345678", 25)
    with Session(db) as session:
        session.execute(update(Message).where(col(Message.id) == an.id).values(next_attempt_at=utcnow()))
        session.commit()
    dispatch(db, settings)
    assert message(db, third, "+84912345678").status == "dispatching"


def test_two_campaigns_dispatched_together_do_not_both_slip_under_the_cap(
    client: TestClient, db: Engine, settings: Settings
) -> None:
    client.patch("/v1/org", json={"frequency_cap": 1})
    one = launched(client, [["0912345678", "An"]])
    two = launched(client, [["0912345678", "An"]])
    dispatch(db, settings)
    assert sorted([message(db, one, "+84912345678").status, message(db, two, "+84912345678").status]) == [
        "dispatching",
        "queued",
    ]


def test_without_a_cap_nothing_is_held(client: TestClient, db: Engine, settings: Settings) -> None:
    one = launched(client, [["0912345678", "An"]])
    sent_hours_ago(db, one, "+84912345678", 1)
    two = launched(client, [["0912345678", "An"]])
    three = launched(client, [["0912345678", "An"]])
    dispatch(db, settings)
    assert message(db, two, "+84912345678").status == "dispatching"
    assert message(db, three, "+84912345678").status == "dispatching"
