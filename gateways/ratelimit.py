"""The shared rate limiter: GCRA in one atomic Redis Lua script, used by every worker on every host.

Every send worker asks the same Redis before each submit, so a carrier's TPS limit and a campaign's
rate cap hold however many processes and hosts send. We wrote our own: the maintained Python
limiters are per-process, or fixed/sliding windows that let 2x through at a window edge, or GCRA
over a single key without a cost, an atomic multi-key check or a dynamic rate factor.

The algorithm (GCRA, virtual scheduling). Per key Redis keeps a theoretical arrival time TAT. With
emission interval T = 1 / (rate x factor) and tolerance tau = (burst - 1) x T + catch_up, a request
fits at slot s = max(now, TAT - tau) over all its keys; granting it moves each TAT to
max(TAT, s) + cost x T.
`now` is the Redis server's TIME, read inside the script, so every host agrees on it.
`reserve` grants only when s = now. `acquire` also books a slot up to `lookahead_s` ahead and
sleeps until it: a waiter that wakes late then still gets the slot it was woken for, where a
check-only limiter loses the lateness (we measured 12-19 % of 200 TPS, 4 processes on 2 cores).
`catch_up_s` (10 ms) lets a sender that stalled briefly (GC, a busy CPU) take the slots it missed
right after, instead of losing them: on a loaded 2-core host it kept 97 % of the rate where
catch_up = 0 kept 94-96 %. A refused request records nothing and learns the wait until its slot.

The bound. Slots are granted in nondecreasing order (now and TAT only grow). Let n cost-1 slots
s_1 <= ... <= s_n fall in any window of length W. Each grant pushes TAT at least T past the
previous slot, so TAT before grant n is >= s_1 + (n - 1) x T, and s_n >= TAT - tau. As
s_n - s_1 < W:
    n <= floor(rate x (W + tau)) + 1
With burst = 1 and no catch-up (tau = 0) that is floor(rate) + 1 per 1-s window, calendar seconds
included; the default catch-up makes it floor(rate x 1.01) + 1. With costs, the units in a window
are < rate x (W + tau) + (cost of the last grant): pace SMPP submits with cost=1 each. The factor
only lowers the rate, so the bound computed with factor 1 holds.

`safe_rate(tps)` picks the rate to configure; see its docstring for the per-second arithmetic.
A wiped Redis (restart, FLUSHDB) forgets TATs and factors: each key then allows what a fresh key
does (one grant plus tau's worth) on top of the slots already booked (< lookahead_s of traffic);
scripts reload themselves (redis-py `Script`). When Redis is unreachable every call raises
`redis.RedisError`: the limiter never fails open.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from loa import metrics

log = logging.getLogger(__name__)

# Share of the carrier's TPS we configure: 3 % of a second, less the catch-up tolerance (~20 ms),
# of timing noise between the limiter's slot and the carrier's counter can pass before a calendar
# second sees one too many.
SAFETY_MARGIN = 0.97
DEFAULT_LOOKAHEAD_S = 0.005
DEFAULT_CATCH_UP_S = 0.010
# Keeps SAFETY_MARGIN x (1 + catch_up) < 1, which safe_rate's bound needs, with ~10 ms to spare.
MAX_CATCH_UP_S = 0.020

# KEYS: one hash per limited key. ARGV: cost, horizon_us (-1: any), catch_up_us, then (rate, burst)
# per key.
# Returns {granted 0|1, wait_us}. Nothing is written unless every key grants the same slot.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local catch_up = tonumber(ARGV[3])
local tats, intervals = {}, {}
local slot = now
for i = 1, #KEYS do
  local state = redis.call('HMGET', KEYS[i], 'tat', 'f')
  local tat = tonumber(state[1]) or now
  local interval = 1000000 / (tonumber(ARGV[2 + 2 * i]) * (tonumber(state[2]) or 1))
  local earliest = tat - (tonumber(ARGV[3 + 2 * i]) - 1) * interval - catch_up
  if earliest > slot then slot = earliest end
  tats[i] = tat
  intervals[i] = interval
end
local wait = math.ceil(slot - now)
if horizon >= 0 and wait > horizon then
  return {0, wait}
end
for i = 1, #KEYS do
  -- Rounding TAT up keeps slots at least one interval apart in integer microseconds.
  local tat = math.ceil(math.max(tats[i], slot) + cost * intervals[i])
  redis.call('HSET', KEYS[i], 'tat', string.format('%.0f', tat))
  -- Once TAT has passed the state equals a fresh key, so it may vanish then; never shorten a
  -- longer TTL (a lowered factor keeps the hash alive).
  local ttl = math.ceil((tat - now) / 1000) + 1
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return {1, wait}
"""

