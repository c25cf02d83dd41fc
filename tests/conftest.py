"""Shared fixtures: a real database (Postgres from LOA_TEST_DATABASE_URL, else a SQLite file) built
by `alembic upgrade head`, real Redis (LOA_TEST_REDIS_URL, else the embedded redis-server), the
API over HTTP, the SMSC simulator and SMTP sink over TCP, and real worker processes.

A test that needs a service that is absent skips, unless LOA_TEST_REQUIRE_SERVICES=1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from loa.db import make_engine, metadata
from loa.migrate import upgrade
from loa.settings import Settings

REQUIRE = os.environ.get("LOA_TEST_REQUIRE_SERVICES") == "1"
SECRET = "test-secret-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def unavailable(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what} is not available and LOA_TEST_REQUIRE_SERVICES=1")
    pytest.skip(f"{what} is not available")


# --- database ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("LOA_TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'loa-test.db'}"
    return url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    try:
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        unavailable(f"database {database_url.split('@')[-1]} ({type(exc).__name__})")
    if eng.dialect.name == "postgresql":
        with eng.begin() as conn:
            # Leftovers of an interrupted run (worker processes) would deadlock the schema reset.
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    upgrade(eng)  # the migrations are what builds the test schema
    yield eng
    eng.dispose()


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The engine with every table emptied first (worker processes see committed data only)."""
    tables = [t.name for t in reversed(metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))
    return engine


# --- redis ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("LOA_TEST_REDIS_URL")
    embedded = None
    if not url:
        from loa.embedded import EmbeddedRedis, EmbeddedRedisError

        embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        try:
            url = embedded.start()
        except EmbeddedRedisError as exc:
            unavailable(f"embedded redis ({exc})")
    assert url
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"redis at {url} ({exc})")
    yield url
    if embedded is not None:
        embedded.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


# --- settings and app ------------------------------------------------------------------------------
@pytest.fixture
def make_settings(database_url: str, redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "secret_key": SECRET,
            "state_dir": tmp_path / "state",
            "scheduler_interval_s": 0.5,
            "lease_seconds": 30,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings], db: Engine) -> Settings:
    return make_settings()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for child processes (workers) that reproduces `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env.update(
        {
            "LOA_DATABASE_URL": settings.effective_database_url,
            "LOA_REDIS_URL": settings.redis_url or "",
            "LOA_SECRET_KEY": SECRET,
            "LOA_STATE_DIR": str(settings.state_dir),
            "LOA_SCHEDULER_INTERVAL_S": str(settings.scheduler_interval_s),
            "LOA_LEASE_SECONDS": str(settings.lease_seconds),
            "LOA_MAX_ATTEMPTS": str(settings.max_attempts),
            "LOA_DISPATCH_BATCH": str(settings.dispatch_batch),
        }
    )
    if settings.gateways_file:
        env["LOA_GATEWAYS_FILE"] = str(settings.gateways_file)
    return env


class Procs:
    """Child `loa` processes (workers, scheduler), stopped at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, settings: Settings, *args: str, name: str = "proc") -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{name}-{len(self.procs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "loa", *args],
            env=settings_env(settings),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=self.tmp_path,
        )
        self.procs.append((proc, log))
        return proc

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for _, log in self.procs)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(p.logs())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
