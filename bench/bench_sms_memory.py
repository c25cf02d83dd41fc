"""Worker memory during a 1M-recipient SMS campaign: resident set size (RSS) of every `loa worker`
process, sampled every two seconds while the campaign sends.

One SMS worker (holding the binds) and one dispatch/receipts worker send a seeded campaign of
`--recipients` messages through the simulator (TPS unlimited, receipts on), on Postgres. The run
stops when the campaign is fully sent or after `--seconds`; the figure is the highest RSS seen per
worker (target: < 250 MB), with the first and last samples to show the trend.

    .venv/bin/python -m bench.bench_sms_memory [--recipients 1000000] [--seconds 600]
        [--database-url URL] [--redis-url URL]

The database named in the URL must exist; its schema is dropped and rebuilt.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from bench.bench_sms_kit import (
    DEFAULT_DB,
    DEFAULT_REDIS,
    SimAccount,
    Stack,
    fresh_schema,
    kick_dispatch,
    launch,
    machine,
    pending,
    seed_campaign,
    simulator_process,
    smpp_gateway_toml,
    stack_env,
    wait_bound,
)

GATEWAY = "bench"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.recipients} recipients, at most {args.seconds}s")
    engine = fresh_schema(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    started = time.perf_counter()
    campaign_id = seed_campaign(engine, args.recipients)
    print(f"seeded in {time.perf_counter() - started:.0f}s")
    with (
        simulator_process([SimAccount(GATEWAY, f"{GATEWAY}-pw")], receipt_delay_s=(0.05, 0.5)) as port,
        tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp,
    ):
        workdir = Path(tmp)
        gateways = workdir / "gateways.toml"
        gateways.write_text(
            smpp_gateway_toml(GATEWAY, port, binds=1, tps=1_000_000, window=10, carriers=["Viettel"])
            + "default = true\n"
        )
        stack = Stack(stack_env(args.database_url, args.redis_url, gateways, workdir / "state"), workdir)
        samples: dict[str, list[float]] = {"sms": [], "dispatch,receipts": []}
        try:
            procs = {
                "sms": stack.start("worker", "-Q", "sms", "-c", "4", name="sms"),
                "dispatch,receipts": stack.start("worker", "-Q", "dispatch,receipts", "-c", "4", name="dispatch"),
            }
            stack.start("scheduler", name="scheduler")
            wait_bound(args.redis_url, GATEWAY, 1)
            launch(engine, campaign_id)
            kick_dispatch(args.redis_url)
            start = time.monotonic()
            left = args.recipients
            while time.monotonic() - start < args.seconds:
                for role, proc in procs.items():
                    samples[role].append(rss_mb(proc.pid))  # the Celery main process runs the threads
                time.sleep(2.0)
                left = pending(engine, campaign_id)
                if not left:
                    break
            elapsed = time.monotonic() - start
        finally:
            stack.stop()
    sent = args.recipients - left
    print(f"sent {sent} of {args.recipients} in {elapsed:.0f}s ({sent / elapsed:,.0f} msg/s)")
    for role, values in samples.items():
        print(
            f"worker -Q {role}: RSS max {max(values):.0f} MB | first {values[0]:.0f} MB | "
            f"last {values[-1]:.0f} MB | {len(values)} samples"
        )
    engine.dispose()


if __name__ == "__main__":
    main()
