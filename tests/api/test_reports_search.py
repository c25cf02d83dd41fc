"""Message search: across campaigns by the number in any usual form ("did 0912 345 678 get the
census SMS?"), with cursor pagination and organisation scoping; within a campaign by status,
gateway, carrier and error; each message with its timeline (queued, dispatched, submitted with
provider ids per segment, receipts with raw stat and err, retries with their errors)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from accounts.models import Role
from campaigns.dispatch import Router, dispatch_pass
from campaigns.models import Message
from campaigns.receipts import IncomingDeliver, apply_inbox, store_delivers
from campaigns.sending import Outcome, record
from gateways.config import builtin_gateways
from loa.db import transaction
from tests.api.conftest import Api, error_of, ok
from tests.factories import sms_campaign

GATEWAYS = builtin_gateways()
FORMS = ["0912 345 678", "0912.345.678", "+84 912 345 678", "84912345678", "(+84) 912-345-678", "912345678"]


def campaign_with(api: Api, numbers: list[str], name: str = "Tổng điều tra", org: str = "org-a") -> str:
    client = api.client(Role.SENDER, org=org)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign(name=name)), 201)["id"]
    people = [{"to": n, "fields": {"ten": f"Người {i}"}} for i, n in enumerate(numbers)]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": people}))
    return cid


@pytest.mark.parametrize("form", FORMS)
def test_the_number_in_any_usual_form_finds_it_across_campaigns(api: Api, form: str) -> None:
    first = campaign_with(api, ["0912345678", "0961000001"], "wave 1")
    second = campaign_with(api, ["0912345678"], "wave 2")
    campaign_with(api, ["0912345678"], "another org", org="org-b")
    found = ok(api.client(Role.OPERATOR).get("/v1/messages", params={"to": form}))
    assert [m["campaign_id"] for m in found["items"]] == [second, first]  # newest first, org-a only
    assert {m["to"] for m in found["items"]} == {"+84912345678"}
    assert found["next_cursor"] is None


def test_cursor_pagination_and_bad_input(api: Api) -> None:
    ids = [campaign_with(api, ["0912345678"], f"wave {i}") for i in range(5)]
    client = api.client(Role.OPERATOR)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"to": "0912 345 678", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = ok(client.get("/v1/messages", params=params))
        seen += [m["campaign_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    assert error_of(client.get("/v1/messages", params={"to": "12"}), 422)["code"] == "validation_error"
    assert error_of(client.get("/v1/messages", params={"to": "0912 345 678", "cursor": "%%%"}), 422)


def test_filters_within_a_campaign_and_the_timeline(api: Api) -> None:
    numbers = ["0961000001", "0961000002", "0912000003", "0901000004"]
    cid = campaign_with(api, numbers)
    client = api.client(Role.SENDER)
    ok(client.post(f"/v1/campaigns/{cid}/launch"))
    with transaction(api.engine) as session:
        batches = dispatch_pass(session, GATEWAYS, Router(GATEWAYS), batch_size=10, lease_s=60)
    by_id: dict[int, str] = {}
    for b in batches:
        outcomes = []
        for mid in b.ids:
            by_id[mid] = b.gateway
            if b.gateway == "default":
                outcomes.append(Outcome(mid, "retry", "0x58", "throttling error"))
            else:
                outcomes.append(Outcome(mid, "sent", provider_ids=[f"{mid:X}0", f"{mid:X}1"], segments=2))
        with transaction(api.engine) as session:
            record(session, outcomes, b.claim, max_attempts=5, gateway=b.gateway)
    viettel = sorted(m for m, g in by_id.items() if g == "viettel")[0]
    with transaction(api.engine) as session:
        for seg, (state, stat, err) in enumerate([(2, "DELIVRD", "000"), (5, "UNDELIV", "0B")]):
            pid = f"{viettel:X}{seg}"
            text = f"id:{pid} sub:001 dlvrd:000 submit date:2611220800 done date:2611220801 stat:{stat} err:{err}"
            store_delivers(
                session, "viettel", [IncomingDeliver("84961000001", "TCTK", 4, 0, text.encode(), pid, state)]
            )
    with transaction(api.engine) as session:
        apply_inbox(session, GATEWAYS)

    def listed(**params: str) -> list[str]:
        return [m["to"] for m in ok(client.get(f"/v1/campaigns/{cid}/messages", params=params))["items"]]

    assert listed(gateway="viettel") == ["+84961000001", "+84961000002"]
    assert listed(carrier="Vinaphone") == ["+84912000003"]
    assert listed(status="queued", error="0x58") == ["+84901000004"]
    assert listed(status="undeliverable") == ["+84961000001"]

    message = ok(client.get(f"/v1/messages/{viettel}"))
    kinds = [e["kind"] for e in message["events"]]
    assert kinds == ["queued", "dispatched", "submitted", "receipt", "receipt"]
    events = message["events"]
    assert events[1]["detail"]["gateway"] == "viettel"
    assert events[2]["detail"]["provider_ids"] == [f"{viettel:X}0", f"{viettel:X}1"]
    assert [(e["detail"]["segment"], e["detail"]["stat"], e["detail"]["err"]) for e in events[3:]] == [
        (0, "DELIVRD", "000"),
        (1, "UNDELIV", "0B"),
    ]
    assert message["status"] == "undeliverable"
    assert message["provider_message_id"] == f"{viettel:X}0;{viettel:X}1"
    retried = next(m for m, g in by_id.items() if g == "default")
    events = ok(client.get(f"/v1/messages/{retried}"))["events"]
    assert [(e["kind"], e["detail"].get("error")) for e in events] == [
        ("queued", None),
        ("dispatched", None),
        ("retry", "0x58"),
    ]
    # Sent on the next attempt: its `submitted` entry (read from the segment rows) comes last.
    with transaction(api.engine) as session:
        session.execute(update(Message).where(col(Message.id) == retried).values(next_attempt_at=None))
        [again] = dispatch_pass(session, GATEWAYS, Router(GATEWAYS), batch_size=10, lease_s=60)
    with transaction(api.engine) as session:
        record(
            session,
            [Outcome(retried, "sent", provider_ids=["CD"], segments=1)],
            again.claim,
            max_attempts=5,
            gateway=again.gateway,
        )
    events = ok(client.get(f"/v1/messages/{retried}"))["events"]
    assert [(e["kind"], e["detail"].get("provider_ids")) for e in events] == [
        ("queued", None),
        ("dispatched", None),
        ("retry", None),
        ("dispatched", None),
        ("submitted", ["CD"]),
    ]
