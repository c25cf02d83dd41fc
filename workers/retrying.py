"""Short in-process retries (tenacity) around database work: a Postgres restart or a dropped
connection makes workers back off and carry on instead of losing the batch in hand."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential, wait_random

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_RETRY_SECONDS = 180.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):
        return True  # connection refused/reset, server restarting, SQLite busy
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _log_retry(state: RetryCallState) -> None:
    """One line per retry. Only the driver's message: SQLAlchemy's own text would carry the
    statement's parameters, which may be personal data."""
    exc = state.outcome.exception() if state.outcome is not None else None
    reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("database unavailable (%s); retry %d in %.1f s", first_line, state.attempt_number, delay)


def with_db_retry(fn: Callable[[], T], *, seconds: float = DB_RETRY_SECONDS) -> T:
    """Run `fn` (which opens its own transaction) again after transient database errors."""
    for attempt in Retrying(
        retry=retry_if_exception(_is_transient),
        # Spelled as a sum: wait_exponential_jitter's `initial` is deprecated in tenacity 9, absent in 8.
        wait=wait_exponential(multiplier=0.5, max=10.0) + wait_random(0, 1),
        stop=stop_after_delay(seconds),
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")
