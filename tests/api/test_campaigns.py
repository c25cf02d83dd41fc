"""The campaign lifecycle through the HTTP API: the state machine (409 naming the current
status), listing, editing and deleting drafts, cloning (all or undelivered recipients), launch
rules (no recipients, deadline, missing secrets) and the schedule fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update
from sqlmodel import Session, col

from accounts.models import Role
from campaigns.models import Campaign, Message, MessageStatus
from tests.api.conftest import Api, error_of, ok, recipients
from tests.factories import email_campaign, sms_campaign


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _set_status(api: Api, campaign_id: str, statuses: list[MessageStatus]) -> None:
    """Give the campaign's messages these statuses, in id order (what workers would have done)."""
    with Session(api.engine) as session:
        ids = list(
            session.scalars(
                select(col(Message.id)).where(col(Message.campaign_id) == campaign_id).order_by(col(Message.id))
            )
        )
        for mid, status in zip(ids, statuses, strict=False):
            values: dict[str, object] = {"status": status.value}
            if status is not MessageStatus.QUEUED:
                values["secrets"] = None  # final messages lose their secrets
            session.execute(update(Message).where(col(Message.id) == mid).values(**values))
        session.commit()


def test_the_state_machine_answers_409_naming_the_current_status(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    for action in ("pause", "resume"):
        error = error_of(client.post(f"/v1/campaigns/{cid}/{action}"), 409)
        assert error["code"] == "invalid_transition"
        assert error["details"]["status"] == "draft"
        assert "draft" in error["message"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(3)))
    assert ok(client.post(f"/v1/campaigns/{cid}/launch"))["status"] == "running"
    steps = [
        ("launch", 409, "running"),
        ("resume", 409, "running"),
        ("pause", 200, "paused"),
        ("pause", 409, "paused"),
        ("launch", 409, "paused"),
        ("resume", 200, "running"),
        ("cancel", 200, "cancelled"),
        ("resume", 409, "cancelled"),
        ("cancel", 409, "cancelled"),
        ("launch", 409, "cancelled"),
    ]
    for action, status, campaign_status in steps:
        response = client.post(f"/v1/campaigns/{cid}/{action}")
        if status == 200:
            assert ok(response)["status"] == campaign_status, action
        else:
            assert error_of(response, 409)["details"]["status"] == campaign_status, action
    assert error_of(client.patch(f"/v1/campaigns/{cid}", json={"name": "x"}), 409)["details"]["status"] == "cancelled"
    assert error_of(client.delete(f"/v1/campaigns/{cid}"), 409)["details"]["status"] == "cancelled"
    final = ok(client.get(f"/v1/campaigns/{cid}"))
    assert final["counts"]["cancelled"] == 3 == final["counts"]["total"]
    assert final["finished_at"] is not None


def test_a_future_start_is_kept_through_launch_pause_and_resume(api: Api) -> None:
    client = api.client(Role.SENDER)
    later = datetime.now(UTC) + timedelta(hours=2)
    body = sms_campaign(schedule={"start_at": _iso(later), "deadline": _iso(later + timedelta(days=1))})
    cid = ok(client.post("/v1/campaigns", json=body), 201)["id"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(2)))
    launched = ok(client.post(f"/v1/campaigns/{cid}/launch"))
    assert launched["status"] == "scheduled"
    assert launched["schedule"]["start_at"] == _iso(later.replace(microsecond=0))
    assert ok(client.post(f"/v1/campaigns/{cid}/pause"))["status"] == "paused"
    assert ok(client.post(f"/v1/campaigns/{cid}/resume"))["status"] == "scheduled"


def test_launch_outside_the_send_window_runs_and_waits_for_it(api: Api) -> None:
    client = api.client(Role.SENDER)
    now = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))
    start, end = (now + timedelta(hours=2)).strftime("%H:%M"), (now + timedelta(hours=3)).strftime("%H:%M")
    cid = ok(client.post("/v1/campaigns", json=sms_campaign(schedule={"window": {"start": start, "end": end}})), 201)[
        "id"
    ]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(1)))
    launched = ok(client.post(f"/v1/campaigns/{cid}/launch"))
    assert launched["status"] == "running"
    assert launched["waiting_for_window"] is True
    assert launched["schedule"]["window"] == {"start": start, "end": end, "tz": "Asia/Ho_Chi_Minh"}


