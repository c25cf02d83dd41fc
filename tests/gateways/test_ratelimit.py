"""Tests of the shared GCRA limiter against a real Redis, including 4 competing OS processes
counted per calendar second the way an SMSC counts."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gateways.ratelimit import DEFAULT_CATCH_UP_S, MAX_CATCH_UP_S, RateLimiter, safe_rate

pytestmark = pytest.mark.services

REDIS_URL = os.environ.get("LOA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def client() -> Iterator[redis.Redis[bytes]]:
    conn: redis.Redis[bytes] = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        conn.ping()
    except redis.RedisError as exc:
        if os.environ.get("LOA_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Redis at {REDIS_URL} is required but unreachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} unreachable: {exc}")
    yield conn
    conn.close()


@pytest.fixture
def prefix(client: redis.Redis[bytes]) -> Iterator[str]:
    """A key prefix of this test's own, so tests sharing the Redis database never meet."""
    value = f"loa-test:rl:{uuid.uuid4().hex}:"
    yield value
    for key in client.scan_iter(match=value + "*"):
        client.delete(key)


def _tat(client: redis.Redis[bytes], prefix: str, key: str) -> int | None:
    raw = client.hget(prefix + key, "tat")
    return None if raw is None else int(raw)


# --- safe_rate: the per-calendar-second arithmetic, checked by brute force -------------------


@pytest.mark.parametrize("tps", [1, 2, 5, 10, 37, 200, 500, 1000])
def test_safe_rate_keeps_every_calendar_second_at_or_below_tps(tps: int) -> None:
    rate = safe_rate(tps)
    # The module's bound for a 1-s window, with and without the catch-up tolerance.
    for catch_up in (0.0, DEFAULT_CATCH_UP_S, MAX_CATCH_UP_S):
        assert math.floor(rate * (1 + catch_up)) + 1 <= tps
    rng = random.Random(tps)
    for _ in range(20):
        phase = rng.random()
        # Exact, perfectly spaced slots over 12 s, starting at an arbitrary phase of a second.
        per_second = Counter(math.floor(phase + k / rate) for k in range(int(rate * 12)))
        full = [per_second[second] for second in range(1, 11)]
        assert max(full) <= tps
        # tps = 1 may see 9 in 10 s: no rate below 1/s promises 10 (see safe_rate's docstring).
        assert sum(full) >= (0.95 if tps >= 2 else 0.9) * 10 * tps


def test_safe_rate_fractional_and_sub_one_tps() -> None:
    assert safe_rate(5.5) == pytest.approx(5 * 0.97)
    assert safe_rate(0.5) == pytest.approx(0.485)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="tps"):
            safe_rate(bad)


# --- single-key behaviour ----------------------------------------------------------------------


