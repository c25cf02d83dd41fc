"""Database engine and sessions: Postgres in production, SQLite (WAL) for the embedded default.

Engines are created by the caller and passed in (no process-global session); `make_engine` applies
the per-dialect settings that the rest of the code relies on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event, exc
from sqlalchemy.engine.url import make_url
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, SQLModel

# Stable constraint names, so Alembic migrations do not churn between dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata: MetaData = SQLModel.metadata

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled Postgres connection idle at least this long is pinged before use (see `_ping_when_idle`).
IDLE_PING_S = 1.0


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a model (for dialect INSERT … ON CONFLICT and bulk statements)."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """An engine with WAL + busy timeout + BEGIN IMMEDIATE on SQLite, idle pre-ping on Postgres."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """`pool_pre_ping`, but only for a connection that sat in the pool `IDLE_PING_S` or longer.

    SQLAlchemy's pre-ping costs a round trip to Postgres on every checkout: on a busy worker
    that is one more round trip per transaction (~5 % of the SMS worker's time). A connection
    handed back moments ago is almost surely alive, and if Postgres went away in between, the
    statement fails as a disconnect, the pool is invalidated and the workers' DB retry runs the
    transaction again on a new connection (tests/workers/test_crash_postgres_cut.py)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()  # `info` is cleared when the connection is replaced

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as err:
            if engine.dialect.is_disconnect(err, dbapi_conn, None):
                # As pre-ping does: a dead connection means a restart, so every pooled one is stale.
                raise exc.InvalidatePoolError() from err
            raise


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself: a deferred transaction that
        # later writes can fail with SQLITE_BUSY without waiting, immediate ones queue on busy_timeout.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, class_=Session, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