def test_launch_with_nothing_to_send_answers_409(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    error = error_of(client.post(f"/v1/campaigns/{cid}/launch"), 409)
    assert error["code"] == "no_recipients"
    assert "upload" in error["message"]
    ok(client.post("/v1/suppressions", json={"address": "0961000000"}), 201)
    upload = ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(1)))
    assert upload["suppressed"] == 1
    error = error_of(client.post(f"/v1/campaigns/{cid}/launch"), 409)
    assert error["code"] == "no_recipients"
    assert error["details"] == {"status": "draft", "recipients": 1, "sendable": 0}
    assert ok(client.get(f"/v1/campaigns/{cid}"))["status"] == "draft"


def test_launch_after_the_deadline_answers_409(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(1)))
    with Session(api.engine) as session:  # a draft whose deadline passed while it waited
        session.execute(
            update(Campaign).where(col(Campaign.id) == cid).values(deadline=datetime.now(UTC) - timedelta(minutes=1))
        )
        session.commit()
    assert error_of(client.post(f"/v1/campaigns/{cid}/launch"), 409)["code"] == "deadline_passed"


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"deadline": "2020-01-01T00:00:00Z"}, "schedule.deadline"),
        ({"start_at": "2030-01-02T00:00:00Z", "deadline": "2030-01-01T00:00:00Z"}, "schedule"),
        ({"start_at": "2030-01-02T08:00:00"}, "schedule.start_at"),
        ({"window": {"start": "7:00", "end": "22:00"}}, "schedule.window.start"),
        ({"window": {"start": "07:00", "end": "24:00"}}, "schedule.window.end"),
        ({"window": {"start": "07:00", "end": "07:00"}}, "schedule.window"),
        ({"window": {"start": "07:00", "end": "22:00", "tz": "Asia"}}, "schedule.window.tz"),
        ({"window": {"start": "07:00", "end": "22:00", "tz": "Mars/Olympus"}}, "schedule.window.tz"),
    ],
)
def test_invalid_schedules_answer_422_naming_the_field(api: Api, schedule: dict[str, object], field: str) -> None:
    error = error_of(api.client(Role.SENDER).post("/v1/campaigns", json=sms_campaign(schedule=schedule)), 422)
    fields = (
        [d["field"] for d in error["details"]] if isinstance(error["details"], list) else [error["details"]["field"]]
    )
    assert field in fields, error


def test_schedule_is_stored_in_utc_with_the_default_time_zone(api: Api) -> None:
    body = sms_campaign(
        schedule={
            "start_at": "2031-04-01T07:00:00+07:00",
            "deadline": "2031-04-08T22:00:00+07:00",
            "window": {"start": "07:00", "end": "22:00"},
        },
        rate_limit=50,
        priority="high",
    )
    campaign = ok(api.client(Role.SENDER).post("/v1/campaigns", json=body), 201)
    assert campaign["schedule"] == {
        "start_at": "2031-04-01T00:00:00Z",
        "deadline": "2031-04-08T15:00:00Z",
        "window": {"start": "07:00", "end": "22:00", "tz": "Asia/Ho_Chi_Minh"},
    }
    assert (campaign["rate_limit"], campaign["priority"]) == (50, "high")


def test_list_is_newest_first_paginated_and_filtered(api: Api) -> None:
    client = api.client(Role.SENDER)
    ids = [ok(client.post("/v1/campaigns", json=sms_campaign(name=f"c{i}")), 201)["id"] for i in range(5)]
    ok(client.post(f"/v1/campaigns/{ids[0]}/cancel"))
    first = ok(client.get("/v1/campaigns", params={"limit": 2}))
    second = ok(client.get("/v1/campaigns", params={"limit": 2, "cursor": first["next_cursor"]}))
    third = ok(client.get("/v1/campaigns", params={"limit": 2, "cursor": second["next_cursor"]}))
    assert [c["id"] for c in first["items"] + second["items"] + third["items"]] == ids[::-1]
    assert third["next_cursor"] is None
    assert [c["id"] for c in ok(client.get("/v1/campaigns", params={"status": "cancelled"}))["items"]] == [ids[0]]
    assert error_of(client.get("/v1/campaigns", params={"cursor": "W10"}), 422)["details"] == {"field": "cursor"}
    assert error_of(client.get("/v1/campaigns", params={"status": "nope"}), 422)["code"] == "validation_error"