def test_reserve_records_only_when_it_fits(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    assert limiter.reserve("k", rate=10) == 0.0
    tat = _tat(client, prefix, "k")
    assert tat is not None
    wait = limiter.reserve("k", rate=10)
    assert 0 < wait <= 0.1
    assert _tat(client, prefix, "k") == tat, "a refused reserve must record nothing"


def test_burst_allows_that_many_at_once(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    assert [limiter.reserve("k", rate=1, burst=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.reserve("k", rate=1, burst=3) > 0.5


def test_catch_up_lets_a_late_sender_take_one_missed_slot_at_once(client: redis.Redis[bytes], prefix: str) -> None:
    strict = RateLimiter(client, prefix, catch_up_s=0)
    assert strict.reserve("strict", rate=100) == 0.0
    assert strict.reserve("strict", rate=100) > 0
    tolerant = RateLimiter(client, prefix, catch_up_s=0.01)  # one 10 ms interval at 100/s
    assert [tolerant.reserve("tolerant", rate=100) for _ in range(2)] == [0.0, 0.0]
    assert 0 < tolerant.reserve("tolerant", rate=100) <= 0.01
    with pytest.raises(ValueError, match="catch_up_s"):
        RateLimiter(client, prefix, catch_up_s=0.05)


def test_cost_consumes_that_many_intervals(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    assert limiter.reserve("k", rate=10, cost=3) == 0.0
    assert 0.2 < limiter.reserve("k", rate=10) <= 0.3


def test_acquire_books_the_next_slot_within_the_lookahead(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix, lookahead_s=0.5)
    assert limiter.reserve("k", rate=10) == 0.0
    first = _tat(client, prefix, "k")
    assert first is not None
    assert limiter.acquire("k", rate=10)
    # Booked exactly one interval after the first grant, not "now + interval".
    assert _tat(client, prefix, "k") == first + 100_000


def test_acquire_gives_up_beyond_max_wait_without_recording(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    assert limiter.reserve("k", rate=1) == 0.0
    tat = _tat(client, prefix, "k")
    assert not limiter.acquire("k", rate=1, max_wait=0.05)
    assert _tat(client, prefix, "k") == tat


def test_acquire_returns_false_when_stopped(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    assert limiter.reserve("k", rate=0.01) == 0.0  # the next slot is 100 s away
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    try:
        assert not limiter.acquire("k", rate=0.01, stop=stop)
    finally:
        timer.cancel()
    tat = _tat(client, prefix, "k")
    assert not limiter.acquire("other", rate=5, stop=stop), "a set stop refuses before asking"
    assert _tat(client, prefix, "other") is None
    assert _tat(client, prefix, "k") == tat


def test_a_fresh_key_is_granted_at_once_and_blocks_the_next_within_the_interval(
    client: redis.Redis[bytes], prefix: str
) -> None:
    limiter = RateLimiter(client, prefix, lookahead_s=0.0)
    assert limiter.acquire("k", rate=2)
    assert not limiter.acquire("k", rate=2, max_wait=0.2)
    assert limiter.acquire("k", rate=2, max_wait=1.0)


# --- several keys at once ---------------------------------------------------------------------


def test_acquire_many_consumes_nothing_while_one_key_refuses(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    assert limiter.reserve("campaign", rate=1) == 0.0
    campaign_tat = _tat(client, prefix, "campaign")
    wait = limiter.reserve_many([("gateway", 100), ("campaign", 1)])
    assert 0.5 < wait <= 1.0, "the wait is the refusing key's"
    assert not limiter.acquire_many([("gateway", 100), ("campaign", 1)], max_wait=0)
    assert _tat(client, prefix, "gateway") is None, "the gateway key must not be consumed"
    assert _tat(client, prefix, "campaign") == campaign_tat


def test_acquire_many_records_on_every_key_at_one_slot(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix, catch_up_s=0)
    assert limiter.acquire_many([("gateway", 100), ("campaign", 10)])
    gateway, campaign = _tat(client, prefix, "gateway"), _tat(client, prefix, "campaign")
    assert gateway is not None
    assert campaign is not None
    # Both advanced from the same slot: by 1/100 s and 1/10 s.
    assert campaign - gateway == 100_000 - 10_000
    assert limiter.reserve("gateway", rate=100) > 0
    assert limiter.reserve_many([("gateway", 100), ("campaign", 10)]) > 0.05


def test_arguments_are_checked(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    with pytest.raises(ValueError, match="rate"):
        limiter.reserve("k", rate=0)
    with pytest.raises(ValueError, match="cost"):
        limiter.reserve("k", rate=1, cost=0)
    with pytest.raises(ValueError, match="twice"):
        limiter.reserve_many([("k", 1), ("k", 2)])
    with pytest.raises(ValueError, match="at least one"):
        limiter.acquire_many([])


def test_unreachable_redis_raises_rather_than_granting() -> None:
    dead: redis.Redis[bytes] = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        RateLimiter(dead).reserve("k", rate=10)


# --- dynamic factor ---------------------------------------------------------------------------


def test_penalise_and_recover(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix, penalty_hold_s=0, recover_interval_s=0)
    assert limiter.factor("k") == 1.0
    assert limiter.penalise("k") == pytest.approx(0.5)
    assert limiter.penalise("k", factor=0.5, floor=0.2) == pytest.approx(0.25)
    assert limiter.penalise("k", factor=0.5, floor=0.2) == pytest.approx(0.2)
    assert limiter.factor("k") == pytest.approx(0.2)
    assert [limiter.recover("k", step=0.3) for _ in range(3)] == pytest.approx([0.5, 0.8, 1.0])
    assert limiter.factor("k") == 1.0
    assert client.hget(prefix + "k", "f") is None


def test_a_burst_of_throttles_is_one_penalty_and_recovery_waits(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)  # penalty_hold_s = recover_interval_s = 1
    assert [limiter.penalise("k") for _ in range(5)] == pytest.approx([0.5] * 5)
    assert limiter.recover("k") == pytest.approx(0.5), "no recovery right after a penalty"
    other = RateLimiter(client, prefix)  # another process: nothing cached, so it asks Redis
    assert other.recover("k") == pytest.approx(0.5), "the spacing is kept in Redis, not per process"


def test_factor_slows_the_key(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    limiter.penalise("k", factor=0.5)
    assert limiter.reserve("k", rate=10) == 0.0
    assert 0.15 < limiter.reserve("k", rate=10) <= 0.2  # interval 0.2 s, not 0.1 s


# --- expiry -----------------------------------------------------------------------------------


def test_idle_keys_expire_once_their_state_is_spent(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix)
    assert limiter.reserve("k", rate=10) == 0.0
    assert 0 < client.pttl(prefix + "k") <= 101
    deadline = time.monotonic() + 5
    while client.exists(prefix + "k") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not client.exists(prefix + "k")


def test_a_lowered_factor_outlives_the_rate_state(client: redis.Redis[bytes], prefix: str) -> None:
    limiter = RateLimiter(client, prefix, factor_ttl_s=60)
    limiter.penalise("k")
    assert limiter.reserve("k", rate=10) == 0.0
    assert 59_000 < client.pttl(prefix + "k") <= 60_000


# --- many processes, counted per calendar second ------------------------------------------------

TPS = 200
RUN_S = 3
PROCESSES = 4


def _grant_loop(url: str, prefix: str, ready: Any, go: Any, start: Any, out: Any) -> None:
    """Child process: acquire as fast as the limiter allows; report each grant's whole second."""
    conn: redis.Redis[bytes] = redis.Redis.from_url(url, socket_timeout=5)
    limiter = RateLimiter(conn, prefix)
    limiter.reserve("warm-up", rate=1000)  # load the script before the clock starts
    ready.put(os.getpid())
    go.wait()
    begin = start.value
    time.sleep(max(0.0, begin - time.time()))
    seconds: list[int] = []
    while True:
        limiter.acquire("smsc", safe_rate(TPS))
        now = time.time()
        if now >= begin + RUN_S:
            break
        seconds.append(math.floor(now))
    out.put(seconds)
    conn.close()


def test_processes_sharing_a_key_stay_within_tps_every_calendar_second(client: redis.Redis[bytes], prefix: str) -> None:
    ctx = mp.get_context("spawn")
    ready, out, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_grant_loop, args=(REDIS_URL, prefix, ready, go, start, out)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        # Start on a whole second so all RUN_S seconds of the run are full calendar seconds.
        start.value = math.ceil(time.time() + 0.2)
        go.set()
        per_second: Counter[int] = Counter()
        for _ in procs:
            per_second.update(out.get(timeout=60))
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    first = int(start.value)
    counts = [per_second[second] for second in range(first, first + RUN_S)]
    assert sum(per_second.values()) == sum(counts), "grants outside the run's seconds"
    assert max(counts) <= TPS, counts
    assert sum(counts) / RUN_S >= 0.95 * TPS, counts
