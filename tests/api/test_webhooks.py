"""Webhooks against a local HTTP receiver that checks the HMAC-SHA256 signature and forces retries:
registration (secret shown once, admin only), progress snapshots, the final report after the
exact recount, batched per-message status changes, retries with backoff on 5xx and timeouts,
none on 4xx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlmodel import Session, col

from accounts.models import Role
from campaigns import webhooks
from campaigns.models import Campaign, CampaignStatus, Message
from campaigns.report_models import WebhookDelivery
from loa.db import transaction
from loa.timeutil import utcnow
from tests.api.conftest import Api, error_of, ok, recipients
from tests.factories import sms_campaign
from workers.runtime import Runtime
from workers.webhook_tasks import deliver_due


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then 200); "sleep" answers too late."""

    script: list[Any] = field(default_factory=list)
    secret: str = ""
    got: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        valid = webhooks.verify(
            self.secret, handler.headers["X-Loa-Timestamp"], body, handler.headers["X-Loa-Signature"]
        )
        self.got.append(
            {
                "event": handler.headers["X-Loa-Event"],
                "delivery": handler.headers["X-Loa-Delivery"],
                "valid": valid,
                "body": json.loads(body),
                "at": time.monotonic(),
            }
        )
        answer = self.script.pop(0) if self.script else 200
        if answer == "sleep":
            time.sleep(1.0)
            answer = 200
        if not valid:
            answer = 401
        handler.send_response(answer)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec.handle(self)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/loa?token=x"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def register(api: Api, receiver: Receiver, events: list[str], **extra: Any) -> dict[str, Any]:
    hook = ok(api.client(Role.ADMIN).post("/v1/webhooks", json={"url": receiver.url, "events": events, **extra}), 201)
    receiver.secret = hook["secret"]
    return dict(hook)


def deliver_all(api: Api, settings: Any, *, rounds: int = 20, timeout: float = 5.0) -> dict[str, int]:
    """Run the sender until nothing is pending; backoff shortened to milliseconds, and due retries
    pulled forward (a test does not wait out real backoff)."""
    rt = Runtime(settings)
    totals = {"delivered": 0, "retry": 0, "failed": 0}
    try:
        with httpx.Client(timeout=timeout) as client:
            for _ in range(rounds):
                for k, v in deliver_due(rt, client=client, base_s=0.01, max_run_s=10).items():
                    totals[k] += v
                with transaction(api.engine) as session:
                    pending = session.scalars(
                        select(col(WebhookDelivery.id)).where(col(WebhookDelivery.status) == "pending")
                    ).all()
                    session.execute(
                        update(WebhookDelivery)
                        .where(col(WebhookDelivery.status) == "pending")
                        .values(next_attempt_at=utcnow())
                    )
                if not pending:
                    break
    finally:
        rt.engine.dispose()
    return totals


