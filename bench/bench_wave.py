"""A big SMS wave end to end on Postgres and Redis: from launch until every message is `sent` (or
further), with two gateways to the SMSC simulator (its TPS unlimited, receipts on), a dispatcher
worker, SMS worker processes and the scheduler. Prints messages/s and the RSS of the dispatcher and
of each SMS worker over time (they must stay flat, each under 250 MB).

    .venv/bin/python -m bench.bench_wave --messages 1000000

The database named by --database-url is wiped and rebuilt. Recipients are inserted by one
INSERT ... SELECT generate_series (the import path has its own benchmark); half are Viettel numbers,
half Vinaphone, each routed to its own gateway.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import Engine, text

from accounts.service import get_or_create_org
from bench.bench_sms_kit import (
    SimAccount,
    Stack,
    fresh_schema,
    kick_dispatch,
    launch,
    machine,
    simulator_process,
    smpp_gateway_toml,
    stack_env,
    status_counts,
    wait_bound,
)
from campaigns import counters
from campaigns.models import Campaign, Channel
from loa.db import transaction

DEFAULT_DB = os.environ.get("LOA_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/loa_bench_wave")
DEFAULT_REDIS = os.environ.get("LOA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/4")
GATEWAYS = (("viettel", "Viettel", "6"), ("vinaphone", "Vinaphone", "1"))  # name, carrier, number prefix digit
RSS_LIMIT_MB = 250.0
PENDING = ("queued", "dispatching")


def seed(engine: Engine, n: int) -> str:
    """One campaign, `n` recipients alternating between the two carriers, counters exact."""
    with transaction(engine) as session:
        org = get_or_create_org(session, "bench")
        campaign = Campaign(
            org_id=org.id,
            name="wave bench",
            channel=Channel.SMS,
            sender="TCTK",
            template={"body": "Tong dieu tra kinh te 2026, ma so {{ n }}"},
            fields=["n"],
        )
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO message (campaign_id, "to", carrier, fields, status, segments, attempts,'
                " ambiguous_resends, no_receipt, created_at, updated_at, row)"
                " SELECT :cid, '+849' || CASE WHEN i % 2 = 0 THEN :p0 ELSE :p1 END || lpad(i::text, 7, '0'),"
                " CASE WHEN i % 2 = 0 THEN :c0 ELSE :c1 END, json_build_object('n', i::text), 'queued', 1, 0, 0,"
                " false, now(), now(), i + 2 FROM generate_series(0, :n - 1) AS i"
            ),
            {
                "cid": campaign_id,
                "n": n,
                "p0": GATEWAYS[0][2],
                "p1": GATEWAYS[1][2],
                "c0": GATEWAYS[0][1],
                "c1": GATEWAYS[1][1],
            },
        )
        conn.execute(text("ANALYZE message"))
    with transaction(engine) as session:
        counters.reconcile(session, campaign_id)
    return campaign_id


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Sample:
    t: float
    done: int
    rss: dict[str, float]


@dataclass
class Run:
    total: int
    samples: list[Sample] = field(default_factory=list)

    def line(self, s: Sample, prev: Sample | None) -> str:
        rate = (s.done - prev.done) / (s.t - prev.t) if prev and s.t > prev.t else 0.0
        rss = "  ".join(f"{name} {mb:5.0f}" for name, mb in s.rss.items())
        return f"{s.t:7.0f}s  {s.done:>9,} sent  {rate:7.0f}/s   RSS MB: {rss}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--sms-workers", type=int, default=2, help="SMS worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker process")
    parser.add_argument("--binds", type=int, default=2)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    engine = fresh_schema(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    started = time.monotonic()
    campaign_id = seed(engine, args.messages)
    print(f"seeded {args.messages:,} recipients in {time.monotonic() - started:.0f}s")

    accounts = [SimAccount(name, f"{name}-pw") for name, _, _ in GATEWAYS]
    with simulator_process(accounts, receipt_delay_s=(0.05, 0.2)) as port, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        gateways_file = workdir / "gateways.toml"
        gateways_file.write_text(
            "\n".join(
                smpp_gateway_toml(
                    name, port, binds=args.binds, tps=100_000, window=args.window, carriers=[carrier]
                )  # the limiter out of the way: the simulator's TPS is unlimited
                for name, carrier, _ in GATEWAYS
            )
        )
        env = stack_env(args.database_url, args.redis_url, gateways_file, workdir / "state")
        stack = Stack(env, workdir)
        try:
            roles = {"dispatcher": stack.start("worker", "-Q", "dispatch,receipts", "-c", "4", name="dispatch")}
            for i in range(args.sms_workers):
                roles[f"sms{i + 1}"] = stack.start("worker", "-Q", "sms", "-c", str(args.concurrency), name="sms")
            stack.start("scheduler", name="scheduler")
            for name, _, _ in GATEWAYS:
                wait_bound(args.redis_url, name, args.binds)
            run = Run(args.messages)
            cpu_before = {name: cpu_s(p.pid) for name, p in roles.items()}
            launch(engine, campaign_id)
            kick_dispatch(args.redis_url)
            t0 = time.monotonic()
            prev: Sample | None = None
            while True:
                time.sleep(args.sample_s)
                counts = status_counts(engine, campaign_id)
                pending = sum(counts.get(s, 0) for s in PENDING)
                sample = Sample(
                    time.monotonic() - t0,
                    args.messages - pending,
                    {name: rss_mb(p.pid) for name, p in roles.items()},
                )
                run.samples.append(sample)
                print(run.line(sample, prev), flush=True)
                prev = sample
                if pending == 0:
                    break
                if any(p.poll() is not None for p in roles.values()):
                    raise SystemExit(f"a worker died; logs in {workdir}")
            cpu = {name: cpu_s(p.pid) - cpu_before[name] for name, p in roles.items()}
            report(run, counts, cpu)
        finally:
            stack.stop()


def report(run: Run, counts: dict[str, int], cpu: dict[str, float]) -> None:
    last = run.samples[-1]
    rates = [(b.done - a.done) / (b.t - a.t) for a, b in zip(run.samples, run.samples[1:], strict=False) if b.t > a.t]
    steady = sorted(rates)[len(rates) // 10 : max(len(rates) // 10 + 1, len(rates) * 9 // 10)] or rates
    print()
    print(f"final counts: {counts}")
    print(f"{run.total:,} messages from launch to all sent in {last.t:.0f}s: {run.total / last.t:,.0f} messages/s")
    if steady:
        print(f"steady rate (middle 80% of samples): {statistics.median(steady):,.0f} messages/s")
    per_message = ", ".join(f"{name} {1000 * s / run.total:.2f}" for name, s in cpu.items())
    print(f"worker CPU per message (ms): {per_message}; total {1000 * sum(cpu.values()) / run.total:.2f}")
    print("RSS MB per process (first sample / max / last sample):")
    for name in last.rss:
        series = [s.rss[name] for s in run.samples]
        verdict = "ok" if max(series) < RSS_LIMIT_MB else "OVER LIMIT"
        print(
            f"  {name:<10} {series[0]:6.0f} / {max(series):6.0f} / {series[-1]:6.0f}   < {RSS_LIMIT_MB:.0f}: {verdict}"
        )


if __name__ == "__main__":
    main()
