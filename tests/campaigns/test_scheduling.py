"""The scheduler tick and the send bookkeeping on a real database: due starts, windows, deadline
expiry, lease sweep (honest ambiguous counts), retries through `next_attempt_at`, max attempts,
completion with the receipt timeout, and the claim rules that keep a late task from undoing the
work of the claim that followed it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlmodel import col

from campaigns import counters
from campaigns.dispatch import Batch, Router, dispatch_pass
from campaigns.models import Campaign, CampaignStatus, Message, MessageEvent, MessageStatus, Priority
from campaigns.scheduling import complete_finished, sweep_expired_leases, tick
from campaigns.sending import Outcome, begin_submit, inflight_claim, load_batch, record, release
from gateways.config import GatewaysConfig, builtin_gateways
from loa.crypto import SecretBox
from loa.db import transaction
from loa.timeutil import utcnow
from tests.workers.wave_kit import campaign_row, counts, seed_campaign, set_campaign

HOURS_48 = timedelta(hours=48)
SECRET = "test-secret-key-0123456789"
GATEWAYS = builtin_gateways()


def dispatch(engine: Engine, batch_size: int = 50) -> list[Batch]:
    with transaction(engine) as session:
        return dispatch_pass(session, GATEWAYS, Router(GATEWAYS), batch_size=batch_size, lease_s=60)


def run_tick(engine: Engine, **kwargs: Any) -> dict[str, Any]:
    with transaction(engine) as session:
        return tick(session, kwargs.pop("timeout", HOURS_48), **kwargs)


def running(engine: Engine, n: int, **kwargs: Any) -> str:
    cid = seed_campaign(engine, n, **kwargs)
    set_campaign(engine, cid, status=CampaignStatus.RUNNING.value)
    return cid


def rows(engine: Engine, cid: str) -> list[Message]:
    with transaction(engine) as session:
        return list(session.scalars(select(Message).where(col(Message.campaign_id) == cid).order_by(col(Message.id))))


def set_messages(engine: Engine, ids: list[int], **values: Any) -> None:
    with transaction(engine) as session:
        session.execute(update(Message).where(col(Message.id).in_(ids)).values(**values))


def window_around(now: datetime, start_h: float, end_h: float) -> dict[str, str]:
    """A window in UTC from `start_h` to `end_h` hours from now (may wrap midnight)."""
    start, end = now + timedelta(hours=start_h), now + timedelta(hours=end_h)
    return {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "tz": "UTC"}


def test_start_due_starts_only_campaigns_whose_time_came(db: Engine) -> None:
    due = seed_campaign(db, 1, tag="due", start_at=utcnow() - timedelta(seconds=1))
    later = seed_campaign(db, 1, tag="later", start_at=utcnow() + timedelta(hours=1))
    set_campaign(db, due, status=CampaignStatus.SCHEDULED.value)
    set_campaign(db, later, status=CampaignStatus.SCHEDULED.value)
    assert run_tick(db)["started"] == 1
    assert campaign_row(db, due).status is CampaignStatus.RUNNING
    assert campaign_row(db, later).status is CampaignStatus.SCHEDULED
    assert run_tick(db)["started"] == 0  # a second tick does no harm


def test_outside_its_window_a_campaign_stays_running_and_is_not_dispatched(db: Engine) -> None:
    now = datetime.now(UTC)
    cid = running(db, 10, window=window_around(now, 2, 3))
    run_tick(db)
    campaign = campaign_row(db, cid)
    assert campaign.status is CampaignStatus.RUNNING
    assert campaign.waiting_for_window is True
    assert dispatch(db) == []
    # The window opens (an operator widened it; the clock would do the same): dispatch resumes.
    set_campaign(db, cid, window=window_around(now, -1, 2))
    assert run_tick(db)["windows"] == 1
    assert campaign_row(db, cid).waiting_for_window is False
    assert sum(len(b.ids) for b in dispatch(db)) == 10


def test_a_gateway_at_its_backlog_cap_takes_no_room_from_another(db: Engine) -> None:
    # Backlog caps with batches of 10: 4 s of TPS (at least 2 batches), "slow" 20 and "fast" 40.
    common: dict[str, Any] = {"host": "127.0.0.1", "port": 2775, "binds": 1}
    gateways = GatewaysConfig.model_validate(
        {
            "smpp": [
                {**common, "name": "slow", "system_id": "s", "password": "p", "tps": 5, "carriers": ["Viettel"]},
                {**common, "name": "fast", "system_id": "f", "password": "p", "tps": 10, "carriers": ["Vinaphone"]},
            ]
        }
    )
    slow = running(db, 100, tag="s", priority=Priority.HIGH)  # first in every pass, wants 40 a pass
    fast = running(db, 100, tag="f", prefix="+8491", carrier="Vinaphone")
    with transaction(db) as session:  # the kit seeds without counting: start from exact counters
        counters.reconcile(session, slow)
        counters.reconcile(session, fast)
    for _ in range(3):
        with transaction(db) as session:
            dispatch_pass(session, gateways, Router(gateways), batch_size=10, lease_s=60)
    # Before, "slow" was filled past its cap on the room of "fast", which then got nothing.
    assert counts(db, slow) == {"dispatching": 20, "queued": 80}
    assert counts(db, fast) == {"dispatching": 40, "queued": 60}
    back = [m for m in rows(db, slow) if m.status is MessageStatus.QUEUED]
    assert all(m.claim is None and m.lease_until is None and m.gateway is None for m in back)
    with transaction(db) as session:
        dispatched = set(
            session.scalars(select(col(MessageEvent.message_id)).where(col(MessageEvent.kind) == "dispatched"))
        )
        assert not dispatched & {m.id for m in back}
        assert counters.reconcile(session, slow) == 0  # the live counters never saw the rows given back
        assert counters.reconcile(session, fast) == 0


def test_a_send_task_holds_at_most_two_seconds_of_its_gateways_tps(db: Engine) -> None:
    """Batches of 50 asked for: "slow" (10 TPS) gets tasks of 20 and a queue of 40 (4 s), so an
    urgent campaign never waits behind two big batches there; "fast" gets the 50 asked for."""
    common: dict[str, Any] = {"host": "127.0.0.1", "port": 2775, "binds": 1}
    gateways = GatewaysConfig.model_validate(
        {
            "smpp": [
                {**common, "name": "slow", "system_id": "s", "password": "p", "tps": 10, "carriers": ["Viettel"]},
                {**common, "name": "fast", "system_id": "f", "password": "p", "tps": 1000, "carriers": ["Vinaphone"]},
            ]
        }
    )
    running(db, 100, tag="s")
    running(db, 100, tag="f", prefix="+8491", carrier="Vinaphone")
    with transaction(db) as session:
        batches = dispatch_pass(session, gateways, Router(gateways), batch_size=50, lease_s=60)
    sizes = {g: sorted(len(b.ids) for b in batches if b.gateway == g) for g in ("slow", "fast")}
    assert sizes == {"slow": [20, 20], "fast": [50, 50]}


def test_deadline_expires_what_is_queued_and_leaves_what_is_in_flight(db: Engine) -> None:
    cid = running(db, 6, deadline=utcnow() + timedelta(hours=1))
    dispatched = dispatch(db, batch_size=1)  # one message per batch
    batches, back = dispatched[:2], dispatched[2:]
    with transaction(db) as session:  # 2 in flight, 4 queued again
        for b in back:
            release(session, b.ids, b.claim)
    ids = [i for b in batches for i in b.ids]
    set_campaign(db, cid, deadline=utcnow() - timedelta(seconds=1))
    assert run_tick(db)["expired"] == 4
    c = counts(db, cid)
    assert c == {"expired": 4, "dispatching": 2}
    expired = [m for m in rows(db, cid) if m.status is MessageStatus.EXPIRED]
    assert all(m.error_code == "deadline" for m in expired)
    # The in-flight pair is sent after all; the campaign then completes once receipts came.
    for b in batches:
        with transaction(db) as session:
            record(session, [Outcome(i, "sent", provider_ids=[f"p{i}"]) for i in b.ids], b.claim, max_attempts=5)
    set_messages(db, ids, status=MessageStatus.DELIVERED.value)
    assert run_tick(db)["completed"] == 1


def test_the_sweep_counts_only_submits_under_way_as_ambiguous(db: Engine) -> None:
    cid = running(db, 6)
    batch = dispatch(db)[0]
    with transaction(db) as session:
        assert begin_submit(session, batch.ids[:2], batch.claim, 60) == set(batch.ids[:2])
    set_messages(db, batch.ids, lease_until=utcnow() - timedelta(seconds=1))
    result = run_tick(db)
    assert result["swept"] == 6
    by_id = {m.id: m for m in rows(db, cid)}
    assert all(m.status is MessageStatus.QUEUED and m.claim is None for m in by_id.values())
    assert [by_id[i].ambiguous_resends for i in batch.ids] == [1, 1, 0, 0, 0, 0]
    assert [by_id[i].attempts for i in batch.ids] == [1, 1, 0, 0, 0, 0]
    with transaction(db) as session:
        swept = session.scalars(
            select(col(MessageEvent.detail)).where(
                col(MessageEvent.message_id).in_(batch.ids), col(MessageEvent.kind) == "lease_expired"
            )
        )
        assert sorted(d["in_flight"] for d in swept) == [False] * 4 + [True] * 2


def test_the_in_flight_mark_renews_only_a_lease_short_of_two_thirds(db: Engine) -> None:
    running(db, 5)
    batch = dispatch(db)[0]
    fresh, short = batch.ids[:2], batch.ids[2:]
    kept = utcnow() + timedelta(seconds=50)  # more than two thirds of 60 s left: kept as it is
    set_messages(db, fresh, lease_until=kept)
    set_messages(db, short[:2], lease_until=utcnow() + timedelta(seconds=30))
    set_messages(db, short[2:], lease_until=None)  # never left without one (the sweep needs it)
    before = utcnow()
    with transaction(db) as session:
        assert begin_submit(session, batch.ids, batch.claim, 60) == set(batch.ids)
    leases = {m.id: m.lease_until for m in rows(db, batch.campaign_id)}
    assert all(leases[i] == kept for i in fresh)
    assert all(leases[i] is not None and leases[i] >= before + timedelta(seconds=60) for i in short)


def test_the_in_flight_mark_is_a_hot_update_on_postgres(db: Engine) -> None:
    """No indexed column changes, and migration 0007 leaves room on the page: no index entries."""
    if db.dialect.name != "postgresql":
        pytest.skip("HOT updates are Postgres's (LOA_TEST_DATABASE_URL)")
    running(db, 20)
    batch = dispatch(db)[0]
    # This backend's counts not yet sent to the statistics collector, this transaction's included.
    counts_now = text(
        "SELECT pg_stat_get_xact_tuples_updated('message'::regclass),"
        " pg_stat_get_xact_tuples_hot_updated('message'::regclass)"
    )
    with transaction(db) as session:
        updated, hot = session.execute(counts_now).one()
        loaded = load_batch(session, SecretBox(SECRET), batch.campaign_id, batch.ids, batch.claim, inflight_lease_s=60)
        updated_after, hot_after = session.execute(counts_now).one()
    assert len(loaded.messages) == 20
    assert (updated_after - updated, hot_after - hot) == (20, 20)


def test_the_sweep_fails_in_flight_rows_out_of_attempts_or_held_by_policy(db: Engine) -> None:
    resend = running(db, 2, tag="r")
    hold = running(db, 1, tag="h", prefix="+8497", options={"ambiguous": "hold"})
    claimed = dispatch(db)
    for b in claimed:
        with transaction(db) as session:
            begin_submit(session, b.ids, b.claim, 60)
    first, second = [m.id for m in rows(db, resend)]
    set_messages(db, [first], attempts=4)  # the sweep uses the fifth and last attempt
    for b in claimed:
        set_messages(db, b.ids, lease_until=utcnow() - timedelta(seconds=1))
    with transaction(db) as session:
        assert sweep_expired_leases(session, max_attempts=5) == {"requeued": 0, "ambiguous": 1, "failed": 2}
    by_id = {m.id: m for m in rows(db, resend) + rows(db, hold)}
    assert by_id[first].status is MessageStatus.FAILED
    assert by_id[first].error_code == "ambiguous"
    assert by_id[second].status is MessageStatus.QUEUED
    assert by_id[second].ambiguous_resends == 1
    assert rows(db, hold)[0].status is MessageStatus.FAILED


def test_a_late_task_cannot_undo_the_claim_that_followed_it(db: Engine) -> None:
    cid = running(db, 3)
    old = dispatch(db)[0]
    # The old worker stalled past its lease: swept, claimed again by a new dispatch.
    set_messages(db, old.ids, lease_until=utcnow() - timedelta(seconds=1))
    run_tick(db)
    new = dispatch(db)[0]
    assert new.ids == old.ids
    assert new.claim != old.claim
    a, b, c = old.ids
    with transaction(db) as session:
        applied = record(
            session,
            [
                Outcome(a, "not_sent"),
                Outcome(b, "retry", "0x14", "queue full"),
                Outcome(c, "sent", provider_ids=["X1"]),
            ],
            old.claim,
            max_attempts=5,
            gateway="viettel",
        )
    # Only the carrier's "accepted" is taken from the old task: it is the truth.
    assert applied == {"sent": 1}
    by_id = {m.id: m for m in rows(db, cid)}
    assert by_id[a].status is MessageStatus.DISPATCHING
    assert by_id[a].claim == new.claim
    assert by_id[b].status is MessageStatus.DISPATCHING
    assert by_id[b].claim == new.claim
    assert by_id[c].status is MessageStatus.SENT
    assert by_id[c].provider_ids == "X1"
    # The new task's mark finds `c` gone: it never submits it a second time.
    with transaction(db) as session:
        assert begin_submit(session, new.ids, new.claim, 60) == {a, b}


def test_a_submit_accepted_during_a_cancel_is_recorded_as_sent(db: Engine) -> None:
    cid = running(db, 2)
    batch = dispatch(db)[0]
    with transaction(db) as session:
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == cid)
            .values(status=MessageStatus.CANCELLED.value, claim=None)
        )
        applied = record(
            session,
            [Outcome(batch.ids[0], "sent", provider_ids=["A"]), Outcome(batch.ids[1], "not_sent")],
            batch.claim,
            max_attempts=5,
        )
    assert applied == {"sent": 1}
    assert counts(db, cid) == {"sent": 1, "cancelled": 1}


def test_retries_wait_in_the_database_and_end_failed_with_the_last_error(db: Engine) -> None:
    cid = running(db, 2)
    batch = dispatch(db)[0]
    a, b = batch.ids
    set_messages(db, [b], attempts=2)
    with transaction(db) as session:
        applied = record(
            session,
            [Outcome(a, "retry", "0x58", "throttled"), Outcome(b, "retry", "0x14", "message queue full")],
            batch.claim,
            max_attempts=3,
        )
    assert applied == {"retry": 1, "failed": 1}
    by_id = {m.id: m for m in rows(db, cid)}
    assert by_id[b].status is MessageStatus.FAILED
    assert (by_id[b].error_code, by_id[b].error_text, by_id[b].attempts) == ("0x14", "message queue full", 3)
    waiting = by_id[a]
    assert waiting.status is MessageStatus.QUEUED
    assert waiting.attempts == 1
    assert waiting.next_attempt_at is not None
    wait_s = (waiting.next_attempt_at.replace(tzinfo=UTC) - utcnow()).total_seconds()
    assert 20 < wait_s <= 30
    assert dispatch(db) == []  # not before its time
    assert run_tick(db)["completed"] == 0  # a message waiting for a retry keeps the campaign running
    set_messages(db, [a], next_attempt_at=utcnow() - timedelta(seconds=1))
    assert [bt.ids for bt in dispatch(db)] == [[a]]


def test_completion_waits_for_receipts_until_the_receipt_timeout(db: Engine) -> None:
    cid = running(db, 3)
    batch = dispatch(db)[0]
    with transaction(db) as session:
        record(session, [Outcome(i, "sent", provider_ids=[f"p{i}"]) for i in batch.ids], batch.claim, max_attempts=5)
    set_messages(db, batch.ids[:2], status=MessageStatus.DELIVERED.value)
    with transaction(db) as session:
        assert complete_finished(session, HOURS_48) == []  # one SMS still awaits its receipt
    set_messages(db, batch.ids[2:], submitted_at=utcnow() - timedelta(hours=49))
    with transaction(db) as session:
        assert complete_finished(session, HOURS_48) == [cid]
    campaign: Campaign = campaign_row(db, cid)
    assert campaign.status is CampaignStatus.COMPLETED
    assert campaign.finished_at is not None
    flagged = [m.no_receipt for m in rows(db, cid)]
    assert flagged == [False, False, True]
    assert counts(db, cid) == {"delivered": 2, "sent": 1}  # it keeps `sent`


def test_paused_campaigns_are_neither_dispatched_nor_completed(db: Engine) -> None:
    cid = seed_campaign(db, 2)
    set_campaign(db, cid, status=CampaignStatus.PAUSED.value)
    assert dispatch(db) == []
    run_tick(db)
    assert campaign_row(db, cid).status is CampaignStatus.PAUSED


def test_a_redelivered_send_task_leaves_rows_already_in_flight_alone(db: Engine) -> None:
    """A worker killed mid-batch leaves its rows in flight; Celery hands the task to another
    worker, which must not submit them again (the journal and the sweep decide about them)."""
    cid = running(db, 4)
    batch = dispatch(db)[0]
    box = SecretBox(SECRET)
    with transaction(db) as session:  # the first worker loads and marks the batch, then dies
        first = load_batch(session, box, cid, batch.ids, batch.claim, inflight_lease_s=60)
    assert [m.id for m in first.messages] == batch.ids
    with transaction(db) as session:  # the redelivered task
        again = load_batch(session, box, cid, batch.ids, batch.claim, inflight_lease_s=60)
    assert again.messages == []
    assert all(m.claim == inflight_claim(batch.claim) for m in rows(db, cid))