def test_registration_shows_the_secret_once_and_needs_an_admin(api: Api, receiver: Receiver) -> None:
    hook = register(api, receiver, ["campaign.progress", "message.status"], progress_interval_s=30)
    assert hook["secret"].startswith("whsec_")
    admin = api.client(Role.ADMIN)
    listed = ok(admin.get("/v1/webhooks"))["items"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    assert listed[0]["events"] == ["campaign.progress", "message.status"]
    assert error_of(api.client(Role.SENDER).get("/v1/webhooks"), 403)["code"] == "forbidden"
    assert error_of(api.client(Role.OPERATOR).post("/v1/webhooks", json={"url": receiver.url}), 403)
    bad = admin.post("/v1/webhooks", json={"url": "ftp://x", "events": ["campaign.progress"]})
    assert error_of(bad, 422)["details"]["field"] == "url"
    assert error_of(admin.post("/v1/webhooks", json={"url": receiver.url, "events": ["nope"]}), 422)
    assert ok(api.client(Role.ADMIN, org="org-b").get("/v1/webhooks"))["items"] == []
    assert admin.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert ok(admin.get("/v1/webhooks"))["items"] == []
    assert error_of(admin.delete(f"/v1/webhooks/{hook['id']}"), 404)["code"] == "not_found"


def test_5xx_and_timeouts_are_retried_with_backoff_and_signed_each_time(
    api: Api, receiver: Receiver, settings: Any
) -> None:
    hook = register(api, receiver, ["campaign.progress"])
    receiver.script = [500, 503, "sleep"]
    ok(api.client(Role.ADMIN).post(f"/v1/webhooks/{hook['id']}/test"), 202)
    totals = deliver_all(api, settings, timeout=0.5)
    assert totals == {"delivered": 1, "retry": 3, "failed": 0}
    assert len(receiver.got) == 4
    assert all(g["valid"] for g in receiver.got)
    assert len({g["delivery"] for g in receiver.got}) == 1  # the same delivery, retried
    assert receiver.got[0]["body"]["event"] == "webhook.test"
    deliveries = ok(api.client(Role.ADMIN).get(f"/v1/webhooks/{hook['id']}/deliveries"))["items"]
    assert [(d["status"], d["attempts"], d["last_status"]) for d in deliveries] == [("delivered", 4, 200)]


def test_4xx_is_not_retried(api: Api, receiver: Receiver, settings: Any) -> None:
    hook = register(api, receiver, ["campaign.progress"])
    receiver.script = [410]
    ok(api.client(Role.ADMIN).post(f"/v1/webhooks/{hook['id']}/test"), 202)
    assert deliver_all(api, settings) == {"delivered": 0, "retry": 0, "failed": 1}
    assert len(receiver.got) == 1
    delivery = ok(api.client(Role.ADMIN).get(f"/v1/webhooks/{hook['id']}/deliveries"))["items"][0]
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("failed", 1, 410)


def test_a_wrong_secret_fails_the_receivers_check(api: Api, receiver: Receiver, settings: Any) -> None:
    hook = register(api, receiver, ["campaign.progress"])
    receiver.secret = "not-the-secret-at-all"
    ok(api.client(Role.ADMIN).post(f"/v1/webhooks/{hook['id']}/test"), 202)
    deliver_all(api, settings)
    assert [g["valid"] for g in receiver.got] == [False]  # the receiver refused it (401): no retry


def test_progress_final_report_and_message_changes(api: Api, receiver: Receiver, settings: Any) -> None:
    register(api, receiver, ["campaign.progress", "campaign.report", "message.status"], secret="s" * 20)
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(5, tinh="Huế")))
    ok(client.post(f"/v1/campaigns/{cid}/launch"))
    with transaction(api.engine) as session:
        assert webhooks.produce_progress(session) == 1
        assert webhooks.produce_progress(session) == 0  # not again within the interval
    ok(client.post(f"/v1/campaigns/{cid}/cancel"))  # every message changes status, then it is final
    with transaction(api.engine) as session:
        assert webhooks.report_finished(session) == [cid]
        assert webhooks.report_finished(session) == []
        assert webhooks.produce_changes(session, limit=3) == 5  # in batches of 3 and 2
    deliver_all(api, settings)
    assert all(g["valid"] for g in receiver.got)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for g in receiver.got:
        by_event.setdefault(g["event"], []).append(g["body"])
    progress = by_event["campaign.progress"][0]["campaign"]
    assert (progress["id"], progress["status"], progress["counts"]["queued"]) == (cid, "running", 5)
    report = by_event["campaign.report"][0]["campaign"]
    assert (report["status"], report["counts"]["cancelled"], report["counts"]["total"]) == ("cancelled", 5, 5)
    assert report["report_csv"] == f"/v1/campaigns/{cid}/report.csv"
    assert report["stats"]["by_carrier"]["Viettel"]["cancelled"] == 5
    changes = [c for body in by_event["message.status"] for c in body["changes"]]
    assert sorted(len(body["changes"]) for body in by_event["message.status"]) == [2, 3]
    assert {(c["campaign_id"], c["status"]) for c in changes} == {(cid, "cancelled")}
    with Session(api.engine) as session:
        ids = {str(i) for i in session.scalars(select(col(Message.id)).where(col(Message.campaign_id) == cid))}
        assert session.get(Campaign, cid).status is CampaignStatus.CANCELLED  # type: ignore[union-attr]
    assert {c["message_id"] for c in changes} == ids


def test_no_feed_rows_without_a_message_webhook(api: Api, receiver: Receiver, settings: Any) -> None:
    register(api, receiver, ["campaign.report"])
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(3)))
    ok(client.post(f"/v1/campaigns/{cid}/launch"))
    ok(client.post(f"/v1/campaigns/{cid}/cancel"))
    with transaction(api.engine) as session:
        assert webhooks.produce_changes(session) == 0
        assert webhooks.produce_progress(session) == 0
        assert webhooks.report_finished(session) == [cid]
    deliver_all(api, settings)
    assert [g["event"] for g in receiver.got] == ["campaign.report"]
