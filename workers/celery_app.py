"""The Celery application and its configuration, set explicitly (see DESIGN.md "Crash safety").

The broker is Redis. Tasks are thin: they take ids, open a session and call plain functions in
`campaigns/`; nothing secret ever travels in task arguments.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from workers.queues import DISPATCH_QUEUE, RECEIPTS_QUEUE

# Longest time a reserved-but-unacknowledged task may sit before Redis redelivers it. No task
# uses a countdown/ETA anywhere near it: long waits live in the database (`next_attempt_at`).
VISIBILITY_TIMEOUT_S = 3600
TICK_INTERVAL_S = 2.0

app = Celery("loa", include=["workers.tasks"])


def broker_url(redis_url: str) -> str:
    """kombu spells a unix socket `redis+socket://`, redis-py `unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def configure(redis_url: str, *, tick_interval_s: float = TICK_INTERVAL_S) -> Celery:
    conf: dict[str, Any] = {
        "broker_url": broker_url(redis_url),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
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
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": DISPATCH_QUEUE,
        "task_routes": {
            "loa.tick": {"queue": DISPATCH_QUEUE},
            "loa.dispatch": {"queue": DISPATCH_QUEUE},
            "loa.purge": {"queue": DISPATCH_QUEUE},
            "loa.apply_receipts": {"queue": RECEIPTS_QUEUE},
        },
        "beat_schedule": {
            "loa-tick": {"task": "loa.tick", "schedule": tick_interval_s, "options": {"expires": 30}},
            "loa-purge": {"task": "loa.purge", "schedule": 3600.0, "options": {"expires": 600}},
        },
        "timezone": "UTC",
        "enable_utc": True,
    }
    app.conf.update(conf)
    return app
