"""Celery tasks: thin wrappers with explicit names that open sessions and call plain functions.

Arguments are ids and claim tokens only (they sit in Redis); no text, no secrets."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import redis

from campaigns.dispatch import Batch, Router, dispatch_pass
from campaigns.models import Channel
from campaigns.receipts import drain_inbox
from campaigns.scheduling import purge_retention, refresh_statistics
from campaigns.scheduling import tick as scheduler_tick
from gateways.health import down_gateways
from loa.db import transaction
from loa.timeutil import utcnow
from workers.celery_app import app
from workers.queues import DISPATCH_QUEUE, RECEIPTS_QUEUE, email_queue, sms_queue
from workers.retrying import with_db_retry
from workers.runtime import Runtime, get_runtime
from workers.send_email import email_runtime, send_email_batch
from workers.send_sms import send_sms_batch
from workers.smpp_runtime import sms_runtime
from workers.sms_journal import recover_journals

log = logging.getLogger(__name__)

# Debounce keys: many batches finishing at once ask for one dispatch pass, not hundreds. A
# second between passes was too long: a 200-TPS gateway's queue (two batches of 400) ran dry and
# its bench mean fell from 96 % to 92 % of its TPS.
KICK_TTL_MS = 200
# Receipts arriving all the time ask for one inbox drain a second: a drain costs less per receipt
# the more it applies at once (~85 us of CPU a receipt, worker and Postgres, in passes of
# thousands; 115-140 us in passes of 500). The tick and the first kick after a quiet second go at
# once.
RECEIPTS_KICK_TTL_MS = 1000
AGAIN_KEY = "loa:dispatch:again"
# Lock timeouts outlive a normal pass or tick by far, and a dead holder blocks for no longer.
DISPATCH_LOCK_S = 30
TICK_LOCK_S = 30
MAX_PASSES = 20
DISPATCH_BUDGET_S = 10.0  # well inside the lock: a second dispatcher never runs alongside
RECEIPTS_AGAIN_KEY = "loa:receipts:again"
RECEIPTS_LOCK_S = 60
RECEIPTS_BUDGET_S = 10.0


def kick(rt: Runtime, task: str, queue: str, ttl_ms: int = KICK_TTL_MS) -> None:
    try:
        if rt.redis.set(f"loa:kick:{task}", "1", nx=True, px=ttl_ms):
            app.send_task(task, queue=queue)
    except redis.RedisError:
        log.debug("kick %s skipped: redis unavailable", task)


def kick_dispatch(rt: Runtime) -> None:
    kick(rt, "loa.dispatch", DISPATCH_QUEUE)


def kick_receipts(rt: Runtime) -> None:
    kick(rt, "loa.apply_receipts", RECEIPTS_QUEUE, RECEIPTS_KICK_TTL_MS)


def enqueue(batches: list[Batch]) -> None:
    for b in batches:
        if b.channel is Channel.SMS:
            app.send_task("loa.send_sms", args=[b.gateway, b.campaign_id, b.claim, b.ids], queue=sms_queue(b.gateway))
        else:
            app.send_task(
                "loa.send_email", args=[b.gateway, b.campaign_id, b.claim, b.ids], queue=email_queue(b.gateway)
            )


def run_dispatch(rt: Runtime, max_rows: int | None = None) -> int:
    """One dispatch pass, committed before its send tasks are enqueued (so they see the rows)."""
    down = down_gateways(rt.redis, rt.gateways)  # failover marks (gateways/health.py)
    router = Router(rt.gateways, is_down=lambda name: name in down)

    def claim() -> list[Batch]:
        with transaction(rt.engine) as session:
            return dispatch_pass(
                session,
                rt.gateways,
                router,
                batch_size=rt.settings.dispatch_batch,
                lease_s=rt.settings.lease_seconds,
                max_rows=max_rows,
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
            with suppress(redis.exceptions.LockError, redis.RedisError):
                lock.release()


def dispatch_while_asked(rt: Runtime) -> int:
    """Dispatch passes under the dispatch lock, again as long as someone asked meanwhile.

    A kick that finds the lock taken leaves a note instead of being lost: batches that finished
    during a pass free room in their gateway's queue, and the next pass fills it at once rather
    than at the next tick.

    The first pass claims about one send task's rows and each further pass twice as many as the
    one before: an empty queue (a launch, a resume) gets its first batches within ~0.1 s instead
    of after the whole backlog is claimed (8,000 rows took 0.7 s, with the binds idle), and a full
    refill still takes a few passes."""
    total = 0
    try:
        with exclusive(rt, "dispatch", DISPATCH_LOCK_S) as got:
            if not got:
                rt.redis.set(AGAIN_KEY, "1", px=DISPATCH_LOCK_S * 1000)
                return 0
            started = time.monotonic()
            max_rows = rt.settings.dispatch_batch
            for _ in range(MAX_PASSES):
                rt.redis.delete(AGAIN_KEY)
                n = run_dispatch(rt, max_rows)
                total += n
                cut_short = n >= max_rows  # the pass stopped at its size: there may be more
                if not n or not (cut_short or rt.redis.exists(AGAIN_KEY)):
                    break
                if time.monotonic() - started > DISPATCH_BUDGET_S:
                    break  # past the budget, the next kick or tick goes on
                max_rows *= 2
    except redis.RedisError as exc:
        # No Redis, no broker either: nothing could be enqueued. The next tick tries again.
        log.warning("dispatch skipped: redis unavailable (%s)", exc)
    return total


@app.task(name="loa.tick", ignore_result=True)
def tick() -> dict[str, Any]:
    rt = get_runtime()
    with exclusive(rt, "tick", TICK_LOCK_S) as got:
        if not got:
            return {"skipped": True}
        timeout = timedelta(hours=rt.settings.receipt_timeout_hours)
        # Send journals of dead SMS workers, before the sweep, which then sweeps only leases that
        # ran out before `cutoff`: every in-flight claim it takes has had its journal applied.
        cutoff = utcnow()
        idle_s = min(10.0, rt.settings.lease_seconds / 3)  # idle journals too: orphans get deleted
        with suppress(redis.RedisError):
            with_db_retry(
                lambda: recover_journals(
                    rt.redis, rt.engine, max_attempts=rt.settings.max_attempts, idle_s=idle_s, now=cutoff
                )
            )

        def step() -> dict[str, Any]:
            with transaction(rt.engine) as session:
                return scheduler_tick(
                    session, timeout, max_attempts=rt.settings.max_attempts, leases_expired_before=cutoff
                )

        result: dict[str, Any] = dict(with_db_retry(step))

        def analyze() -> bool:
            with transaction(rt.engine) as session:
                return refresh_statistics(session)

        result["analyzed"] = with_db_retry(analyze)
    result["dispatched"] = dispatch_while_asked(rt)
    kick_receipts(rt)
    return result


@app.task(name="loa.dispatch", ignore_result=True)
def dispatch() -> int:
    return dispatch_while_asked(get_runtime())


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
    """Apply the receipt inbox, one task at a time, for a bounded time per task.

    One task at a time, with `campaigns.receipts.LANES` passes in flight (`drain_inbox`);
    bounded so a big inbox never holds a worker thread (and the ticks and dispatches queued behind
    it) for long: past the budget the task hands over to a fresh one at the back of the queue."""
    rt = get_runtime()
    total = 0
    more = False
    try:
        with exclusive(rt, "receipts", RECEIPTS_LOCK_S) as got:
            if not got:
                rt.redis.set(RECEIPTS_AGAIN_KEY, "1", px=RECEIPTS_LOCK_S * 1000)
                return 0
            deadline = time.monotonic() + RECEIPTS_BUDGET_S
            while not more:
                rt.redis.delete(RECEIPTS_AGAIN_KEY)
                applied, more = drain_inbox(
                    rt.engine,
                    rt.gateways,
                    budget_s=deadline - time.monotonic(),
                    retry=with_db_retry,
                )
                total += applied
                if not rt.redis.exists(RECEIPTS_AGAIN_KEY):
                    break  # else receipts were stored while the inbox drained: drain it again
    except redis.RedisError as exc:
        log.warning("receipts not applied: redis unavailable (%s); the next tick asks again", exc)
    if more:
        with suppress(Exception):  # not debounced: this hand-over must not be swallowed by a recent kick
            app.send_task("loa.apply_receipts", queue=RECEIPTS_QUEUE)
    return total


@app.task(name="loa.purge", ignore_result=True)
def purge() -> int:
    rt = get_runtime()

    def step() -> int:
        with transaction(rt.engine) as session:
            return purge_retention(session, rt.settings.retention_days)

    return with_db_retry(step)