# KEYS[1]: the hash. ARGV: multiplier, floor, hold_us, ttl_ms. Returns the factor as a string.
_PENALISE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'f', 'pt')
local f = tonumber(state[1]) or 1
if now - (tonumber(state[2]) or 0) >= tonumber(ARGV[3]) then
  f = math.min(f, math.max(tonumber(ARGV[2]), f * tonumber(ARGV[1])))
  redis.call('HSET', KEYS[1], 'f', tostring(f), 'pt', string.format('%.0f', now))
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return tostring(f)
"""

# KEYS[1]: the hash. ARGV: step, interval_us, ttl_ms. Returns the factor as a string.
_RECOVER_LUA = """
local state = redis.call('HMGET', KEYS[1], 'f', 'pt', 'rt')
local f = tonumber(state[1]) or 1
if f >= 1 then
  return '1'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local gap = tonumber(ARGV[2])
if now - (tonumber(state[2]) or 0) >= gap and now - (tonumber(state[3]) or 0) >= gap then
  f = math.min(1, f + tonumber(ARGV[1]))
  if f >= 1 then
    redis.call('HDEL', KEYS[1], 'f', 'pt', 'rt')
    return '1'
  end
  redis.call('HSET', KEYS[1], 'f', tostring(f), 'rt', string.format('%.0f', now))
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
end
return tostring(f)
"""


def safe_rate(tps: float) -> float:
    """The rate to give the limiter so that a carrier counting per calendar second sees <= `tps`.

    A per-second counter only sees whole numbers, so the real cap is N = floor(tps). By the bound
    in the module docstring (burst = 1) a 1-s window gets at most floor(rate x (1 + catch_up)) + 1
    slots, which is <= N exactly when rate x (1 + catch_up) < N. We return 0.97 x N: the bound
    holds for every N >= 1 and catch_up <= 20 ms, and N + 1 slots span at least N / rate - catch_up
    = 1.021 s (default catch-up), so ~20 ms of noise between slot and carrier is absorbed.

    Small tps: the bound needs nothing special (tps = 5 gives 4.85: floor(4.9) + 1 = 5), but
    counts are integers: a steady 10-s window holds floor or ceil of 9.7 x N slots, which is
    >= 95 % of 10 x N for N >= 2 and may be 9 of 10 (90 %) for N = 1; no rate below 1/s can
    promise 10 grants in every 10 s, so that loss is inherent. A fractional tps such as 5.5 is
    served as 5 (88 % of 5.5, 97 % of what a per-second counter can ever accept). Below 1 TPS the
    cap can only be an average over longer windows: we return 0.97 x tps (at most 1 per second).
    """
    if not math.isfinite(tps) or tps <= 0:
        raise ValueError(f"tps must be a positive number, got {tps!r}")
    if tps < 1:
        return tps * SAFETY_MARGIN
    return math.floor(tps) * SAFETY_MARGIN


def _check_rate(rate: float) -> None:
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")


class RateLimiter:
    """GCRA limits shared through Redis; see the module docstring for the algorithm and its bound.

    Thread-safe as far as the Redis client is (redis-py's pooled client is). `lookahead_s` is how
    far ahead `acquire` books a slot: it absorbs that much wake-up lateness. Its price: when an
    `acquire_many` waits for one key (say a campaign cap), another key of it that others also use
    (the gateway) may sit idle up to that long per grant. `catch_up_s` is the time tolerance
    described in the module docstring (0 for the strict floor(rate) + 1 bound).
    `factor_ttl_s` is how long a lowered factor is remembered without new penalties or
    recoveries; `penalty_hold_s` makes a burst of throttle answers (every submit in flight gets
    one) count as one penalty; `recover_interval_s` spaces recovery steps per key.
    """

    def __init__(
        self,
        redis: redis.Redis[Any],
        prefix: str = "loa:rl:",
        *,
        lookahead_s: float = DEFAULT_LOOKAHEAD_S,
        catch_up_s: float = DEFAULT_CATCH_UP_S,
        factor_ttl_s: float = 600.0,
        penalty_hold_s: float = 1.0,
        recover_interval_s: float = 1.0,
    ) -> None:
        if not 0 <= lookahead_s <= 1:
            raise ValueError(f"lookahead_s must be within [0, 1], got {lookahead_s!r}")
        if not 0 <= catch_up_s <= MAX_CATCH_UP_S:
            raise ValueError(f"catch_up_s must be within [0, {MAX_CATCH_UP_S}], got {catch_up_s!r}")
        if factor_ttl_s <= 0 or penalty_hold_s < 0 or recover_interval_s < 0:
            raise ValueError("factor_ttl_s must be positive; penalty_hold_s, recover_interval_s >= 0")
        self._redis = redis
        self._prefix = prefix
        self._lookahead_s = lookahead_s
        self._catch_up_us = round(catch_up_s * 1_000_000)
        self._factor_ttl_ms = max(1, round(factor_ttl_s * 1000))
        self._penalty_hold_us = round(penalty_hold_s * 1_000_000)
        self._recover_interval_s = recover_interval_s
        self._gcra = redis.register_script(_GCRA_LUA)
        self._penalise = redis.register_script(_PENALISE_LUA)
        self._recover = redis.register_script(_RECOVER_LUA)
        # key -> (monotonic time of our last recover call, factor it returned): most successes
        # then cost no round trip. Races between threads only cost an extra call.
        self._recovered: dict[str, tuple[float, float]] = {}

    def reserve(self, key: str, rate: float, cost: int = 1, burst: int = 1) -> float:
        """If `cost` units fit now, record them and return 0.0; else record nothing and return
        the seconds to wait before they would fit."""
        granted, wait = self._attempt([(key, rate)], cost, burst, 0.0)
        return 0.0 if granted else wait

    def reserve_many(self, keys_rates: Sequence[tuple[str, float]], cost: int = 1) -> float:
        """`reserve` over several keys at once: all are recorded, or none and the longest wait."""
        granted, wait = self._attempt(keys_rates, cost, 1, 0.0)
        if not granted:
            metrics.observe_wait(keys_rates[0][0], wait)  # the caller sleeps (part of) it
        return 0.0 if granted else wait

    def acquire(
        self,
        key: str,
        rate: float,
        cost: int = 1,
        burst: int = 1,
        *,
        max_wait: float | None = None,
        stop: threading.Event | None = None,
    ) -> bool:
        """Sleep until `cost` units are granted on `key` and return True.

        Returns False as soon as the wait is known to exceed `max_wait` (nothing recorded), or
        when `stop` is set (a slot already booked is then given up unused).
        """
        return metrics.timed_wait(key, lambda: self._acquire([(key, rate)], cost, burst, max_wait, stop))

    def acquire_many(
        self,
        keys_rates: Sequence[tuple[str, float]],
        cost: int = 1,
        *,
        max_wait: float | None = None,
        stop: threading.Event | None = None,
    ) -> bool:
        """Sleep until every key grants `cost` units at the same slot (e.g. the gateway's TPS and
        the campaign's cap), then return True; no key is consumed while another refuses.

        False as in `acquire`; without `max_wait` or `stop` it only returns True.
        """
        if not keys_rates:
            raise ValueError("need at least one key")
        return metrics.timed_wait(keys_rates[0][0], lambda: self._acquire(keys_rates, cost, 1, max_wait, stop))

    def penalise(self, key: str, factor: float = 0.5, floor: float = 0.1) -> float:
        """The carrier throttled us (SMPP 0x58): multiply the key's rate factor by `factor`, not
        below `floor`, and return the new factor. Further calls within `penalty_hold_s` of the
        last penalty return the factor unchanged."""
        if not 0 < factor < 1 or not 0 < floor <= 1:
            raise ValueError(f"need 0 < factor < 1 and 0 < floor <= 1, got {factor!r}, {floor!r}")
        args = (factor, floor, self._penalty_hold_us, self._factor_ttl_ms)
        new = float(self._penalise(keys=[self._prefix + key], args=args))
        self._recovered.pop(key, None)
        log.info("rate factor for %s is now %.3f after throttling", key, new)
        return new

    def recover(self, key: str, step: float = 0.05) -> float:
        """A send succeeded: raise the key's factor by `step` toward 1.0 and return it.

        Call it on every success; it reaches Redis at most once per `recover_interval_s` per
        process, and the factor rises at most once per interval per key across all processes,
        never within an interval after a penalty.
        """
        if step <= 0:
            raise ValueError(f"step must be positive, got {step!r}")
        now = time.monotonic()
        seen = self._recovered.get(key)
        if seen is not None and now - seen[0] < self._recover_interval_s:
            return seen[1]
        args = (step, round(self._recover_interval_s * 1_000_000), self._factor_ttl_ms)
        new = float(self._recover(keys=[self._prefix + key], args=args))
        if len(self._recovered) > 4096:  # keys come and go with campaigns: keep this bounded
            self._recovered.clear()
        self._recovered[key] = (now, new)
        log.debug("rate factor for %s is now %.3f", key, new)
        return new

    def factor(self, key: str) -> float:
        """The key's current rate factor (1.0 when never throttled or fully recovered)."""
        value = self._redis.hget(self._prefix + key, "f")
        return 1.0 if value is None else float(value)

    def _attempt(
        self, keys_rates: Sequence[tuple[str, float]], cost: int, burst: int, horizon_s: float | None
    ) -> tuple[bool, float]:
        """One script call: book the common slot if it is within `horizon_s` (None: any)."""
        if not keys_rates:
            raise ValueError("need at least one key")
        if cost < 1 or burst < 1:
            raise ValueError(f"cost and burst must be >= 1, got {cost!r}, {burst!r}")
        keys = [self._prefix + key for key, _ in keys_rates]
        if len(set(keys)) != len(keys):
            raise ValueError("a key appears twice; its second reading would overwrite the first")
        horizon_us = -1 if horizon_s is None else math.floor(horizon_s * 1_000_000)
        args: list[float | int] = [cost, horizon_us, self._catch_up_us]
        for _, rate in keys_rates:
            _check_rate(rate)
            args += [rate, burst]
        granted, wait_us = self._gcra(keys=keys, args=args)
        return bool(granted), int(wait_us) / 1_000_000

    def _acquire(
        self,
        keys_rates: Sequence[tuple[str, float]],
        cost: int,
        burst: int,
        max_wait: float | None,
        stop: threading.Event | None,
    ) -> bool:
        deadline = None if max_wait is None else time.monotonic() + max_wait
        while stop is None or not stop.is_set():
            horizon = self._lookahead_s
            if deadline is not None:
                horizon = max(0.0, min(horizon, deadline - time.monotonic()))
            granted, wait = self._attempt(keys_rates, cost, burst, horizon)
            if granted:
                return wait <= 0 or not _sleep(wait, stop)
            # The wait is to the earliest slot (only a recovering factor brings it forward), so
            # one past the deadline is not worth sleeping out.
            if deadline is not None and time.monotonic() + wait > deadline:
                return False
            # Wake when the slot comes within the lookahead, and book it then.
            if _sleep(wait - self._lookahead_s, stop):
                return False
        return False


def _sleep(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep; True when `stop` was set meanwhile."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)
