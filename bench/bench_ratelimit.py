"""Benchmark of the shared GCRA limiter, counted per calendar second as an SMSC counts.

Two keys at 200 and 300 TPS, each limited at `safe_rate(tps)`; every process runs one thread per
key that acquires as fast as the limiter allows, for the given seconds. Grants are timestamped
with `time.time()` right after `acquire` returns; per key it prints the max, mean and min grants
over the full calendar seconds of the run. The limit holds when max <= TPS; the target for mean is
>= 95 % of TPS.

    .venv/bin/python -m bench.bench_ratelimit [--seconds 60] [--processes 4] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import threading
import time
import uuid
from collections import Counter
from typing import Any

import redis

from gateways.ratelimit import DEFAULT_CATCH_UP_S, DEFAULT_LOOKAHEAD_S, RateLimiter, safe_rate

DEFAULT_URL = os.environ.get("LOA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TPS = (200.0, 300.0)


def _drive(limiter: RateLimiter, key: str, rate: float, start: float, end: float, out: list[float]) -> None:
    time.sleep(max(0.0, start - time.time()))
    while True:
        limiter.acquire(key, rate)
        now = time.time()
        if now >= end:
            return
        out.append(now)


def _worker(url: str, lookahead_s: float, keys: list[str], seconds: int, ready: Any, go: Any, begin: Any) -> None:
    client = redis.Redis.from_url(url)
    limiter = RateLimiter(client, lookahead_s=lookahead_s)
    limiter.reserve(f"{keys[0]}:warm-up", 1000.0)  # load the script before the clock starts
    ready.put(os.getpid())
    go.wait()
    start = begin.value
    stamps: dict[str, list[float]] = {key: [] for key in keys}
    threads = [
        threading.Thread(target=_drive, args=(limiter, key, safe_rate(tps), start, start + seconds, stamps[key]))
        for key, tps in zip(keys, TPS, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Whole seconds since the epoch are calendar seconds; send integers, not every timestamp.
    ready.put({key: [math.floor(t) for t in ts] for key, ts in stamps.items()})
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="length of the run (default 60)")
    parser.add_argument("--processes", type=int, default=4, help="competing processes (default 4)")
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument(
        "--lookahead-ms", type=float, default=DEFAULT_LOOKAHEAD_S * 1000, help="limiter lookahead_s in ms"
    )
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    keys = [f"bench:{run}:{int(tps)}tps" for tps in TPS]
    ctx = mp.get_context("spawn")
    queue, go, begin = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    worker_args = (args.redis_url, args.lookahead_ms / 1000, keys, args.seconds, queue, go, begin)
    procs = [ctx.Process(target=_worker, args=worker_args) for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    for _ in procs:
        queue.get()  # ready
    # Start on a whole second once every process is ready, so each second counted is a full one.
    start = math.ceil(time.time() + 0.2)
    begin.value = start
    go.set()
    per_second: dict[str, Counter[int]] = {key: Counter() for key in keys}
    for _ in procs:
        for key, seconds in queue.get().items():
            per_second[key].update(seconds)
    for proc in procs:
        proc.join()
    end = start + args.seconds

    print(
        f"{args.processes} processes, {args.seconds} full calendar seconds, "
        f"lookahead {args.lookahead_ms:g} ms, catch-up {DEFAULT_CATCH_UP_S * 1000:g} ms"
    )
    for key, tps in zip(keys, TPS, strict=True):
        counts = [per_second[key][second] for second in range(start, end)]
        mean = sum(counts) / len(counts)
        verdict = "ok" if max(counts) <= tps and mean >= 0.95 * tps else "FAIL"
        print(
            f"  {tps:5.0f} TPS (rate {safe_rate(tps):.1f}): max {max(counts)}  mean {mean:.1f} "
            f"({mean / tps:.1%})  min {min(counts)}  {verdict}"
        )


if __name__ == "__main__":
    main()
