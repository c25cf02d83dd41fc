"""Benchmark of the reporting side on Postgres: live counters against exact recounts, the cost of
per-batch deltas on the send path, and the streamed CSV export of a large campaign through a real
`loa api` process (time to first byte, total, peak RSS).

It adds one campaign of `--rows` messages (statuses, gateways, carriers, errors, provinces mixed)
to the database given, and deletes it at the end unless `--keep`.

    .venv/bin/python -m bench.bench_reports --db postgresql+psycopg://postgres@127.0.0.1/loa_bench \\
        [--rows 1000000] [--redis-url redis://127.0.0.1:6379/9] [--keep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, delete, select, text, update
from sqlmodel import Session, col

from accounts.models import Role
from accounts.service import create_key, get_or_create_org
from campaigns import counters, repository, tally
from campaigns.models import Campaign, Channel, Message, MessageEvent
from campaigns.report_models import CampaignCounter, ReportState
from loa.db import make_engine, transaction
from loa.migrate import upgrade
from loa.stack import free_port, wait_port

SEED = """
INSERT INTO message (campaign_id, "to", carrier, gateway, status, fields, segments, attempts, ambiguous_resends,
                     no_receipt, created_at, updated_at, submitted_at, delivered_at, error_code, "row")
SELECT :cid,
       '+849' || lpad(i::text, 8, '0'),
       (ARRAY['Viettel', 'Vinaphone', 'MobiFone'])[1 + i % 3],
       CASE WHEN i % 10 < 9 THEN (ARRAY['viettel', 'vinaphone', 'default'])[1 + i % 3] END,
       CASE WHEN i % 10 < 7 THEN 'delivered' WHEN i % 10 = 7 THEN 'sent' WHEN i % 10 = 8 THEN 'failed'
            ELSE 'queued' END,
       json_build_object('ten', 'Nguyễn Văn ' || i, 'tinh', (ARRAY['Hà Nội', 'Huế', 'Cần Thơ', 'Đà Nẵng'])[1 + i % 4]),
       1 + i % 2, 1, 0, false, now(), now(),
       CASE WHEN i % 10 < 9 THEN now() - (i % 3600) * interval '1 second' END,
       CASE WHEN i % 10 < 7 THEN now() - (i % 3600) * interval '1 second' END,
       CASE WHEN i % 10 = 8 THEN '0x0B' END,
       i + 2
