"""Live counters: every write path (import, dispatch, send outcomes, receipts, lease sweep, pause,
suppression, cancel) keeps the per-batch deltas exact, which the exact recount confirms (it finds
nothing to correct); drift from a write that bypassed them is corrected on demand; counts by a
recipient field; concurrent batches and reconciliations never double count."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update
from sqlmodel import Session, col

from accounts.models import Role
from campaigns import counters, repository, tally
from campaigns.dispatch import Batch, Router, dispatch_pass
from campaigns.models import Message, MessageStatus
from campaigns.receipts import IncomingDeliver, apply_inbox, store_delivers
from campaigns.recipients import mark_suppressed
from campaigns.report_models import CampaignCounter
from campaigns.scheduling import sweep_expired_leases
from campaigns.sending import Outcome, record
from gateways.config import builtin_gateways
from loa.db import transaction
from tests.api.conftest import Api, error_of, ok
from tests.factories import sms_campaign

GATEWAYS = builtin_gateways()
PROVINCES = ["Hà Nội", "Huế", "Cần Thơ"]
# Viettel, Vinaphone and MobiFone (the default gateway) numbers.
PREFIXES = ["0961", "0912", "0901"]


def upload(api: Api, n: int, *, field: str | None = "province") -> str:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    people = [
        {
            "to": f"{PREFIXES[i % 3]}{i:06d}",
            "fields": {"ten": f"Người {i}", "province": PROVINCES[i % len(PROVINCES)], "note": f"=cmd{i}"},
        }
        for i in range(n)
    ]
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json={"recipients": people}))
    if field:
        ok(client.get(f"/v1/campaigns/{cid}/counts", params={"field": field}))
    ok(client.post(f"/v1/campaigns/{cid}/launch"))
    return cid


def exact(engine: Engine, cid: str) -> dict[str, Any]:
    """The oracle: grouped queries over the messages, independent of the counters."""
    with Session(engine) as session:
        status, by_gateway = repository.status_counts(session, cid)
        stats = repository.campaign_stats(session, cid)
        rows = session.execute(select(col(Message.status), col(Message.fields)).where(col(Message.campaign_id) == cid))
        by_province: dict[str, Counter[str]] = {}
        for st, fields in rows:
            by_province.setdefault(fields.get("province", ""), Counter())[str(st)] += 1
    return {"counts": status, "by_gateway": by_gateway, "stats": stats, "by_province": by_province}


def live(engine: Engine, cid: str) -> dict[str, Any]:
    with transaction(engine) as session:
        t = tally.read(session, cid)
        by_province = {
            k: Counter({s: n for s, n in v.items() if s != "total" and n}) for k, v in t.by("field:province").items()
        }
        return {
            "counts": t.counts(),
            "by_gateway": t.by(counters.GATEWAY),
            "stats": tally.stats_view(t),
            "by_province": by_province,
        }


def assert_exact(engine: Engine, cid: str, step: str) -> None:
    now, truth = live(engine, cid), exact(engine, cid)
    if not now["by_province"]:  # province is not counted in this campaign
        truth["by_province"] = {}
    assert now == truth, step
    rows = _journal_rows(engine, cid)
    with transaction(engine) as session:  # the recount finds nothing to correct: the deltas were exact
        assert counters.reconcile(session, cid) == 0, step
    assert _journal_rows(engine, cid) == rows, f"{step}: the recount appended corrections"


def _journal_rows(engine: Engine, cid: str) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).where(col(CampaignCounter.campaign_id) == cid)) or 0)


def claim_batches(engine: Engine) -> list[Batch]:
    with transaction(engine) as session:
        return dispatch_pass(session, GATEWAYS, Router(GATEWAYS), batch_size=50, lease_s=60)


def test_every_write_path_keeps_the_counters_exact(api: Api) -> None:
    engine = api.engine
    cid = upload(api, 90)
    assert_exact(engine, cid, "after import")

    batches = claim_batches(engine)
    assert {b.gateway for b in batches} == {"viettel", "vinaphone", "default"}
    assert_exact(engine, cid, "after dispatch")

    # Send outcomes: most sent (two segments each), a few failed, retried, ambiguous, not sent.
    provider: dict[int, tuple[str, list[str]]] = {}
    for b in batches:
        outcomes = []
        for i, mid in enumerate(b.ids):
            if i % 10 == 1:
                outcomes.append(Outcome(mid, "failed", "0x0B", "invalid destination"))
            elif i % 10 == 2:
                outcomes.append(Outcome(mid, "retry", "0x58", "throttled"))
            elif i % 10 == 3:
                outcomes.append(Outcome(mid, "ambiguous", "ambiguous", "no response"))
            elif i % 10 == 4:
                continue  # left dispatching: the lease sweep will find it
            else:
                ids = [f"{mid:X}A", f"{mid:X}B"]
                provider[mid] = (b.gateway, ids)
                outcomes.append(Outcome(mid, "sent", provider_ids=ids, segments=2))
        with transaction(engine) as session:
            record(session, outcomes, b.claim, max_attempts=5, gateway=b.gateway)
    assert_exact(engine, cid, "after send outcomes")

    # Receipts: one segment of each message first (no final status yet), then the other;
    # every fifth message is undeliverable.
    for seg in (0, 1):
        with transaction(engine) as session:
            for n, (_mid, (gateway, ids)) in enumerate(sorted(provider.items())):
                bad = n % 5 == 0 and seg == 1
                state, stat = (5, "UNDELIV") if bad else (2, "DELIVRD")
                err = "0B" if bad else "00"
                text = (
                    f"id:{ids[seg]} sub:001 dlvrd:001 submit date:2611220800 done date:2611220801 stat:{stat} err:{err}"
                )
                store_delivers(
                    session,
                    gateway,
                    [IncomingDeliver("84961", "TCTK", 0x04, 0, text.encode(), ids[seg], state)],
                )
        with transaction(engine) as session:
            apply_inbox(session, GATEWAYS)
        assert_exact(engine, cid, f"after receipts of segment {seg}")
    assert live(engine, cid)["counts"]["delivered"] > 0
    assert live(engine, cid)["counts"]["undeliverable"] > 0

    # The rows left dispatching: their lease runs out and the sweep requeues them.
    with transaction(engine) as session:
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == cid, col(Message.status) == MessageStatus.DISPATCHING.value)
            .values(lease_until=func.now() - timedelta(minutes=5))
        )
    with transaction(engine) as session:
        assert sum(sweep_expired_leases(session).values()) > 0
    assert_exact(engine, cid, "after the lease sweep")

    # Pause with a batch in flight, resume, an opt-out, then cancel the rest.
    claim_batches(engine)
    client = api.client(Role.SENDER)
    ok(client.post(f"/v1/campaigns/{cid}/pause"))
    assert_exact(engine, cid, "after pause")
    ok(client.post(f"/v1/campaigns/{cid}/resume"))
    with Session(engine) as session:
        queued = session.scalars(
            select(col(Message.to)).where(col(Message.campaign_id) == cid, col(Message.status) == "queued")
        ).first()
    assert queued is not None
    with transaction(engine) as session:
        mark_suppressed(session, api.engine and _org(engine, cid), queued, "opt-out reply")
    assert_exact(engine, cid, "after an opt-out")
    ok(client.post(f"/v1/campaigns/{cid}/cancel"))
    assert_exact(engine, cid, "after cancel")
    view = ok(client.get(f"/v1/campaigns/{cid}"))
    assert view["counts"]["suppressed"] == 1
    assert view["counts"]["cancelled"] > 0
    assert view["stats"]["segments"] == exact(engine, cid)["stats"]["segments"] > 90
    assert view["stats"]["by_error"]["0x0B"] > 0


def _org(engine: Engine, cid: str) -> str:
    with Session(engine) as session:
        from campaigns.models import Campaign

        campaign = session.get(Campaign, cid)
        assert campaign is not None
        return campaign.org_id


def test_a_write_that_bypassed_the_counters_is_corrected_on_demand(api: Api) -> None:
    engine = api.engine
    cid = upload(api, 12, field=None)
    client = api.client(Role.OPERATOR)
    assert ok(client.get(f"/v1/campaigns/{cid}"))["counts"]["queued"] == 12
    with transaction(engine) as session:  # behind the counters' back
        first = session.scalars(select(col(Message.id)).where(col(Message.campaign_id) == cid)).first()
        session.execute(update(Message).where(col(Message.id) == first).values(status="delivered"))
        session.execute(
            insert(Message), [{"campaign_id": cid, "to": "+84961999999", "carrier": "Viettel", "fields": {}}]
        )
    stale = ok(client.get(f"/v1/campaigns/{cid}"))["counts"]
    assert (stale["queued"], stale["delivered"], stale["total"]) == (12, 0, 12)
    fixed = ok(client.post(f"/v1/campaigns/{cid}/counts/reconcile"))
    assert fixed["corrected"] == 1  # net: one more delivered (one queued gone, one new queued)
    assert (fixed["counts"]["queued"], fixed["counts"]["delivered"], fixed["counts"]["total"]) == (12, 1, 13)
    assert ok(client.get(f"/v1/campaigns/{cid}"))["counts"] == fixed["counts"]
    assert ok(client.post(f"/v1/campaigns/{cid}/counts/reconcile"))["corrected"] == 0


def test_counts_by_a_recipient_field(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tally, "MAX_FIELD_VALUES", 20)
    cid = upload(api, 30, field=None)
    client = api.client(Role.OPERATOR)
    body = ok(client.get(f"/v1/campaigns/{cid}/counts", params={"field": "province"}))
    assert body["fields_counted"] == ["province"]
    assert {k: v["total"] for k, v in body["by_field"]["province"].items()} == dict.fromkeys(PROVINCES, 10)
    assert body["by_carrier"]["Viettel"]["queued"] == 10
    assert body["progress"] == {"total": 30, "pending": 30, "awaiting_receipt": 0, "done": 0, "percent": 0.0}
    # Asking again changes nothing; the field stays counted for later reads.
    again = ok(client.get(f"/v1/campaigns/{cid}/counts"))
    assert again["by_field"] == body["by_field"]
    # A field with a value per recipient is refused, and so are secret and unknown fields.
    assert "different values" in error_of(client.get(f"/v1/campaigns/{cid}/counts?field=ten"), 422)["message"]
    assert error_of(client.get(f"/v1/campaigns/{cid}/counts?field=nope"), 422)["details"]["field"] == "field"
    other = api.client(Role.OPERATOR, org="org-b")
    assert error_of(other.get(f"/v1/campaigns/{cid}/counts"), 404)["code"] == "not_found"


def test_sent_and_delivered_per_minute(api: Api) -> None:
    engine = api.engine
    cid = upload(api, 6, field=None)
    batches = claim_batches(engine)
    for b in batches:
        with transaction(engine) as session:
            record(session, [Outcome(m, "sent", provider_ids=[f"{m:X}"]) for m in b.ids], b.claim, max_attempts=5)
    series = ok(api.client(Role.OPERATOR).get(f"/v1/campaigns/{cid}/counts"))["per_minute"]
    assert sum(p["sent"] for p in series) == 6
    assert all(p["minute"].endswith(":00Z") for p in series)
    assert_exact(engine, cid, "after sending")


def test_concurrent_batches_and_reconciliations_never_double_count(api: Api) -> None:
    engine = api.engine
    cid = upload(api, 300)
    batches = claim_batches(engine) + claim_batches(engine) + claim_batches(engine)
    assert sum(len(b.ids) for b in batches) == 300
    errors: list[BaseException] = []
    stop = threading.Event()

    def send(b: Batch) -> None:
        try:
            for start in range(0, len(b.ids), 10):  # slice by slice, as the SMS worker records
                part = b.ids[start : start + 10]
                with transaction(engine) as session:
                    record(
                        session, [Outcome(m, "sent", provider_ids=[f"{m:X}"]) for m in part], b.claim, max_attempts=5
                    )
        except BaseException as exc:
            errors.append(exc)

    drifts: list[int] = []

    def recount() -> None:
        # Each recount runs while batches commit around it: with exact deltas and one snapshot
        # for the count and the journal, it must never find anything to correct.
        try:
            while not stop.is_set():
                with transaction(engine) as session:
                    drifts.append(counters.reconcile(session, cid))
                with transaction(engine) as session:
                    counters.compact(session, cid)
        except BaseException as exc:
            errors.append(exc)

    checker = threading.Thread(target=recount)
    checker.start()
    workers = [threading.Thread(target=send, args=(b,)) for b in batches]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    checker.join()
    assert not errors, errors
    assert drifts, "the recount never ran"
    assert set(drifts) == {0}, drifts
    assert live(engine, cid)["counts"]["sent"] == 300
    assert_exact(engine, cid, "after concurrent batches")


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.SENDER, Role.ADMIN])
def test_every_role_reads_counts(api: Api, role: Role) -> None:
    cid = upload(api, 3, field=None)
    assert ok(api.client(role).get(f"/v1/campaigns/{cid}/counts"))["counts"]["total"] == 3
