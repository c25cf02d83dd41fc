"""Helpers for the SMS worker tests: gateways files for the SMSC simulator, a module-wide stack of
real `loa worker` processes (starting Python processes is what these tests pay most for, so a
module starts them once and its tests share them), campaigns seeded straight into the database or
created through the API, and readings of the database and of the simulator.

A module's stack must not see Redis flushed while it runs (the broker's bindings live there), so
these tests do not use the `redis_client` fixture."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import col

from campaigns.models import Message, MessageStatus
from gateways.smpp.simulator import Account, SimulatorConfig, Smsc, run_in_thread
from loa.settings import Settings
from tests.conftest import SECRET, Procs, wait_for


@dataclass(frozen=True)
class Gw:
    """One SMPP gateway of the gateways file and its simulator account (same name)."""

    name: str
    carriers: Sequence[str] = ()
    default: bool = False
    binds: int = 1
    tps: float = 5000
    window: int = 10
    fallback: str | None = None
    failover: str | None = None  # e.g. "{ after_s = 2, error_rate = 0.5 }"
    receipt_id_base: str = "auto"
    extra: str = ""

    @property
    def password(self) -> str:
        return f"{self.name[:5]}-pw"

    def toml(self, port: int) -> str:
        carriers = ", ".join(f'"{c}"' for c in self.carriers)
        lines = [
            "[[smpp]]",
            f'name = "{self.name}"',
            'host = "127.0.0.1"',
            f"port = {port}",
            f'system_id = "{self.name}"',
            f'password = "{self.password}"',
            f"binds = {self.binds}",
            f"tps = {self.tps}",
            f"window = {self.window}",
            f"carriers = [{carriers}]",
            f"default = {str(self.default).lower()}",
            "enquire_link_s = 5",
            'source_addr = "TCTK"',
            f'receipt_id_base = "{self.receipt_id_base}"',
        ]
        if self.fallback:
            lines.append(f'fallback = "{self.fallback}"')
        if self.failover:
            lines.append(f"failover = {self.failover}")
        if self.extra:
            lines.append(self.extra)
        return "\n".join(lines) + "\n"


def gateways_toml(port: int, gateways: Sequence[Gw]) -> str:
    return "\n".join(g.toml(port) for g in gateways)


@dataclass
class SmsStack:
    """A simulator and worker processes shared by the tests of one module."""

    smsc: Smsc
    settings: Settings
    procs: Procs
    gateways: Sequence[Gw]
    base_config: SimulatorConfig
    workers: list[Any] = field(default_factory=list)

    def reset(self) -> None:
        """Faults off, counters zeroed: the start of each test."""
        config = replace(self.base_config, accounts=[replace(a) for a in self.base_config.accounts])
        self.smsc.config = config
        self.smsc.stats.reset()

    def account(self, name: str) -> Account:
        return next(a for a in self.smsc.config.accounts if a.system_id == name)

    def wait_bound(self, timeout: float = 120.0) -> None:
        for g in self.gateways:
            self._wait_gateway(g, timeout)

    def _wait_gateway(self, g: Gw, timeout: float) -> None:
        wait_for(lambda: self.smsc.stats.sessions(g.name) >= g.binds, timeout, what=f"{g.binds} bound of {g.name}")


@contextmanager
def sms_stack(
    tmp: Path,
    database_url: str,
    redis_url: str,
    gateways: Sequence[Gw],
    *,
    workers: int = 1,
    concurrency: int = 4,
    scheduler: bool = True,
    settings: dict[str, Any] | None = None,
    **sim: Any,
) -> Iterator[SmsStack]:
    import redis as redis_lib

    redis_lib.Redis.from_url(redis_url).flushdb()  # leases, limiter factors, queues of earlier runs
    accounts = [Account(g.name, g.password) for g in gateways]
    sim.setdefault("receipt_delay_s", (0.01, 0.05))
    base = SimulatorConfig(port=0, accounts=accounts, **sim)
    with run_in_thread(replace(base, accounts=[replace(a) for a in accounts])) as smsc:
        path = tmp / "gateways.toml"
        path.write_text(gateways_toml(smsc.port, gateways))
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "secret_key": SECRET,
            "state_dir": tmp / "state",
            "scheduler_interval_s": 0.5,
            "lease_seconds": 30,
            "gateways_file": path,
        }
        values.update(settings or {})
        cfg = Settings(**values)
        procs = Procs(tmp)
        stack = SmsStack(smsc, cfg, procs, gateways, base)
        try:
            for n in range(workers):
                stack.workers.append(
                    procs.start(cfg, "worker", "-Q", "sms,dispatch,receipts", "-c", str(concurrency), name=f"worker{n}")
                )
            if scheduler:
                procs.start(cfg, "scheduler", name="scheduler")
            stack.wait_bound()
            yield stack
        except BaseException:
            print(procs.logs())  # noqa: T201 - the workers' side of a failed start
            raise
        finally:
            procs.stop_all()


@pytest.fixture
def logs_on_failure(request: pytest.FixtureRequest) -> Iterator[list[SmsStack]]:
    """Tests append their stack; its worker logs are printed if the test fails."""
    stacks: list[SmsStack] = []
    yield stacks
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for s in stacks:
            print(s.procs.logs())  # noqa: T201


def truncate_all(engine: Engine, attempts: int = 5) -> Engine:
    """Empty every table while the module's workers run. Their periodic tasks hold row locks,
    so TRUNCATE may deadlock with them: Postgres then cancels one side, and we try again."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from loa.db import metadata

    tables = [t.name for t in reversed(metadata.sorted_tables)]
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                    conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
                else:
                    for name in tables:
                        conn.execute(text(f"DELETE FROM {name}"))
            return engine
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return engine


# --- readings ----------------------------------------------------------------------------------
def counts(engine: Engine, campaign_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(col(Message.status), func.count())
            .where(col(Message.campaign_id) == campaign_id)
            .group_by(col(Message.status))
        )
        return {str(getattr(s, "value", s)): int(c) for s, c in rows}


def by_gateway(engine: Engine, campaign_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(col(Message.gateway), func.count())
            .where(col(Message.campaign_id) == campaign_id)
            .group_by(col(Message.gateway))
        )
        return {str(g): int(c) for g, c in rows}


def settled(engine: Engine, campaign_id: str, final: set[str] | None = None) -> bool:
    """Every message of the campaign has a final status (SMS `sent` is not final: it awaits a receipt)."""
    done = final or {s.value for s in MessageStatus} - {"queued", "dispatching", "sent"}
    c = counts(engine, campaign_id)
    return bool(c) and set(c) <= done


def wait_settled(engine: Engine, campaign_id: str, timeout: float = 120.0) -> dict[str, int]:
    wait_for(lambda: settled(engine, campaign_id), timeout, what=f"campaign {campaign_id} settled")
    return counts(engine, campaign_id)


def quiet(smsc: Smsc, seconds: float = 1.0, timeout: float = 30.0) -> None:
    """Until the simulator accepted nothing new for `seconds`."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = smsc.stats.submits
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.1)
    raise AssertionError(f"the simulator never went quiet (submits: {smsc.stats.submits})")
