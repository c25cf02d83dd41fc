"""Shared parts of the SMS benchmarks: the SMSC simulator in its own process, a fresh Postgres
schema, campaigns seeded straight into the database, `loa` worker processes, and polling.

The simulator runs in a process of its own so that neither the raw smpplib loop nor the bench's
polling competes with it for one interpreter lock: what is measured is the sender.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Engine, func, insert, select, text, update
from sqlmodel import col

from accounts.service import get_or_create_org
from campaigns import counters, tally
from campaigns.models import Campaign, CampaignStatus, Channel, Message, MessageStatus
from loa.db import make_engine, transaction
from loa.migrate import upgrade
from loa.timeutil import utcnow

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = os.environ.get("LOA_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/loa_bench")
DEFAULT_REDIS = os.environ.get("LOA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
SECRET = "bench-secret-key-0123456789"
PENDING = (MessageStatus.QUEUED.value, MessageStatus.DISPATCHING.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SimAccount:
    system_id: str
    password: str
    tps: float | None = None


def _run_simulator(port: int, accounts: Sequence[SimAccount], options: dict[str, Any]) -> None:
    import logging

    from gateways.smpp.simulator import Account, SimulatorConfig, serve

    logging.basicConfig(level=logging.WARNING)
    config = SimulatorConfig(
        port=port,
        accounts=[Account(a.system_id, a.password, tps=a.tps) for a in accounts],
        keep_log=False,
        **options,
    )
    serve(config)


@contextmanager
def simulator_process(accounts: Sequence[SimAccount], **options: Any) -> Iterator[int]:
    """The SMSC simulator in a child process; yields its port once it accepts connections."""
    port = free_port()
    proc = mp.get_context("spawn").Process(target=_run_simulator, args=(port, list(accounts), options), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or not proc.is_alive():
                    raise RuntimeError("the simulator did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def fresh_schema(url: str) -> Engine:
    """An engine on `url` with every table dropped and rebuilt by the migrations."""
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    return engine


def seed_campaign(
    engine: Engine,
    n: int,
    *,
    body: str = "Tong dieu tra kinh te 2026, ma so {{ n }}",
    prefix: str = "+8496",
    carrier: str = "Viettel",
    chunk: int = 50_000,
    name: str = "bench",
) -> str:
    """A draft SMS campaign with `n` recipients inserted in bulk; counters made exact."""
    with transaction(engine) as session:
        org = get_or_create_org(session, "bench")
        campaign = Campaign(
            org_id=org.id,
            name=name,
            channel=Channel.SMS,
            sender="TCTK",
            template={"body": body},
            fields=["n"],
        )
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
    for start in range(0, n, chunk):
        rows = [
            {"campaign_id": campaign_id, "to": f"{prefix}{i:07d}", "carrier": carrier, "fields": {"n": str(i)}}
            for i in range(start, min(n, start + chunk))
        ]
        with transaction(engine) as session:
            session.execute(insert(Message), rows)
    with transaction(engine) as session:
        counters.reconcile(session, campaign_id)
    return campaign_id


def launch(engine: Engine, campaign_id: str) -> None:
    """Straight to `running` (the API's launch checks are not what is measured)."""
    now = utcnow()
    with transaction(engine) as session:
        session.execute(
            update(Campaign)
            .where(col(Campaign.id) == campaign_id)
            .values(status=CampaignStatus.RUNNING.value, launched_at=now, updated_at=now)
        )


def status_counts(engine: Engine, campaign_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(col(Message.status), func.count())
            .where(col(Message.campaign_id) == campaign_id)
            .group_by(col(Message.status))
        )
        return {str(getattr(s, "value", s)): int(c) for s, c in rows}


def pending(engine: Engine, campaign_id: str) -> bool:
    """Whether any message is still queued or dispatching.

    Polled every 50 ms while the workers run, so it must take no CPU from what is measured. The
    campaign's live counters answer from a few hundred journal rows; the rows themselves are read
    only once the counters say none is left, to confirm. (A probe of the rows every time cost
    1.3-3.7 ms: with statistics from before the launch, Postgres scanned the table from its first
    page for a queued row, past every row already sent.)"""
    with transaction(engine) as session:
        counted = {status: n for _, status, n in tally.status_totals(session, [campaign_id])}
        if any(counted.get(status, 0) > 0 for status in PENDING):
            return True
        probe = (
            select(col(Message.id))
            .where(col(Message.campaign_id) == campaign_id, col(Message.status).in_(PENDING))
            .limit(1)
        )
        return session.execute(probe).first() is not None


@dataclass
class Stack:
    """`loa` child processes (workers, scheduler) sharing one environment."""

    env: dict[str, str]
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "loa", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stack_env(db_url: str, redis_url: str, gateways_file: Path, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOA_", "PROMETHEUS_"))}
    env.update(
        {
            "LOA_DATABASE_URL": db_url,
            "LOA_REDIS_URL": redis_url,
            "LOA_SECRET_KEY": SECRET,
            "LOA_GATEWAYS_FILE": str(gateways_file),
            "LOA_STATE_DIR": str(state_dir),
            "LOA_SCHEDULER_INTERVAL_S": "1.0",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def smpp_gateway_toml(name: str, port: int, *, binds: int, tps: float, window: int, carriers: Sequence[str]) -> str:
    quoted = ", ".join(f'"{c}"' for c in carriers)
    return (
        f'[[smpp]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\nsystem_id = "{name}"\n'
        f'password = "{name}-pw"\nbinds = {binds}\ntps = {tps}\nwindow = {window}\ncarriers = [{quoted}]\n'
        f'source_addr = "TCTK"\nreceipt_id_base = "hex"\n'
    )


def wait_bound(redis_url: str, gateway: str, binds: int, timeout: float = 180.0) -> None:
    """Until `binds` bind leases of `gateway` are held (the workers' sessions are opening)."""
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = sum(1 for _ in client.scan_iter(f"loa:lease:smpp:{gateway}:*"))
        if held >= binds:
            time.sleep(1.0)  # the sessions bind right after taking their leases
            return
        time.sleep(0.1)
    raise RuntimeError(f"no worker took the bind leases of {gateway} within {timeout:.0f}s")


@cache
def celery_app(redis_url: str) -> Celery:
    """Loa's Celery app on `redis_url`; call it before a clock starts (the import takes ~0.15 s)."""
    from workers.celery_app import app, configure

    configure(redis_url)
    return app


def kick_dispatch(redis_url: str) -> None:
    celery_app(redis_url).send_task("loa.dispatch", queue="dispatch")


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at start"
