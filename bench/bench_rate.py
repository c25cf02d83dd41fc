"""Rate precision end to end: two gateways at 200 and 300 TPS, four `loa worker` processes, judged
by the SMSC simulator's own per-second counters (every submit_sm counts, as a carrier counts).

Each gateway gets a campaign big enough to keep it busy for the whole run; the run lasts
`--seconds` from the first submit. For each gateway it prints the highest calendar-second count
(must be <= TPS) and the mean and lowest over the full seconds of the steady part (target: mean
>= 95 % of TPS). The simulator runs in this process on its own event-loop thread; the bench's main
thread only sleeps meanwhile.

    .venv/bin/python -m bench.bench_rate [--seconds 60] [--workers 4] [--database-url URL] [--redis-url URL]

The database named in the URL must exist; its schema is dropped and rebuilt.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis

from bench.bench_sms_kit import (
    DEFAULT_DB,
    DEFAULT_REDIS,
    Stack,
    fresh_schema,
    kick_dispatch,
    launch,
    machine,
    seed_campaign,
    smpp_gateway_toml,
    stack_env,
    wait_bound,
)
from gateways.smpp.simulator import Account, SimulatorConfig, run_in_thread

GATEWAYS = (("viettel", 200.0, "Viettel", "+8496"), ("vina", 300.0, "Vinaphone", "+8491"))
BINDS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument("--keep", type=Path, help="keep the workers' logs in this directory")
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.workers} worker processes, {args.seconds}s")
    engine = fresh_schema(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    accounts = [Account(name, f"{name}-pw") for name, *_ in GATEWAYS]
    config = SimulatorConfig(port=0, accounts=accounts, keep_log=False, receipt_delay_s=(0.05, 0.5))
    with run_in_thread(config) as smsc, tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        gateways = workdir / "gateways.toml"
        gateways.write_text(
            "\n".join(
                smpp_gateway_toml(name, smsc.port, binds=BINDS, tps=tps, window=10, carriers=[carrier])
                for name, tps, carrier, _ in GATEWAYS
            )
        )
        campaigns = [
            seed_campaign(engine, int(tps * (args.seconds + 30)), prefix=prefix, carrier=carrier, name=name)
            for name, tps, carrier, prefix in GATEWAYS
        ]
        stack = Stack(stack_env(args.database_url, args.redis_url, gateways, workdir / "state"), workdir)
        try:
            for n in range(args.workers):
                stack.start("worker", "-Q", "sms,dispatch,receipts", "-c", "4", name=f"worker{n}")
            stack.start("scheduler", name="scheduler")
            for name, *_ in GATEWAYS:
                wait_bound(args.redis_url, name, BINDS)
            time.sleep(10)  # the fair share of binds settles: both gateways served by several workers
            for campaign_id in campaigns:
                launch(engine, campaign_id)
            kick_dispatch(args.redis_url)
            time.sleep(args.seconds + 5)
        finally:
            stack.stop()
        for name, tps, *_ in GATEWAYS:
            per_second = smsc.stats.per_second(name)
            seconds = sorted(per_second)
            # The steady part: from 3 s after the first submit, for the run's length, whole seconds only.
            steady = [per_second.get(s, 0) for s in range(seconds[0] + 3, seconds[0] + args.seconds)]
            print(
                f"{name}: cap {tps:.0f}/s | highest second {max(per_second.values())} | steady mean "
                f"{statistics.mean(steady):.1f} ({statistics.mean(steady) / tps:.1%}) | lowest {min(steady)} | "
                f"throttled {smsc.stats.throttled} | {sum(per_second.values())} submits"
            )
    engine.dispose()


if __name__ == "__main__":
    main()
