"""The Postgres engine pings a pooled connection only when it sat idle: a busy worker saves a round
trip per transaction, and a connection that died while idle is still replaced before use."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from loa import db as loa_db


def _backend(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Engine, pid: int) -> None:
    with engine.connect() as conn:  # an engine of its own: the pooled connection stays idle
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()


@pytest.fixture
def postgres_url(database_url: str, engine: Engine) -> str:
    if engine.dialect.name != "postgresql":
        pytest.skip("pinging pooled connections concerns Postgres (LOA_TEST_DATABASE_URL)")
    return database_url


def test_a_connection_that_died_while_idle_is_replaced_before_use(
    postgres_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loa_db, "IDLE_PING_S", 0.0)  # every pooled connection counts as idle
    pooled = loa_db.make_engine(postgres_url, pool_size=1)
    try:
        first = _backend(pooled)
        _terminate(engine, first)
        assert _backend(pooled) != first  # pinged, found dead, replaced: the caller saw nothing
    finally:
        pooled.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(
    postgres_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loa_db, "IDLE_PING_S", 3600.0)
    pooled = loa_db.make_engine(postgres_url, pool_size=1)
    try:
        first = _backend(pooled)
        with pooled.connect() as conn:  # no ping round trip: the connection is handed out as is
            conn.execute(text("SELECT 1"))
        assert _backend(pooled) == first
        _terminate(engine, first)
        # Not pinged, so the statement meets the dead connection; the disconnect invalidates the
        # pool and the next checkout (the workers' DB retry) gets a new one.
        with pytest.raises(OperationalError):
            _backend(pooled)
        assert _backend(pooled) != first
    finally:
        pooled.dispose()
