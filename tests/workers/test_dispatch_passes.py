"""The dispatch task fills an empty queue in growing passes, each committed and enqueued before
the next: the first send tasks go out after about one batch is claimed, not after the whole
backlog (8,000 rows took 0.7 s with the binds idle), and the queue still ends up full."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlmodel import col

from campaigns.dispatch import Batch
from campaigns.models import CampaignStatus, Message, MessageStatus
from loa.db import transaction
from loa.settings import Settings
from tests.workers.wave_kit import seed_campaign, set_campaign
from workers import tasks
from workers.celery_app import configure
from workers.runtime import Runtime


def dispatching(engine: Engine) -> int:
    with transaction(engine) as session:
        status = col(Message.status) == MessageStatus.DISPATCHING.value
        return int(session.scalar(select(func.count()).where(status)) or 0)


def test_an_empty_queue_gets_its_first_tasks_after_one_turn_and_is_then_filled(
    db: Engine,
    redis_client: redis.Redis[bytes],
    redis_url: str,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cid = seed_campaign(db, 400)
    set_campaign(db, cid, status=CampaignStatus.RUNNING.value)
    configure(redis_url)  # the send tasks go to the test Redis
    # The built-in gateways: Viettel's has 2 binds at 500 TPS, so with batches of 10 its queue
    # holds 16 batches per bind: 320 rows.
    rt = Runtime(make_settings(dispatch_batch=10))
    passes: list[tuple[int, int]] = []  # (rows enqueued, rows claimed in the database by then)
    real_enqueue = tasks.enqueue

    def enqueue(batches: list[Batch]) -> None:
        passes.append((sum(len(b.ids) for b in batches), dispatching(db)))
        real_enqueue(batches)

    monkeypatch.setattr(tasks, "enqueue", enqueue)
    try:
        total = tasks.dispatch_while_asked(rt)
    finally:
        rt.engine.dispose()
    # One turn of a normal campaign (two batches), then passes of at least twice the last size.
    assert passes[0] == (20, 20)
    assert [n for n, _ in passes[:-1]] == [20, 20, 40, 80, 160]
    assert passes[-1][0] == 0  # the pass that found the queue full ends the task
    assert total == dispatching(db) == 320
    assert redis_client.llen("sms.viettel") == 32  # every claimed batch was enqueued
