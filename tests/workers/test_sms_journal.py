"""The send journal in real Redis and its recovery on the real database: after a worker died, what
the SMSC accepted is recorded as sent, what was about to go is resent as ambiguous, and what was
never about to go is re-queued plainly (not counted). Journals of live batches are left alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import redis
from sqlalchemy import Engine, select, update
from sqlmodel import col

from campaigns.models import Message, SmsSegment
from campaigns.scheduling import sweep_expired_leases
from campaigns.sending import begin_submit, load_batch
from gateways.smpp.client import Submit, SubmitResult
from gateways.smpp.simulator import Account, SimulatorConfig, run_in_thread
from loa.db import transaction
from loa.settings import Settings
from loa.timeutil import utcnow
from tests.campaigns.test_scheduling import GATEWAYS, dispatch, running
from tests.workers.sms_kit import Gw
from tests.workers.wave_kit import seed_campaign
from workers.runtime import Runtime
from workers.send_sms import send_sms_batch
from workers.smpp_runtime import GatewaySessions
from workers.sms_journal import Intents, SendJournal, journal_key, recover_journals


def claimed(engine: Engine, n: int, claim: str, *, lease_s: float) -> list[int]:
    """n messages claimed by `claim` and marked in flight, as a send task leaves them."""
    cid = seed_campaign(engine, n, tag=claim)
    with transaction(engine) as session:
        ids = sorted(
            int(i or 0) for i in session.scalars(select(col(Message.id)).where(col(Message.campaign_id) == cid))
        )
        session.execute(
            update(Message).where(col(Message.id).in_(ids)).values(status="dispatching", claim=claim, gateway="gw")
        )
        begin_submit(session, ids, claim, 60)
        session.execute(
            update(Message).where(col(Message.id).in_(ids)).values(lease_until=utcnow() + timedelta(seconds=lease_s))
        )
    return ids


def rows(engine: Engine, ids: list[int]) -> dict[int, tuple[str, int, str | None]]:
    with engine.connect() as conn:
        result = conn.execute(
            select(
                col(Message.id), col(Message.status), col(Message.ambiguous_resends), col(Message.provider_ids)
            ).where(col(Message.id).in_(ids))
        )
        return {int(i): (str(getattr(s, "value", s)), int(a), p) for i, s, a, p in result}


def test_recovery_records_the_accepted_resends_the_maybe_sent_and_requeues_the_rest(
    db: Engine, redis_client: redis.Redis[bytes]
) -> None:
    ids = claimed(db, 30, "deadbeef", lease_s=-5)  # its lease already ran out: the worker died
    journal = SendJournal(redis_client, ttl_s=600)
    key = journal_key("gw", "deadbeef")
    journal.open(key)
    journal.intend(key, ids[:10])
    journal.intend(key, ids[10:20])
    for mid in ids[:8]:
        journal.accepted(key, mid, 0, 1, f"P{mid}")
    journal.accepted(key, ids[8], 0, 2, "HALF")  # one segment of two: maybe sent
    journal.flush()
    journal.close()

    totals = recover_journals(redis_client, db, max_attempts=5, idle_s=0)
    assert totals == {"sent": 8, "ambiguous": 12, "unsent": 10}
    assert not redis_client.exists(key)
    with transaction(db) as session:
        swept = sweep_expired_leases(session, max_attempts=5)
    assert swept == {"requeued": 10, "ambiguous": 12, "failed": 0}

    after = rows(db, ids)
    assert {mid: after[mid] for mid in ids[:8]} == {mid: ("sent", 0, f"P{mid}") for mid in ids[:8]}
    assert {after[mid] for mid in ids[8:20]} == {("queued", 1, None)}
    assert {after[mid] for mid in ids[20:]} == {("queued", 0, None)}
    with db.connect() as conn:
        segments = conn.execute(select(col(SmsSegment.message_id), col(SmsSegment.provider_id))).all()
    assert sorted(segments) == sorted((mid, f"P{mid}") for mid in ids[:8])


def test_journals_of_live_or_finished_batches_are_left_alone_or_dropped(
    db: Engine, redis_client: redis.Redis[bytes]
) -> None:
    live = claimed(db, 5, "live0001", lease_s=60)
    journal = SendJournal(redis_client, ttl_s=600)
    live_key, done_key = journal_key("gw", "live0001"), journal_key("gw", "gone0001")
    journal.open(live_key)
    journal.intend(live_key, live)
    journal.open(done_key)  # its batch finished (no row holds the claim) but the delete was lost
    journal.close()

    assert recover_journals(redis_client, db, max_attempts=5, idle_s=0) == {"sent": 0, "ambiguous": 0, "unsent": 0}
    assert redis_client.exists(live_key)
    assert not redis_client.exists(done_key)
    assert {r[0] for r in rows(db, live).values()} == {"dispatching"}
    # Not idle and its lease still running: not even looked at.
    assert recover_journals(redis_client, db, max_attempts=5, idle_s=3600)["ambiguous"] == 0
    assert redis_client.exists(live_key)


def test_a_redelivered_task_leaves_the_dead_workers_journal_to_recovery(
    db: Engine, redis_client: redis.Redis[bytes], make_settings: Callable[..., Settings]
) -> None:
    """Celery hands a killed worker's task to another worker. That one finds the rows in flight
    and sends nothing; the journal is the only record of what the SMSC accepted, and deleting it
    made the sweep resend all of them (130 duplicates in a kill -9 run)."""
    cid = running(db, 20)
    batch = dispatch(db)[0]
    rt = Runtime(make_settings())
    journal = SendJournal(redis_client, ttl_s=600)
    key = journal_key(batch.gateway, batch.claim)
    # The first worker: opens its journal, loads and marks the batch, submits ten, six accepted.
    assert journal.open(key) is True
    with transaction(db) as session:
        load_batch(session, rt.box, cid, batch.ids, batch.claim, inflight_lease_s=60)
    journal.intend(key, batch.ids[:10])
    for mid in batch.ids[:6]:
        journal.accepted(key, mid, 0, 1, f"P{mid}")
    journal.flush()
    # ... is killed; the redelivered task runs on a live worker.
    gateway = next(g for g in GATEWAYS.smpp if g.name == batch.gateway)
    sessions = GatewaySessions(gateway, rt, lambda _g, _on: None, lambda: None, "redelivery", journal)
    try:
        assert send_sms_batch(rt, sessions, cid, batch.claim, batch.ids) == {}
    finally:
        journal.close()
        rt.engine.dispose()
    assert redis_client.exists(key)

    with transaction(db) as session:  # the dead worker's lease runs out
        session.execute(update(Message).where(col(Message.id).in_(batch.ids)).values(lease_until=utcnow()))
    totals = recover_journals(redis_client, db, max_attempts=5, idle_s=0)
    assert totals == {"sent": 6, "ambiguous": 4, "unsent": len(batch.ids) - 10}
    assert {mid: status for mid, (status, _, _) in rows(db, batch.ids[:6]).items()} == dict.fromkeys(
        batch.ids[:6], "sent"
    )


def test_a_journal_written_moments_before_its_lease_ran_out_is_recovered_before_the_sweep(
    db: Engine, redis_client: redis.Redis[bytes]
) -> None:
    """Recovery finds the journals of expired in-flight claims through the database, not only by
    idle time: a journal touched less than `idle_s` ago (a late acceptance, or the redelivered
    task reopening it) was skipped, and the sweep resent its accepted messages as ambiguous."""
    ids = claimed(db, 10, "fresh001", lease_s=-1)
    journal = SendJournal(redis_client, ttl_s=600)
    key = journal_key("gw", "fresh001")
    journal.open(key)
    journal.intend(key, ids)
    for mid in ids[:7]:
        journal.accepted(key, mid, 0, 1, f"P{mid}")
    journal.flush()
    journal.close()

    with transaction(db) as session:  # a sweep cut off before these leases ran out leaves them
        assert sweep_expired_leases(session, max_attempts=5, expired_before=utcnow() - timedelta(seconds=30)) == {}
    cutoff = utcnow()
    totals = recover_journals(redis_client, db, max_attempts=5, idle_s=3600, now=cutoff)  # not idle at all
    assert totals == {"sent": 7, "ambiguous": 3, "unsent": 0}
    with transaction(db) as session:
        swept = sweep_expired_leases(session, max_attempts=5, expired_before=cutoff)
    assert swept == {"requeued": 0, "ambiguous": 3, "failed": 0}
    assert {rows(db, ids)[mid][0] for mid in ids[:7]} == {"sent"}


def test_forget_deletes_after_the_entries_written_before_it(redis_client: redis.Redis[bytes]) -> None:
    journal = SendJournal(redis_client, ttl_s=600)
    key = journal_key("gw", "c")
    journal.open(key)
    for i in range(500):
        journal.accepted(key, i, 0, 1, "X")
    journal.forget(key)
    journal.close()
    assert not redis_client.exists(key), "an acceptance written after the delete revived the journal"


def test_intents_go_out_a_group_ahead_and_a_halt_stops_within_two_groups(redis_client: redis.Redis[bytes]) -> None:
    journal = SendJournal(redis_client, ttl_s=600)
    key, halt = journal_key("gw", "ahead"), "loa:test:halt"
    journal.open(key)
    intents = Intents(journal, key, [halt])
    try:
        assert intents.before([1, 2], [3, 4]) is False
        journal.flush()
        # Before group 1 is written, its intent is in Redis, and so is group 2's.
        assert redis_client.lrange(key, 0, -1) == [b"h", b"i 1 2", b"i 3 4"]
        redis_client.set(halt, 1)  # paused while group 1 is on the wire
        assert intents.before([3, 4], [5, 6]) is False  # group 2's check went out before the halt
        assert intents.before([5, 6], []) is True
        # Without stop keys the first answer is the list's length, not a halt.
        assert Intents(journal, journal_key("gw", "nostop"), []).before([7], []) is False
    finally:
        journal.close()


def test_every_acceptance_read_is_in_redis_before_the_next_submit_is_written(
    redis_client: redis.Redis[bytes], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """What bounds the duplicates a kill -9 can cause to the window: submits in flight plus
    acceptances not yet journaled never exceed it."""
    gw = Gw("jr", carriers=["Viettel"], window=4)
    config = SimulatorConfig(port=0, accounts=[Account(gw.name, gw.password)], receipts=False, response_delay_s=0.005)
    with run_in_thread(config) as smsc:
        (tmp_path / "gw.toml").write_text(gw.toml(smsc.port))
        rt = Runtime(make_settings(gateways_file=tmp_path / "gw.toml"))
        journal = SendJournal(redis_client, ttl_s=600)
        key = journal_key(gw.name, "bound")
        journal.open(key)
        read: list[int] = []  # acceptances handed to the journal, as the reader thread reads them
        checks: list[tuple[int, int]] = []
        write_accepted = journal.write_accepted

        def in_redis() -> int:
            return sum(1 for e in redis_client.lrange(key, 0, -1) if e.startswith(b"s "))

        def write_and_check() -> None:
            seen = len(read)
            write_accepted()
            deadline = time.monotonic() + (2.0 if all(a <= b for a, b in checks) else 0.0)
            while in_redis() < seen and time.monotonic() < deadline:
                time.sleep(0.001)  # written, maybe not yet executed by Redis
            checks.append((seen, in_redis()))

        journal.write_accepted = write_and_check  # type: ignore[method-assign]

        def on_result(i: int, j: int, result: SubmitResult) -> None:
            journal.accepted(key, i, j, 1, result.provider_id or "")
            read.append(i)

        sessions = GatewaySessions(rt.gateways.smpp[0], rt, lambda _g, _on: None, lambda: None, "bound", journal)
        sessions.start()
        try:
            assert sessions.wait_bound(10)
            messages = [[Submit((i, 0), "TCTK", f"8496{i:07d}", b"hi", data_coding=0)] for i in range(40)]
            results = sessions.send(messages, [("smpp:jr", 10_000.0)], on_result=on_result)
        finally:
            sessions.stop()
            journal.close()
            rt.engine.dispose()
    assert all(r.provider_id for res in results for r in res)
    assert len(checks) == 40, "the sender did not write the acceptances before each submit"
    assert [written >= seen for seen, written in checks] == [True] * 40, checks
    assert max(seen for seen, _ in checks) >= 30  # responses did come back during the batch
