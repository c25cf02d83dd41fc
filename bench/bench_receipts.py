"""Applying delivery receipts from the database inbox, on Postgres.

Seeds a campaign whose messages are `sent` with one segment each (provider ids stored), fills the
inbox with one DELIVRD receipt per segment (as the SMPP deliver handler stores them), then times
`drain_inbox` as the receipts task runs it (passes of 5,000 receipts, one transaction each, two
passes in flight) until the inbox is empty: the segments and messages become `delivered`, the
counters are written, the inbox emptied. `--lanes 1` times one pass at a time.

    .venv/bin/python -m bench.bench_receipts [--receipts 50000] [--lanes 2] [--database-url URL]

The database named in the URL must exist; its schema is dropped and rebuilt.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlmodel import col

from bench.bench_sms_kit import DEFAULT_DB, fresh_schema, machine, seed_campaign
from campaigns import counters
from campaigns.models import Message, ReceiptInbox, SmsSegment
from campaigns.receipts import LANES, drain_inbox
from gateways.config import GatewaysConfig, SmppGateway
from loa.db import table_of, transaction
from loa.timeutil import utcnow

GATEWAYS = GatewaysConfig(
    smpp=[SmppGateway(name="bench", host="127.0.0.1", port=2775, system_id="bench", password="pw")]  # type: ignore[arg-type]
)


def prepare(url: str, n: int) -> None:
    engine = fresh_schema(url)
    campaign_id = seed_campaign(engine, n)
    now = utcnow()
    with transaction(engine) as session:
        # Every message accepted by the SMSC: status sent, one segment with a provider id.
        session.execute(
            text(
                "UPDATE message SET status = 'sent', gateway = 'bench', submitted_at = :now,"
                " provider_ids = upper(to_hex(id + 1000000)) WHERE campaign_id = :cid"
            ),
            {"now": now, "cid": campaign_id},
        )
        session.execute(
            text(
                "INSERT INTO sms_segment (message_id, gateway, seq, provider_id, submitted_at)"
                " SELECT id, 'bench', 0, provider_ids, :now FROM message WHERE campaign_id = :cid"
            ),
            {"now": now, "cid": campaign_id},
        )
        counters.reconcile(session, campaign_id)
    with transaction(engine) as session:
        ids = list(session.scalars(select(col(SmsSegment.provider_id))))
    for start in range(0, len(ids), 20_000):
        rows = [
            {
                "gateway": "bench",
                "provider_id": pid,
                "state": "delivered",
                "raw_stat": "DELIVRD",
                "err": "000",
                "received_at": now,
                "attempts": 0,
            }
            for pid in ids[start : start + 20_000]
        ]
        with transaction(engine) as session:
            session.execute(insert(table_of(ReceiptInbox)), rows)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backends_cpu_s(engine: Any) -> dict[int, float]:
    """CPU seconds of each Postgres backend connected to the bench database."""
    with engine.connect() as conn:
        pids = conn.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).all()
    return {int(p): _cpu_s(int(p)) for p in pids}


def run(url: str, limit: int, lanes: int) -> tuple[int, float, float, float]:
    """Applied receipts, seconds, and CPU seconds of this process and of its Postgres backends."""
    from loa.db import make_engine

    engine = make_engine(url, pool_size=lanes + 1)
    db_before = _backends_cpu_s(engine)
    start, cpu = time.perf_counter(), time.process_time()
    applied, _more = drain_inbox(engine, GATEWAYS, lanes=lanes, limit=limit)  # what the receipts task runs
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    db_cpu = sum(t - db_before.get(pid, 0.0) for pid, t in _backends_cpu_s(engine).items())
    with engine.connect() as conn:
        delivered = conn.scalar(select(func.count()).where(col(Message.status) == "delivered"))
    assert delivered == applied, f"{delivered} delivered for {applied} applied"
    engine.dispose()
    return applied, elapsed, cpu, db_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receipts", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--lanes", type=int, default=LANES, help="passes in flight (the receipts task's)")
    parser.add_argument("--database-url", default=DEFAULT_DB)
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.receipts} receipts, batches of {args.batch}, {args.lanes} lanes")
    prepare(args.database_url, args.receipts)
    applied, elapsed, cpu, db_cpu = run(args.database_url, args.batch, args.lanes)
    print(f"applied {applied} receipts in {elapsed:.2f}s: {applied / elapsed:,.0f} receipts/s")
    print(
        f"CPU per receipt: {cpu / applied * 1e6:.0f} us in this process, {db_cpu / applied * 1e6:.0f} us in its "
        f"Postgres backends (two cores fully used would allow ~{2 * applied / (cpu + db_cpu):,.0f} receipts/s)"
    )


if __name__ == "__main__":
    main()