def test_drafts_are_edited_partially_and_deleted(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign(rate_limit=10)), 201)["id"]
    edited = ok(client.patch(f"/v1/campaigns/{cid}", json={"name": "Wave 1 (final)", "rate_limit": None}))
    assert (edited["name"], edited["rate_limit"], edited["sender"]) == ("Wave 1 (final)", None, "TCTK")
    error = error_of(client.patch(f"/v1/campaigns/{cid}", json={"name": None}), 422)
    assert error["details"][0]["field"] == "name"
    assert error_of(client.patch(f"/v1/campaigns/{cid}", json={"sender": "TONGCUCTHONGKE"}), 422)["details"] == {
        "field": "sender"
    }
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(2)))
    error = error_of(client.patch(f"/v1/campaigns/{cid}", json={"secret_fields": ["ten"]}), 409)
    assert error["code"] == "recipients_uploaded"
    error = error_of(client.patch(f"/v1/campaigns/{cid}", json={"template": {"body": "Chào {{ tinh }}"}}), 422)
    assert error["code"] == "unknown_placeholder"
    assert "{{ tinh }}" in error["message"]
    assert ok(client.get(f"/v1/campaigns/{cid}"))["template"]["body"] == sms_campaign()["template"]["body"]
    assert client.delete(f"/v1/campaigns/{cid}").status_code == 204
    assert error_of(client.get(f"/v1/campaigns/{cid}"), 404)["code"] == "not_found"
    with Session(api.engine) as session:
        assert session.scalar(select(func.count()).where(col(Message.campaign_id) == cid)) == 0


def test_clone_copies_settings_and_all_or_the_undelivered_recipients(api: Api) -> None:
    client = api.client(Role.SENDER)
    window = {"start": "07:00", "end": "22:00", "tz": "Asia/Ho_Chi_Minh"}
    source = ok(client.post("/v1/campaigns", json=sms_campaign(schedule={"window": window}, rate_limit=20)), 201)
    cid = source["id"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(8, tinh="Huế")))
    ok(client.post(f"/v1/campaigns/{cid}/launch"))
    statuses = [
        MessageStatus.DELIVERED,
        MessageStatus.DELIVERED,
        MessageStatus.SENT,
        MessageStatus.UNDELIVERABLE,
        MessageStatus.EXPIRED,
        MessageStatus.FAILED,
        MessageStatus.REJECTED,
        MessageStatus.QUEUED,
    ]
    _set_status(api, cid, statuses)
    bare = ok(client.post(f"/v1/campaigns/{cid}/clone"), 201)
    assert (bare["status"], bare["name"], bare["counts"]["total"]) == ("draft", "Census wave 1 (copy)", 0)
    assert (bare["schedule"]["window"], bare["rate_limit"], bare["template"]) == (window, 20, source["template"])
    every = ok(client.post(f"/v1/campaigns/{cid}/clone", json={"name": "again", "recipients": "all"}), 201)
    assert every["counts"]["queued"] == 8 == every["counts"]["total"]
    wave2 = ok(client.post(f"/v1/campaigns/{cid}/clone", json={"name": "wave 2", "recipients": "undelivered"}), 201)
    assert wave2["counts"]["queued"] == 5 == wave2["counts"]["total"]
    assert wave2["fields"] == ["ten", "tinh"]
    got = {m["to"]: m for m in ok(client.get(f"/v1/campaigns/{wave2['id']}/messages"))["items"]}
    assert sorted(got) == [f"+84961{i:06d}" for i in range(3, 8)]
    assert got["+84961000003"]["fields"] == {"ten": "Người 3", "tinh": "Huế"}
    assert ok(client.get(f"/v1/campaigns/{cid}"))["counts"]["total"] == 8  # the source is untouched
    assert ok(client.post(f"/v1/campaigns/{wave2['id']}/launch"))["status"] == "running"


def test_a_clone_whose_secrets_were_deleted_refuses_to_launch(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=email_campaign()), 201)["id"]
    units = [
        {"to": f"unit{i}@example.vn", "fields": {"don_vi": f"Đơn vị {i}", "username": f"u{i}", "password": f"p{i}"}}
        for i in range(2)
    ]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": units}))
    ok(client.post(f"/v1/campaigns/{cid}/launch"))
    _set_status(api, cid, [MessageStatus.BOUNCED, MessageStatus.SENT])
    clone = ok(client.post(f"/v1/campaigns/{cid}/clone", json={"recipients": "undelivered"}), 201)
    assert clone["counts"]["queued"] == 1
    error = error_of(client.post(f"/v1/campaigns/{clone['id']}/launch"), 409)
    assert error["code"] == "missing_secrets"
    assert error["details"] == {"recipients": 1, "fields": ["password"]}
