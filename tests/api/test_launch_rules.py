"""Organisation launch rules through the API: four-eyes approval above a threshold (by another
key, audited, invalidated by any change) and the daily message quota (409 with the figures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col

from accounts.models import Role
from campaigns.models import Message, MessageStatus
from tests.api.conftest import Api, error_of, ok, recipients
from tests.factories import sms_campaign


def test_four_eyes_needs_a_second_key_above_the_threshold(api: Api) -> None:
    ok(api.client(Role.ADMIN).patch("/v1/org", json={"approval_threshold": 2}))
    alice, bob = api.client(Role.SENDER, name="alice"), api.client(Role.SENDER, name="bob")
    small = ok(alice.post("/v1/campaigns", json=sms_campaign(name="small")), 201)["id"]
    ok(alice.post(f"/v1/campaigns/{small}/recipients", json=recipients(2)))
    assert ok(alice.post(f"/v1/campaigns/{small}/launch"))["status"] == "running"  # not above 2

    cid = ok(alice.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(alice.post(f"/v1/campaigns/{cid}/recipients", json=recipients(3)))
    error = error_of(alice.post(f"/v1/campaigns/{cid}/launch"), 409)
    assert error["code"] == "approval_required"
    assert error["details"] == {"recipients": 3, "approval_threshold": 2}
    assert error_of(alice.post(f"/v1/campaigns/{cid}/approve"), 409)["code"] == "same_key"
    approved = ok(bob.post(f"/v1/campaigns/{cid}/approve"))
    assert approved["approved_by"] is not None
    assert approved["approved_at"] is not None
    assert approved["status"] == "draft"

    ok(alice.post(f"/v1/campaigns/{cid}/recipients", json=recipients(1, start=100)))
    error = error_of(alice.post(f"/v1/campaigns/{cid}/launch"), 409)
    assert error["code"] == "approval_stale"
    ok(bob.post(f"/v1/campaigns/{cid}/approve"))
    edited = ok(alice.patch(f"/v1/campaigns/{cid}", json={"name": "renamed after approval"}))
    assert edited["approved_by"] is None
    assert error_of(alice.post(f"/v1/campaigns/{cid}/launch"), 409)["code"] == "approval_required"

    ok(api.client(Role.ADMIN).post(f"/v1/campaigns/{cid}/approve"))  # an admin is a second key too
    launched = ok(alice.post(f"/v1/campaigns/{cid}/launch"))
    assert launched["status"] == "running"
    assert error_of(bob.post(f"/v1/campaigns/{cid}/approve"), 409)["details"]["status"] == "running"

    log = ok(api.client(Role.ADMIN).get("/v1/audit", params={"target": cid, "limit": 100}))["items"]
    approvals = [e for e in log if e["action"] == "campaign.approve"]
    assert len(approvals) == 3
    assert approvals[-1]["detail"] == {"recipients": 3}
    launch = next(e for e in log if e["action"] == "campaign.launch")
    assert launch["detail"]["approved_by"] == approvals[0]["key_id"]


def test_the_daily_quota_stops_launches_that_would_exceed_it(api: Api) -> None:
    ok(api.client(Role.ADMIN).patch("/v1/org", json={"daily_quota": 5}))
    client = api.client(Role.SENDER)
    first = ok(client.post("/v1/campaigns", json=sms_campaign(name="first")), 201)["id"]
    ok(client.post(f"/v1/campaigns/{first}/recipients", json=recipients(3)))
    ok(client.post(f"/v1/campaigns/{first}/launch"))
    second = ok(client.post("/v1/campaigns", json=sms_campaign(name="second")), 201)["id"]
    ok(client.post(f"/v1/campaigns/{second}/recipients", json=recipients(3, start=10)))
    error = error_of(client.post(f"/v1/campaigns/{second}/launch"), 409)
    assert error["code"] == "quota_exceeded"
    assert error["details"] == {"quota": 5, "used": 3, "requested": 3, "available": 2}
    assert "daily quota" in error["message"]

    # The first campaign sends 3 (they count for 24 h) and is done; still no room for 3 more.
    with Session(api.engine) as session:
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == first)
            .values(status=MessageStatus.DELIVERED.value, submitted_at=datetime.now(UTC))
        )
        session.commit()
    ok(client.post(f"/v1/campaigns/{first}/cancel"))
    assert error_of(client.post(f"/v1/campaigns/{second}/launch"), 409)["details"]["used"] == 3

    # A day later those sends no longer count.
    with Session(api.engine) as session:
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == first)
            .values(submitted_at=datetime.now(UTC) - timedelta(hours=25))
        )
        session.commit()
    assert ok(client.post(f"/v1/campaigns/{second}/launch"))["status"] == "running"


def test_messages_of_a_cancelled_campaign_give_their_quota_back(api: Api) -> None:
    ok(api.client(Role.ADMIN).patch("/v1/org", json={"daily_quota": 4}))
    client = api.client(Role.SENDER)
    first = ok(client.post("/v1/campaigns", json=sms_campaign(name="first")), 201)["id"]
    ok(client.post(f"/v1/campaigns/{first}/recipients", json=recipients(4)))
    ok(client.post(f"/v1/campaigns/{first}/launch"))
    second = ok(client.post("/v1/campaigns", json=sms_campaign(name="second")), 201)["id"]
    ok(client.post(f"/v1/campaigns/{second}/recipients", json=recipients(4, start=10)))
    assert error_of(client.post(f"/v1/campaigns/{second}/launch"), 409)["code"] == "quota_exceeded"
    ok(client.post(f"/v1/campaigns/{first}/cancel"))  # nothing was sent: all four cancelled
    assert ok(client.post(f"/v1/campaigns/{second}/launch"))["status"] == "running"
