"""Check-tests that pin the crash-safety wiring: Celery's delivery settings, no countdown or ETA
that would park a task in the broker (long waits live in the database; a delay longer than the
visibility timeout would even be redelivered again and again), beat's leader scheduler, the
consumer that survives a Redis restart, and the database retry that backs off on dropped
connections without logging data."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from celery.worker.consumer import Consumer
from sqlalchemy.exc import IntegrityError, OperationalError

from workers.celery_app import TICK_EXPIRES_S, VISIBILITY_TIMEOUT_S, ResilientConsumer, configure
from workers.retrying import with_db_retry

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("loa", "accounts", "campaigns", "gateways", "workers", "api")
# Keywords that delay a Celery task in the broker, and the longest delay tolerated: a few seconds
# of back-off at most, far below the visibility timeout. Anything longer belongs in next_attempt_at.
DELAYING = {"countdown", "eta", "default_retry_delay", "retry_backoff_max"}
MAX_BROKER_DELAY_S = 60


def test_celery_acknowledges_late_and_redelivers_what_a_dead_worker_held(redis_url: str) -> None:
    conf = configure(redis_url).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert conf.broker_transport_options["ack_emulation"] is False  # the lease sweep redelivers
    assert conf.beat_scheduler.endswith(":LeaderScheduler")
    assert conf.worker_consumer.endswith(":ResilientConsumer")
    for name, entry in conf.beat_schedule.items():
        expires = entry.get("options", {}).get("expires")
        assert expires is not None, f"beat entry {name} never expires: a backlog of ticks would pile up"
        assert expires < VISIBILITY_TIMEOUT_S
    assert TICK_EXPIRES_S < VISIBILITY_TIMEOUT_S
    assert MAX_BROKER_DELAY_S < VISIBILITY_TIMEOUT_S


def _delaying_keywords(tree: ast.AST) -> list[tuple[int, str, ast.expr]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found.extend((node.lineno, kw.arg, kw.value) for kw in node.keywords if kw.arg in DELAYING)
    return found


def test_no_countdown_or_eta_parks_a_task_in_the_broker() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, keyword, value in _delaying_keywords(ast.parse(path.read_text(), str(path))):
                where = f"{path.relative_to(ROOT)}:{line} {keyword}="
                if not isinstance(value, ast.Constant) or not isinstance(value.value, int | float):
                    offenders.append(where + " (not a constant: cannot prove it is short)")
                elif value.value > MAX_BROKER_DELAY_S:
                    offenders.append(f"{where}{value.value} (long waits belong in next_attempt_at)")
    assert offenders == []


def test_the_check_itself_finds_a_long_countdown() -> None:
    tree = ast.parse("task.apply_async(args=[1], countdown=7200)\nself.retry(eta=when)\n")
    assert [(line, kw) for line, kw, _ in _delaying_keywords(tree)] == [(1, "countdown"), (2, "eta")]


def test_db_retry_backs_off_on_dropped_connections_and_logs_no_parameters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError(
                "UPDATE message SET fields=%(fields)s", {"fields": "Nguyễn Văn A, 0912345678"}, ConnectionError("reset")
            )
        return "done"

    with caplog.at_level(logging.WARNING, logger="workers.retrying"):
        assert with_db_retry(flaky, seconds=30) == "done"
    assert len(calls) == 3
    assert "database unavailable (reset); retry 1" in caplog.text
    assert "Nguyễn" not in caplog.text
    assert "UPDATE" not in caplog.text


def test_db_retry_does_not_retry_what_is_not_transient() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, ValueError("duplicate key"))

    with pytest.raises(IntegrityError):
        with_db_retry(broken, seconds=30)
    assert len(calls) == 1


def test_the_consumer_survives_a_failing_cleanup_of_a_lost_broker_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    # What kombu does in Celery 5.7 when Redis vanishes at the wrong moment (seen in the Redis
    # restart test): the cleanup raises, and a plain Consumer lets the whole worker shut down.
    def broken_cleanup(self: Consumer, exc: Exception) -> None:
        self.connection = None
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    monkeypatch.setattr(Consumer, "on_connection_error_after_connected", broken_cleanup)
    consumer = object.__new__(ResilientConsumer)
    consumer.connection = object()
    consumer.on_connection_error_after_connected(ConnectionError("Connection refused"))
    assert consumer.connection is None
