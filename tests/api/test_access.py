"""Keys, roles and organisations through the HTTP API: keys are random and shown once, stored as a
hash, revoked with immediate effect; each role can do its part and nothing more; every object
belongs to one organisation and is invisible (404) to the others; operators never see secrets."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text
from sqlmodel import Session, col

from accounts.models import ApiKey, AuditEntry, Role
from accounts.service import hash_key
from tests.api.conftest import Api, error_of, ok, recipients
from tests.factories import email_campaign, sms_campaign


def test_a_key_is_random_shown_once_and_stored_only_as_its_hash(api: Api) -> None:
    admin = api.client(Role.ADMIN)
    created = ok(admin.post("/v1/keys", json={"role": "sender", "name": "telecom"}), 201)
    key = created["key"]
    assert key.startswith("loa_")
    assert len(key) >= 4 + 43
    assert ok(admin.post("/v1/keys", json={"role": "sender"}), 201)["key"] != key
    listed = ok(admin.get("/v1/keys"))["items"]
    assert all("key" not in item for item in listed)
    assert key not in json.dumps(listed)
    with Session(api.engine) as session:
        record = session.get(ApiKey, created["id"])
        assert record is not None
        assert record.key_hash == hash_key(key)
        dump = json.dumps([list(map(str, row)) for row in session.execute(text("SELECT * FROM api_key"))])
    assert key not in dump
    assert ok(api.anonymous().get("/v1/campaigns", headers={"Authorization": f"Bearer {key}"}))["items"] == []


def test_a_revoked_key_gets_401_on_its_very_next_request(api: Api) -> None:
    admin = api.client(Role.ADMIN)
    created = ok(admin.post("/v1/keys", json={"role": "sender"}), 201)
    victim = api.anonymous()
    victim.headers["Authorization"] = f"Bearer {created['key']}"
    ok(victim.get("/v1/campaigns"))
    revoked = ok(admin.delete(f"/v1/keys/{created['id']}"))
    assert revoked["revoked_at"] is not None
    error = error_of(victim.get("/v1/campaigns"), 401)
    assert error["code"] == "unauthorized"
    assert error_of(victim.post("/v1/campaigns", json=sms_campaign()), 401)["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("header", "why"),
    [(None, "missing"), ("Bearer", "empty"), ("Basic dXNlcjpwdw==", "other scheme"), ("Bearer loa_nope", "unknown")],
)
def test_requests_without_a_valid_key_get_401_with_the_error_shape(api: Api, header: str | None, why: str) -> None:
    client = api.anonymous()
    if header is not None:
        client.headers["Authorization"] = header
    response = client.get("/v1/campaigns")
    assert error_of(response, 401)["code"] == "unauthorized", why
    assert response.headers["www-authenticate"] == "Bearer"


def test_sender_cannot_manage_keys_settings_or_read_the_audit_log(api: Api) -> None:
    sender = api.client(Role.SENDER)
    for response in (
        sender.post("/v1/keys", json={"role": "admin"}),
        sender.get("/v1/keys"),
        sender.delete(f"/v1/keys/{'key_0000000000000000'}"),
        sender.patch("/v1/org", json={"daily_quota": 10}),
        sender.get("/v1/audit"),
        sender.get("/v1/gateways"),
    ):
        error = error_of(response, 403)
        assert error["code"] == "forbidden"
        assert error["details"] == {"role": "sender", "allowed": ["admin"]}


def test_operator_reads_but_never_creates_launches_or_changes(api: Api) -> None:
    sender, operator = api.client(Role.SENDER), api.client(Role.OPERATOR)
    campaign = ok(sender.post("/v1/campaigns", json=sms_campaign()), 201)
    cid = campaign["id"]
    ok(sender.post(f"/v1/campaigns/{cid}/recipients", json=recipients(3)))
    for path in ("", f"/{cid}", f"/{cid}/preview", f"/{cid}/messages", f"/{cid}/report.csv"):
        assert operator.get(f"/v1/campaigns{path}").status_code == 200, path
    ok(operator.get("/v1/org"))
    forbidden = [
        operator.post("/v1/campaigns", json=sms_campaign()),
        operator.patch(f"/v1/campaigns/{cid}", json={"name": "x"}),
        operator.post(f"/v1/campaigns/{cid}/recipients", json=recipients(1)),
        operator.post(f"/v1/campaigns/{cid}/test", json=recipients(1)),
        operator.post(f"/v1/campaigns/{cid}/approve"),
        operator.post(f"/v1/campaigns/{cid}/clone"),
        operator.post(f"/v1/campaigns/{cid}/launch"),
        operator.post(f"/v1/campaigns/{cid}/pause"),
        operator.post(f"/v1/campaigns/{cid}/cancel"),
        operator.delete(f"/v1/campaigns/{cid}"),
        operator.post("/v1/keys", json={"role": "operator"}),
        operator.post("/v1/suppressions", json={"address": "0912345678"}),
    ]
    assert [r.status_code for r in forbidden] == [403] * len(forbidden)
    assert ok(sender.get(f"/v1/campaigns/{cid}"))["status"] == "draft"


def test_secret_fields_never_reach_any_reader(api: Api) -> None:
    sender, operator = api.client(Role.SENDER), api.client(Role.OPERATOR)
    cid = ok(sender.post("/v1/campaigns", json=email_campaign()), 201)["id"]
    units = [
        {
            "to": f"unit{i}@example.vn",
            "fields": {"don_vi": f"Đơn vị {i}", "username": f"u{i}", "password": f"Pw-{i}-zq"},
        }
        for i in range(3)
    ]
    ok(sender.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": units}))
    messages = ok(operator.get(f"/v1/campaigns/{cid}/messages"))["items"]
    seen = [
        operator.get(f"/v1/campaigns/{cid}").text,
        operator.get(f"/v1/campaigns/{cid}/preview").text,
        json.dumps(messages),
        operator.get(f"/v1/messages/{messages[0]['id']}").text,
        operator.get("/v1/messages", params={"to": "unit1@example.vn"}).text,
        operator.get(f"/v1/campaigns/{cid}/report.csv").text,
        sender.get(f"/v1/campaigns/{cid}/preview").text,
    ]
    for i in range(3):
        assert all(f"Pw-{i}-zq" not in body for body in seen)
    assert "******" in seen[1]  # the preview shows where the secret goes, masked
    assert all(m["has_secrets"] and "password" not in m["fields"] for m in messages)


def test_another_organisations_objects_answer_404(api: Api) -> None:
    mine, theirs = api.client(Role.ADMIN, org="org-a"), api.client(Role.ADMIN, org="org-b")
    cid = ok(mine.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(mine.post(f"/v1/campaigns/{cid}/recipients", json=recipients(2)))
    message_id = ok(mine.get(f"/v1/campaigns/{cid}/messages"))["items"][0]["id"]
    key_id = ok(mine.post("/v1/keys", json={"role": "operator"}), 201)["id"]
    attempts = {
        "get": theirs.get(f"/v1/campaigns/{cid}"),
        "patch": theirs.patch(f"/v1/campaigns/{cid}", json={"name": "stolen"}),
        "delete": theirs.delete(f"/v1/campaigns/{cid}"),
        "clone": theirs.post(f"/v1/campaigns/{cid}/clone", json={"recipients": "all"}),
        "launch": theirs.post(f"/v1/campaigns/{cid}/launch"),
        "approve": theirs.post(f"/v1/campaigns/{cid}/approve"),
        "cancel": theirs.post(f"/v1/campaigns/{cid}/cancel"),
        "upload": theirs.post(f"/v1/campaigns/{cid}/recipients", json=recipients(1, start=50)),
        "test": theirs.post(f"/v1/campaigns/{cid}/test", json=recipients(1)),
        "preview": theirs.get(f"/v1/campaigns/{cid}/preview"),
        "messages": theirs.get(f"/v1/campaigns/{cid}/messages"),
        "message": theirs.get(f"/v1/messages/{message_id}"),
        "report.csv": theirs.get(f"/v1/campaigns/{cid}/report.csv"),
        "report.xlsx": theirs.get(f"/v1/campaigns/{cid}/report.xlsx"),
        "revoke key": theirs.delete(f"/v1/keys/{key_id}"),
    }
    for what, response in attempts.items():
        assert error_of(response, 404)["code"] == "not_found", what
    assert ok(theirs.get("/v1/campaigns"))["items"] == []
    assert ok(theirs.get("/v1/messages", params={"to": "0961000000"}))["items"] == []
    assert ok(mine.get(f"/v1/campaigns/{cid}"))["name"] == sms_campaign()["name"]
    assert ok(mine.get(f"/v1/campaigns/{cid}"))["counts"]["total"] == 2


def test_audit_log_records_who_did_what_and_only_admins_read_it(api: Api) -> None:
    admin, sender = api.client(Role.ADMIN), api.client(Role.SENDER)
    key = ok(admin.post("/v1/keys", json={"role": "operator", "name": "ops"}), 201)
    ok(admin.delete(f"/v1/keys/{key['id']}"))
    cid = ok(sender.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(sender.post(f"/v1/campaigns/{cid}/recipients", json=recipients(2)))
    ok(sender.post(f"/v1/campaigns/{cid}/launch"))
    ok(sender.post(f"/v1/campaigns/{cid}/pause"))
    ok(sender.post(f"/v1/campaigns/{cid}/cancel"))
    assert sender.get(f"/v1/campaigns/{cid}/report.csv").status_code == 200
    ok(admin.patch("/v1/org", json={"daily_quota": 1000}))
    with Session(api.engine) as session:
        sender_key = session.scalars(select(ApiKey).where(col(ApiKey.key_hash) == hash_key(api.key(Role.SENDER)))).one()
    entries = ok(admin.get("/v1/audit", params={"limit": 1000}))["items"]
    by_action = {e["action"]: e for e in reversed(entries)}
    for action in (
        "key.create",
        "key.revoke",
        "campaign.create",
        "recipients.upload",
        "campaign.launch",
        "campaign.pause",
        "campaign.cancel",
        "report.export",
        "org.update",
    ):
        assert action in by_action, (action, sorted(by_action))
        assert by_action[action]["at"].endswith("Z")
    assert by_action["key.revoke"]["target"] == key["id"]
    assert by_action["campaign.launch"]["key_id"] == sender_key.id
    assert by_action["campaign.launch"]["target"] == cid
    assert by_action["recipients.upload"]["detail"]["accepted"] == 2
    assert by_action["org.update"]["detail"] == {"daily_quota": {"from": None, "to": 1000}}
    launches = ok(admin.get("/v1/audit", params={"action": "campaign.launch"}))["items"]
    assert [e["target"] for e in launches] == [cid]
    page = ok(admin.get("/v1/audit", params={"limit": 2}))
    rest = ok(admin.get("/v1/audit", params={"limit": 1000, "cursor": page["next_cursor"]}))["items"]
    assert [e["id"] for e in page["items"] + rest] == [e["id"] for e in entries]
    with Session(api.engine) as session:
        orgs = {e.org_id for e in session.scalars(select(AuditEntry))}
    assert len(orgs) == 1
    assert ok(api.client(Role.ADMIN, org="org-b").get("/v1/audit"))["items"][0]["action"] == "key.create"


def test_org_settings_are_read_by_any_role_and_set_by_admins(api: Api) -> None:
    admin = api.client(Role.ADMIN)
    assert ok(api.client(Role.OPERATOR).get("/v1/org"))["approval_threshold"] is None
    body = ok(admin.patch("/v1/org", json={"approval_threshold": 100, "daily_quota": 5000, "frequency_cap": 3}))
    assert (body["approval_threshold"], body["daily_quota"], body["frequency_cap"]) == (100, 5000, 3)
    assert ok(admin.patch("/v1/org", json={"daily_quota": None}))["daily_quota"] is None
    assert ok(admin.get("/v1/org"))["approval_threshold"] == 100  # left out: kept
    error = error_of(admin.patch("/v1/org", json={"daily_quota": -1}), 422)
    assert error["details"][0]["field"] == "daily_quota"
    assert error_of(admin.patch("/v1/org", json={"name": "other"}), 422)["code"] == "validation_error"
