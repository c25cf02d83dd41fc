"""The Celery application and its configuration, set explicitly (see DESIGN.md "Crash safety").

The broker is Redis. Tasks are thin: they take ids, open a session and call plain functions in
`campaigns/`; nothing secret ever travels in task arguments.

Beat runs :class:`LeaderScheduler`: any number of `loa scheduler` processes may run (on several
hosts, for availability), and only the one holding a Redis lease sends ticks; the others stand by
and one of them takes over within `LEADER_TTL_S` when the leader dies. The tick task takes its own
Redis lock as well, and every step of it is a conditional update, so even two ticks do no harm.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

import redis
from celery import Celery
from celery.beat import Scheduler
from celery.worker.consumer import Consumer

from gateways.leases import RELEASE_IF_OWNER_LUA, RENEW_IF_OWNER_LUA
from workers.queues import DISPATCH_QUEUE, RECEIPTS_QUEUE

log = logging.getLogger(__name__)

# Kombu's ack emulation (an `unacked` hash in Redis, redelivered after the visibility timeout)
# is off. The database already makes good every task lost with a worker: the rows it claimed
# return to the queue when their lease runs out, within minutes, where a redelivery would come
# after the visibility timeout with a claim long gone. And with it on, a worker acknowledging a
# task over a connection Redis dropped (a Redis restart) crashes inside kombu and shuts down.
# Reserved tasks still go back to the queue on a clean shutdown (acks_late). The visibility
# timeout stays set for anyone who turns emulation back on; no task waits in the broker anyway
# (no countdown, no ETA: long waits live in the database as `next_attempt_at`).
ACK_EMULATION = False
VISIBILITY_TIMEOUT_S = 3600
TICK_INTERVAL_S = 2.0
# Ticks are cheap and idempotent: one that waited longer than this in a queue is dropped.
TICK_EXPIRES_S = 30

LEADER_KEY = "loa:scheduler:leader"
LEADER_TTL_S = 10.0
REDIS_URL_CONF = "loa_redis_url"

app = Celery("loa", include=["workers.tasks", "workers.report_tasks", "workers.webhook_tasks"])


def broker_url(redis_url: str) -> str:
    """kombu spells a unix socket `redis+socket://`, redis-py `unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def configure(redis_url: str, *, tick_interval_s: float = TICK_INTERVAL_S) -> Celery:
    conf: dict[str, Any] = {
        REDIS_URL_CONF: redis_url,
        "broker_url": broker_url(redis_url),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            "ack_emulation": ACK_EMULATION,
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
        },
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,
        # The threads pool cannot cancel a running task anyway; a send task that outlives a broker
        # outage finishes its batch, and its claim-checked writes make a redelivered copy harmless.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": DISPATCH_QUEUE,
        "task_routes": {
            "loa.tick": {"queue": DISPATCH_QUEUE},
            "loa.dispatch": {"queue": DISPATCH_QUEUE},
            "loa.purge": {"queue": DISPATCH_QUEUE},
            "loa.apply_receipts": {"queue": RECEIPTS_QUEUE},
        },
        "worker_consumer": f"{__name__}:ResilientConsumer",
        "beat_scheduler": f"{__name__}:LeaderScheduler",
        "beat_max_loop_interval": max(0.2, min(tick_interval_s, LEADER_TTL_S / 4)),
        "beat_schedule": {
            "loa-tick": {"task": "loa.tick", "schedule": tick_interval_s, "options": {"expires": TICK_EXPIRES_S}},
            "loa-purge": {"task": "loa.purge", "schedule": 3600.0, "options": {"expires": 600}},
            "loa-reports": {  # counters upkeep, final reports, webhooks (workers/report_tasks.py)
                "task": "loa.reports.upkeep",
                "schedule": max(1.0, tick_interval_s * 2.5),
                "options": {"expires": 30, "queue": RECEIPTS_QUEUE},
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }
    app.conf.update(conf)
    return app


class LeaderLease:
    """A Redis lease naming the one scheduler allowed to send ticks.

    Renewed every ttl/5 while held, so a live leader never loses it; a dead one's lease runs out
    within ttl and a standby takes over. Two leaders at once could only happen around a Redis
    wipe, and ticks are idempotent anyway."""

    def __init__(self, client: redis.Redis[bytes], owner: str, ttl_s: float = LEADER_TTL_S) -> None:
        self.client, self.owner, self.ttl_s = client, owner, ttl_s
        self._held = False
        self._checked = False
        self._renewed_at = 0.0
        # Renewed and released only while the key still names us: a lease that expired and went to
        # another scheduler must not be taken back by a late renew.
        self._renew = client.register_script(RENEW_IF_OWNER_LUA)
        self._release = client.register_script(RELEASE_IF_OWNER_LUA)

    def is_leader(self) -> bool:
        now = time.monotonic()
        if self._held and now - self._renewed_at < self.ttl_s / 5:
            return True  # renewed moments ago: no Redis round trip on every beat loop
        ttl_ms = int(self.ttl_s * 1000)
        try:
            held = bool(self.client.set(LEADER_KEY, self.owner, nx=True, px=ttl_ms)) or bool(
                self._renew(keys=[LEADER_KEY], args=[self.owner, ttl_ms])
            )
        except redis.RedisError as exc:
            log.warning("scheduler lease: redis unavailable (%s)", exc)
            held = False
        if held != self._held or not self._checked:
            log.info("scheduler %s: %s", self.owner, "leading (sending ticks)" if held else "standing by")
        self._held, self._checked = held, True
        if held:
            self._renewed_at = now
        return held

    def release(self) -> None:
        if self._held:
            try:
                self._release(keys=[LEADER_KEY], args=[self.owner])
            except redis.RedisError:
                log.debug("scheduler lease not released: redis unavailable")
        self._held = False


def scheduler_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LeaderScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat's in-memory scheduler, sending only while it holds the leader lease.

    In memory on purpose: the schedule is two intervals, nothing worth a file, and two beats on
    one host must not fight over a shelve file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        url = str(self.app.conf.get(REDIS_URL_CONF) or "")
        client: redis.Redis[bytes] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.lease = LeaderLease(client, scheduler_owner())

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.lease.is_leader():
            return min(1.0, float(self.max_interval))
        return float(super().tick(*args, **kwargs))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.lease.release()


class ResilientConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, surviving a failure while it tears down a broken broker connection.

    When Redis goes away mid-run, Celery 5.7 closes the broken connection before reconnecting;
    that close may try to re-queue unacknowledged messages through a transport it has already
    released and raise (an AttributeError inside kombu), which Celery treats as unrecoverable:
    the whole worker shut down, SMPP sessions with it. Nothing is lost by carrying on instead:
    Redis is gone anyway, and the lease sweep gives the rows of lost tasks back to the queue."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except Exception as cleanup:  # the reconnect that follows is what matters
            log.warning("broker connection cleanup failed (%r); reconnecting anyway", cleanup)
            self.connection = None
