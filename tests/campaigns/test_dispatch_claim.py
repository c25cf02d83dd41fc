"""The dispatcher's pick cursor: each pick scans above the last id it took, and rows given back
to the queue below it (retries, sweeps, a pause) are still picked, lowest first."""

from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import Engine, text, update
from sqlmodel import col

from campaigns import dispatch, scheduling
from campaigns.dispatch import pick
from campaigns.models import Campaign, Message, MessageStatus
from campaigns.scheduling import refresh_statistics
from campaigns.sending import release
from loa.db import transaction
from tests.campaigns.test_scheduling import rows, running


def claim_ids(engine: Engine, cid: str, limit: int) -> tuple[str, list[int]]:
    """Pick and claim, as the dispatcher does for the rows it sends."""
    token = secrets.token_hex(8)
    with transaction(engine) as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        ids = [r.id for r in pick(session, campaign, limit)]
        session.execute(
            update(Message)
            .where(col(Message.id).in_(ids))
            .values(status=MessageStatus.DISPATCHING.value, claim=token, gateway="gw")
        )
        return token, ids


def test_a_pick_changes_nothing_and_a_second_pick_in_the_same_transaction_sees_the_same_rows(db: Engine) -> None:
    """Rows picked and not claimed (their gateway had no room) stay queued, untouched."""
    cid = running(db, 6)
    ids = [m.id for m in rows(db, cid)]
    with transaction(db) as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        assert [r.id for r in pick(session, campaign, 4)] == ids[:4]
        dispatch._claim_cursor[cid] = (0, time.monotonic())
        assert [r.id for r in pick(session, campaign, 4)] == ids[:4]
    assert {m.status for m in rows(db, cid)} == {MessageStatus.QUEUED}
    _, above = claim_ids(db, cid, 10)  # the cursor sits at ids[3]: the rest, then the bottom again
    assert above == ids


def test_claims_go_up_and_take_back_what_was_given_back_below(db: Engine) -> None:
    cid = running(db, 10)
    ids = [m.id for m in rows(db, cid)]
    first_token, first = claim_ids(db, cid, 4)
    assert first == ids[:4]
    _, second = claim_ids(db, cid, 4)
    assert second == ids[4:8]
    with transaction(db) as session:  # a retry of the first batch goes back below the cursor
        release(session, first[:2], first_token)
    _, third = claim_ids(db, cid, 4)  # two above the cursor, then the lowest again
    assert third == sorted([*ids[8:10], *first[:2]])
    _, rest = claim_ids(db, cid, 4)
    assert rest == []


def test_rows_below_the_cursor_wait_at_most_the_rescan_interval(db: Engine) -> None:
    cid = running(db, 12)
    ids = [m.id for m in rows(db, cid)]
    token, first = claim_ids(db, cid, 2)
    with transaction(db) as session:
        release(session, first, token)
    _, next_up = claim_ids(db, cid, 2)  # rows above the cursor come first while there are enough
    assert next_up == ids[2:4]
    after, _ = dispatch._claim_cursor[cid]
    dispatch._claim_cursor[cid] = (after, 0.0)  # as if the last scan from the bottom were long ago
    _, rescanned = claim_ids(db, cid, 2)
    assert rescanned == first


def test_statistics_are_refreshed_after_enough_changes_and_not_again_at_once(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.dialect.name != "postgresql":
        with transaction(db) as session:
            assert refresh_statistics(session) is False
        return
    monkeypatch.setattr(scheduling, "ANALYZE_AFTER_ROWS", 5)
    monkeypatch.setattr(scheduling, "ANALYZE_EVERY_S", 0)  # other tests' workers may have analyzed
    changed = text("SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relid = 'message'::regclass")
    # ANALYZE writes its count straight to shared statistics; row changes reach them late (a backend
    # flushes its pending counts up to ~10 s after the fact), so n_mod_since_analyze may grow again.
    analyzed = text("SELECT analyze_count FROM pg_stat_user_tables WHERE relid = 'message'::regclass")

    def wait_for_changes(n: int) -> None:
        deadline = time.monotonic() + 15  # a backend flushes its counts within ~10 s
        while True:
            with transaction(db) as session:
                if (session.scalar(changed) or 0) >= n or time.monotonic() > deadline:
                    return
            time.sleep(0.2)

    running(db, 20)
    wait_for_changes(20)
    with transaction(db) as session:
        before = session.scalar(analyzed)
        assert refresh_statistics(session) is True
    with transaction(db) as session:
        assert session.scalar(analyzed) == before + 1
    monkeypatch.setattr(scheduling, "ANALYZE_EVERY_S", 60)
    running(db, 20)
    wait_for_changes(20)
    with transaction(db) as session:
        assert refresh_statistics(session) is False  # enough changes, but analyzed a moment ago
