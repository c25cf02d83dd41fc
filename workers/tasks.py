"""Celery tasks: thin wrappers with explicit names that open sessions and call plain functions.

Arguments are ids and claim tokens only (they sit in Redis); no text, no secrets."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import redis

from campaigns.dispatch import Batch, Router, dispatch_pass
from campaigns.models import Channel
from campaigns.receipts import apply_inbox
from campaigns.scheduling import purge_retention
from campaigns.scheduling import tick as scheduler_tick
from loa.db import transaction
from workers.celery_app import app
from workers.queues import DISPATCH_QUEUE, RECEIPTS_QUEUE, email_queue, sms_queue
from workers.retrying import with_db_retry
from workers.runtime import Runtime, get_runtime
from workers.send_email import email_runtime, send_email_batch
from workers.send_sms import send_sms_batch
from workers.smpp_runtime import DOWN_KEY, sms_runtime

log = logging.getLogger(__name__)

# Debounce keys: many batches finishing at once ask for one dispatch pass, not hundreds.
KICK_TTL_MS = 200


def kick(rt: Runtime, task: str, queue: str) -> None:
    try:
        if rt.redis.set(f"loa:kick:{task}", "1", nx=True, px=KICK_TTL_MS):
            app.send_task(task, queue=queue)
    except redis.RedisError:
        log.debug("kick %s skipped: redis unavailable", task)


def kick_dispatch(rt: Runtime) -> None:
    kick(rt, "loa.dispatch", DISPATCH_QUEUE)


def kick_receipts(rt: Runtime) -> None:
    kick(rt, "loa.apply_receipts", RECEIPTS_QUEUE)


def enqueue(batches: list[Batch]) -> None:
    for b in batches:
        if b.channel is Channel.SMS:
            app.send_task("loa.send_sms", args=[b.gateway, b.campaign_id, b.claim, b.ids], queue=sms_queue(b.gateway))
        else:
            app.send_task(
                "loa.send_email", args=[b.gateway, b.campaign_id, b.claim, b.ids], queue=email_queue(b.gateway)
            )


def run_dispatch(rt: Runtime) -> int:
    """One dispatch pass, committed before its send tasks are enqueued (so they see the rows)."""
    router = Router(rt.gateways, is_down=lambda name: bool(rt.redis.exists(DOWN_KEY.format(name))))

    def claim() -> list[Batch]:
        with transaction(rt.engine) as session:
            return dispatch_pass(
                session, rt.gateways, router, batch_size=rt.settings.dispatch_batch, lease_s=rt.settings.lease_seconds
            )

    batches = with_db_retry(claim)
    enqueue(batches)
    return sum(len(b.ids) for b in batches)


@contextmanager
def exclusive(rt: Runtime, name: str, timeout: int) -> Iterator[bool]:
    """A non-blocking Redis lock: a second scheduler (or an overlapping run) just does nothing."""
    lock = rt.redis.lock(f"loa:lock:{name}", timeout=timeout, blocking=False)
    got = bool(lock.acquire(blocking=False))
    try:
        yield got
    finally:
        if got:
            with suppress(redis.exceptions.LockError):
                lock.release()


@app.task(name="loa.tick", ignore_result=True)
def tick() -> dict[str, Any]:
    rt = get_runtime()
    with exclusive(rt, "tick", 30) as got:
        if not got:
            return {"skipped": True}
        timeout = timedelta(hours=rt.settings.receipt_timeout_hours)

        def step() -> dict[str, int]:
            with transaction(rt.engine) as session:
                return scheduler_tick(session, timeout)

        result: dict[str, Any] = dict(with_db_retry(step))
        result["dispatched"] = run_dispatch(rt)
        kick_receipts(rt)
        return result


@app.task(name="loa.dispatch", ignore_result=True)
def dispatch() -> int:
    rt = get_runtime()
    with exclusive(rt, "dispatch", 60) as got:
        return run_dispatch(rt) if got else 0


@app.task(name="loa.send_sms", ignore_result=True)
def send_sms(gateway: str, campaign_id: str, claim: str, ids: list[int]) -> dict[str, int]:
    rt = get_runtime()
    runtime = sms_runtime()
    sessions = runtime.gateways.get(gateway) if runtime else None
    if sessions is None:
        # This process holds no bind for the gateway (it should not consume its queue): give the
        # rows back so a worker that does hold one sends them.
        from campaigns.sending import release

        with transaction(rt.engine) as session:
            release(session, ids, claim)
        kick_dispatch(rt)
        return {}
    counts = send_sms_batch(rt, sessions, campaign_id, claim, ids)
    kick_dispatch(rt)
    return counts


@app.task(name="loa.send_email", ignore_result=True)
def send_email(relay: str, campaign_id: str, claim: str, ids: list[int]) -> dict[str, int]:
    rt = get_runtime()
    relay_cfg = rt.gateways.relay_by_name()[relay]
    counts = send_email_batch(rt, email_runtime(rt), relay_cfg, campaign_id, claim, ids)
    kick_dispatch(rt)
    return counts


@app.task(name="loa.apply_receipts", ignore_result=True)
def apply_receipts() -> int:
    rt = get_runtime()
    total = 0
    while True:

        def step() -> tuple[int, int]:
            with transaction(rt.engine) as session:
                return apply_inbox(session, rt.gateways)

        applied, _parked = with_db_retry(step)
        total += applied
        if applied == 0:
            return total


@app.task(name="loa.purge", ignore_result=True)
def purge() -> int:
    rt = get_runtime()
    with transaction(rt.engine) as session:
        return purge_retention(session, rt.settings.retention_days)
