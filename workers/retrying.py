"""Short in-process retries (tenacity) around database work: a Postgres restart or a dropped
connection makes workers back off and carry on instead of losing the batch in hand."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import Retrying, before_sleep_log, retry_if_exception, stop_after_delay, wait_exponential_jitter

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_RETRY_SECONDS = 180.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):
        return True  # connection refused/reset, server restarting, SQLite busy
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_db_retry(fn: Callable[[], T], *, seconds: float = DB_RETRY_SECONDS) -> T:
    """Run `fn` (which opens its own transaction) again after transient database errors."""
    for attempt in Retrying(
        retry=retry_if_exception(_is_transient),
        wait=wait_exponential_jitter(initial=0.5, max=10.0),
        stop=stop_after_delay(seconds),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")