FROM generate_series(0, :n - 1) AS i
"""


def timed(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def seed(engine: Engine, rows: int) -> tuple[str, str]:
    with transaction(engine) as session:
        org = get_or_create_org(session, "bench")
        campaign = Campaign(
            org_id=org.id, name="bench reports", channel=Channel.SMS, sender="TCTK", fields=["ten", "tinh"]
        )
        session.add(campaign)
        session.flush()
        key = create_key(session, org, Role.OPERATOR, "bench").key
        cid = campaign.id
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(SEED), {"cid": cid, "n": rows})
        conn.execute(text("ANALYZE message"))
    print(f"seeded {rows:,} messages in {time.perf_counter() - start:.1f} s")
    return cid, key


def counters_vs_recount(engine: Engine, cid: str) -> None:
    def recount() -> Any:
        with Session(engine) as session:
            return repository.status_counts(session, cid), repository.campaign_stats(session, cid)

    def reconcile() -> int:
        with transaction(engine) as session:
            return counters.reconcile(session, cid)

    def read() -> Any:
        with Session(engine) as session:
            return tally.read(session, cid)

    t_reconcile, _ = timed(reconcile, 1)
    with transaction(engine) as session:
        counters.compact(session, cid)
    t_recount, (exact, _) = timed(recount)
    t_read, live = timed(read, 5)
    assert live.counts() == exact[0], "counters differ from the exact count"
    print(f"exact grouped recount (status, gateway, carrier, error, sums): {t_recount * 1000:8.1f} ms")
    print(f"counters read (what every refresh costs now):                   {t_read * 1000:8.1f} ms")
    print(f"reconcile (exact recount of every dimension, once at the end):  {t_reconcile * 1000:8.1f} ms")


def delta_overhead(engine: Engine, cid: str, batches: int = 30, size: int = 200) -> None:
    """The send path's extra work: snapshot + apply_changes around a batch's status update."""
    with Session(engine) as session:
        ids = list(
            session.scalars(
                select(col(Message.id))
                .where(col(Message.campaign_id) == cid, col(Message.status) == "queued")
                .limit(batches * size * 2)
            )
        )
    plain, tracked = [], []
    for b in range(batches):
        for ids_part, bucket, counted in (
            (ids[2 * b * size : (2 * b + 1) * size], plain, False),
            (ids[(2 * b + 1) * size : (2 * b + 2) * size], tracked, True),
        ):
            start = time.perf_counter()
            with transaction(engine) as session:
                before = counters.snapshot(session, ids_part) if counted else None
                session.execute(
                    update(Message)
                    .where(col(Message.id).in_(ids_part))
                    .values(status="sent", submitted_at=text("now()"))
                )
                if before is not None:
                    counters.apply_changes(session, before)
            bucket.append(time.perf_counter() - start)
    p, t = statistics.median(plain) * 1000, statistics.median(tracked) * 1000
    print(f"batch of {size} status updates: {p:.1f} ms plain, {t:.1f} ms with counter deltas (+{t - p:.1f} ms)")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def csv_export(db_url: str, redis_url: str, cid: str, key: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LOA_DATABASE_URL": db_url,
        "LOA_REDIS_URL": redis_url,
        "LOA_SECRET_KEY": "bench-secret-key-0123456789",
        "LOA_STATE_DIR": "/tmp/loa-bench-reports",
    }
    proc = subprocess.Popen([sys.executable, "-m", "loa", "api", "--port", str(port)], env=env)
    try:
        if not wait_port(port, 60):
            raise SystemExit("the API did not start")
        headers = {"Authorization": f"Bearer {key}"}
        httpx.get(f"http://127.0.0.1:{port}/v1/campaigns/{cid}", headers=headers, timeout=120)
        base = rss_kib(proc.pid)
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        first = None
        size = lines = 0
        with httpx.stream(
            "GET", f"http://127.0.0.1:{port}/v1/campaigns/{cid}/report.csv", headers=headers, timeout=600
        ) as r:
            for chunk in r.iter_bytes():
                if first is None:
                    first = time.perf_counter() - start
                size += len(chunk)
                lines += chunk.count(b"\n")
        total = time.perf_counter() - start
        stop.set()
        sampler.join()
        print(
            f"CSV export: first byte {first or 0:.3f} s, {lines - 1:,} rows / {size / 2**20:.0f} MiB in {total:.1f} s "
            f"({(lines - 1) / total:,.0f} rows/s); API process RSS {base / 1024:.0f} -> peak {peak[0] / 1024:.0f} MiB"
        )
    finally:
        proc.terminate()
        proc.wait(20)


def cleanup(engine: Engine, cid: str) -> None:
    with transaction(engine) as session:
        ids = select(col(Message.id)).where(col(Message.campaign_id) == cid)
        session.execute(delete(MessageEvent).where(col(MessageEvent.message_id).in_(ids)))
        session.execute(delete(Message).where(col(Message.campaign_id) == cid))
        session.execute(delete(CampaignCounter).where(col(CampaignCounter.campaign_id) == cid))
        session.execute(delete(ReportState).where(col(ReportState.campaign_id) == cid))
        session.execute(delete(Campaign).where(col(Campaign.id) == cid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="a Postgres URL (postgresql+psycopg://…)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--redis-url", default=os.environ.get("LOA_TEST_REDIS_URL", "redis://127.0.0.1:6379/9"))
    parser.add_argument("--keep", action="store_true", help="keep the campaign")
    args = parser.parse_args()
    engine = make_engine(args.db)
    upgrade(engine)
    cid, key = seed(engine, args.rows)
    try:
        counters_vs_recount(engine, cid)
        delta_overhead(engine, cid)
        csv_export(args.db, args.redis_url, cid, key)
    finally:
        if not args.keep:
            cleanup(engine, cid)
        engine.dispose()


if __name__ == "__main__":
    main()
