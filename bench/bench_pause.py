"""Pause latency: from the pause request (the API call) until the SMSC simulator sees the campaign's
last submit, over many pause/resume cycles of a running wave (two gateways, simulator TPS
unlimited, the real API, worker processes and scheduler). The target is p99 < 5 s.

    .venv/bin/python -m bench.bench_pause --cycles 30

The simulator runs in this process so its log gives each submit's arrival time. The database
named by --database-url is wiped and rebuilt. At the end every recipient must have reached the
SMSC exactly once: pausing and resuming never sends anyone the message twice.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from accounts.models import Role
from accounts.service import create_key, get_or_create_org
from api.app import create_app
from bench.bench_sms_kit import SECRET, Stack, fresh_schema, machine, smpp_gateway_toml, stack_env, wait_bound
from bench.bench_wave import DEFAULT_DB, DEFAULT_REDIS, GATEWAYS, seed
from gateways.smpp.simulator import Account, SimulatorConfig, Smsc, run_in_thread
from loa.db import transaction
from loa.settings import Settings


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def wait_quiet(smsc: Smsc, quiet_s: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = smsc.stats.submits
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)
    raise RuntimeError("submits never stopped after a pause")


def act(client: TestClient, campaign_id: str, action: str) -> None:
    response = client.post(f"/v1/campaigns/{campaign_id}/{action}")
    if response.status_code != 200:
        raise RuntimeError(f"{action}: {response.status_code} {response.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--run-s", type=float, default=3.0, help="seconds of sending between pauses")
    parser.add_argument("--quiet-s", type=float, default=2.0, help="no submit for this long = stopped")
    parser.add_argument("--sms-workers", type=int, default=2)
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    engine = fresh_schema(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    campaign_id = seed(engine, args.messages)
    with transaction(engine) as session:
        key = create_key(session, get_or_create_org(session, "bench"), Role.ADMIN, "bench").key

    accounts = [Account(name, f"{name}-pw") for name, _, _ in GATEWAYS]
    config = SimulatorConfig(port=0, accounts=accounts, receipt_delay_s=(0.05, 0.2))
    with run_in_thread(config) as smsc, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        gateways_file = workdir / "gateways.toml"
        gateways_file.write_text(
            "\n".join(
                smpp_gateway_toml(name, smsc.port, binds=2, tps=100_000, window=10, carriers=[carrier])
                for name, carrier, _ in GATEWAYS
            )
        )
        settings = Settings(
            database_url=args.database_url,
            redis_url=args.redis_url,
            secret_key=SECRET,
            gateways_file=gateways_file,
            state_dir=workdir / "api-state",
        )
        client = TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"})
        stack = Stack(stack_env(args.database_url, args.redis_url, gateways_file, workdir / "state"), workdir)
        latencies: list[float] = []
        try:
            stack.start("worker", "-Q", "dispatch,receipts", "-c", "4", name="dispatch")
            for _ in range(args.sms_workers):
                stack.start("worker", "-Q", "sms", "-c", "4", name="sms")
            stack.start("scheduler", name="scheduler")
            for name, _, _ in GATEWAYS:
                wait_bound(args.redis_url, name, 2)
            act(client, campaign_id, "launch")
            for cycle in range(args.cycles):
                time.sleep(args.run_s)
                before = smsc.stats.submits
                paused_at = time.time()
                act(client, campaign_id, "pause")
                wait_quiet(smsc, args.quiet_s)
                log = smsc.stats.log
                last = max((r.received_at for r in log[before:]), default=paused_at)
                latencies.append(max(0.0, last - paused_at))
                print(
                    f"cycle {cycle + 1:3d}: {before:>8,} submits before the pause, last submit "
                    f"{latencies[-1]:.2f}s after it",
                    flush=True,
                )
                act(client, campaign_id, "resume")
        finally:
            stack.stop()
        total = smsc.stats.submits
        duplicates = smsc.stats.duplicates()

    print()
    print(f"pause latency over {len(latencies)} pauses (request → last submit at the SMSC):")
    print(
        f"  p50 {percentile(latencies, 50):.2f}s  p90 {percentile(latencies, 90):.2f}s  "
        f"p99 {percentile(latencies, 99):.2f}s  max {max(latencies):.2f}s   (target p99 < 5 s)"
    )
    print(f"  {total:,} submits during the run, {duplicates} duplicates (must be 0)")


if __name__ == "__main__":
    main()
