"""SMPP gateway health shared through Redis: recent submit statistics, failover marks, the bind
state each worker reports, and the status view behind `GET /v1/gateways`.

Everything here is advisory and expires on its own: Redis may be wiped at any time, and then a
gateway simply counts as healthy until the workers' next reports (a few seconds).

Failover (a gateway with a `fallback`): the gateway is *down* while a mark `loa:gw:down:<name>`
exists. Workers set it when they hold a bind lease but cannot bind for `failover.after_s`, or
when the share of failed submits over the last `ERROR_WINDOW_S` seconds passes
`failover.error_rate` (judged by each send batch that counts errors, and by the once-a-second
health round as a backstop); the dispatcher sets it when no worker has held any of the gateway's
bind leases for `after_s`. An error-rate mark lasts `after_s` and is then tried again; a bind
mark goes as soon as a session binds. While down, the dispatcher routes the gateway's numbers to
its fallback and hands back the messages waiting in its queue (see `campaigns/dispatch.py`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from gateways.config import Failover, GatewaysConfig, SmppGateway

log = logging.getLogger(__name__)

DOWN_KEY = "loa:gw:down:{}"
UNHELD_KEY = "loa:gw:unheld:{}"
STATS_KEY = "loa:gw:stats:{}:{}"  # gateway, calendar second
BIND_KEY = "loa:gw:bind:{}:{}"  # gateway, slot
LEASE_PATTERN = "loa:lease:smpp:{}:*"
LIMITER_KEY = "loa:rl:smpp:{}"

WORKERS_KEY = "loa:gw:workers:{}"  # sorted set: worker owner id → last heartbeat
WORKER_TTL_S = 10.0

STATS_TTL_S = 120
BIND_STATE_TTL_S = 10
ERROR_WINDOW_S = 10
RATE_WINDOW_S = 5
# Below this many submits in the window an error rate says little (three failures of five).
MIN_SAMPLE = 20
DEFAULT_FAILOVER = Failover(after_s=60.0, error_rate=0.5)


@dataclass(frozen=True)
class Recent:
    """Submit statistics of one gateway over the last few seconds, all workers together."""

    seconds: int
    submits: int
    errors: int
    throttles: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.submits if self.submits else 0.0

    @property
    def rate(self) -> float:
        return self.submits / self.seconds


def failover_of(gateway: SmppGateway) -> Failover | None:
    """The failover thresholds of a gateway that has a fallback (defaults when not configured)."""
    if gateway.fallback is None:
        return None
    return gateway.failover or DEFAULT_FAILOVER


def count_results(client: redis.Redis[bytes], gateway: SmppGateway, submits: int, errors: int, throttles: int) -> None:
    """Add one batch's submit results to the gateway's current one-second bucket.

    A batch with errors then judges the error rate of a gateway with a fallback at once: waiting
    for the health round lets the sessions burn through the gateway's backlog first."""
    if not submits:
        return
    key = STATS_KEY.format(gateway.name, int(time.time()))
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(key, "submits", submits)
    if errors:
        pipe.hincrby(key, "errors", errors)
    if throttles:
        pipe.hincrby(key, "throttles", throttles)
    pipe.expire(key, STATS_TTL_S)
    pipe.execute()
    if errors:
        check_error_rate(client, gateway)


def recent(client: redis.Redis[bytes], gateway: str, seconds: int = ERROR_WINDOW_S) -> Recent:
    """Sums over the last `seconds` complete seconds plus the current one."""
    now = int(time.time())
    pipe = client.pipeline(transaction=False)
    for second in range(now - seconds, now + 1):
        pipe.hmget(STATS_KEY.format(gateway, second), "submits", "errors", "throttles")
    totals = [0, 0, 0]
    for values in pipe.execute():
        for i, value in enumerate(values):
            totals[i] += int(value or 0)
    return Recent(seconds, *totals)


def mark_down(client: redis.Redis[bytes], gateway: str, reason: str, ttl_s: float) -> None:
    if client.set(DOWN_KEY.format(gateway), reason, px=max(1, round(ttl_s * 1000)), get=True) is None:
        log.warning("gateway %s is down (%s): its traffic goes to its fallback", gateway, reason)


def clear_down(client: redis.Redis[bytes], gateway: str, only_reason_prefix: str | None = None) -> None:
    """Lift the mark (if its reason starts with the prefix, when one is given)."""
    key = DOWN_KEY.format(gateway)
    if only_reason_prefix is not None:
        current = client.get(key)
        if current is None or not current.decode(errors="replace").startswith(only_reason_prefix):
            return
    if client.delete(key):
        log.info("gateway %s is back up: it takes its traffic again", gateway)


def check_error_rate(client: redis.Redis[bytes], gateway: SmppGateway) -> Recent | None:
    """Mark the gateway down when its recent error rate passes the failover threshold."""
    failover = failover_of(gateway)
    if failover is None:
        return None
    stats = recent(client, gateway.name)
    if stats.submits >= MIN_SAMPLE and stats.error_rate >= failover.error_rate:
        mark_down(
            client,
            gateway.name,
            f"error rate {stats.error_rate:.0%} over {stats.seconds}s ({stats.errors} of {stats.submits})",
            failover.after_s,
        )
    return stats


def down_gateways(client: redis.Redis[bytes], gateways: GatewaysConfig) -> dict[str, str]:
    """Gateway name → why it is down, for gateways that have a fallback.

    Also the dispatcher's own check: a gateway none of whose bind leases has been held for
    `after_s` (no SMS worker for it, or all of them dead) is marked down."""
    down: dict[str, str] = {}
    candidates = [g for g in gateways.smpp if g.fallback is not None]
    if not candidates:
        return down
    pipe = client.pipeline(transaction=False)
    for g in candidates:
        pipe.get(DOWN_KEY.format(g.name))
    marks = pipe.execute()
    now = time.time()
    for g, mark in zip(candidates, marks, strict=True):
        if mark is not None:
            down[g.name] = mark.decode(errors="replace")
            continue
        failover = failover_of(g)
        assert failover is not None
        held = next(iter(client.scan_iter(LEASE_PATTERN.format(g.name), count=100)), None) is not None
        unheld = UNHELD_KEY.format(g.name)
        if held:
            client.delete(unheld)
            continue
        client.set(unheld, str(now), nx=True, ex=int(failover.after_s * 4) + 60)
        since = float(client.get(unheld) or now)
        if now - since >= failover.after_s:
            reason = f"no worker has held a bind for {now - since:.0f}s"
            mark_down(client, g.name, reason, max(5.0, failover.after_s / 4))
            down[g.name] = reason
    return down


def heartbeat(client: redis.Redis[bytes], gateway: str, owner: str, *, leaving: bool = False) -> int:
    """Note that `owner` (a worker process) serves `gateway` now; returns how many workers do.

    Workers use the count for a fair share of the gateway's binds (see `workers/smpp_runtime.py`)."""
    key = WORKERS_KEY.format(gateway)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    if leaving:
        pipe.zrem(key, owner)
    else:
        pipe.zadd(key, {owner: now})
    pipe.zremrangebyscore(key, 0, now - WORKER_TTL_S)
    pipe.zcard(key)
    pipe.expire(key, int(WORKER_TTL_S * 6))
    return int(pipe.execute()[2])


def publish_binds(client: redis.Redis[bytes], gateway: str, states: Mapping[int, Mapping[str, Any]]) -> None:
    """A worker's report of the sessions it holds for a gateway (slot → state), valid for a while."""
    if not states:
        return
    pipe = client.pipeline(transaction=False)
    for slot, state in states.items():
        pipe.set(BIND_KEY.format(gateway, slot), json.dumps(state), ex=BIND_STATE_TTL_S)
    pipe.execute()


def _bind_states(client: redis.Redis[bytes], g: SmppGateway) -> list[dict[str, Any]]:
    raw = client.mget([BIND_KEY.format(g.name, slot) for slot in range(g.binds)])
    leases = client.mget([f"loa:lease:smpp:{g.name}:{slot}" for slot in range(g.binds)])
    out: list[dict[str, Any]] = []
    for slot, (value, lease) in enumerate(zip(raw, leases, strict=True)):
        state: dict[str, Any] = {"slot": slot, "leased_by": lease.decode(errors="replace") if lease else None}
        if value is not None and lease is not None:
            state.update(json.loads(value))
        state.setdefault("state", "free" if lease is None else "leased")
        out.append(state)
    return out


def gateway_status(
    client: redis.Redis[bytes] | None, gateways: GatewaysConfig, queue_of: Any, parked: Mapping[str, int]
) -> list[dict[str, Any]]:
    """One entry per SMPP gateway: configuration, bind state, rate and queue depth.

    `queue_of(name)` names the Celery queue; `parked` counts receipts parked over 7 days per
    gateway. Without Redis the live fields are None.
    """
    items: list[dict[str, Any]] = []
    for g in gateways.smpp:
        item: dict[str, Any] = {
            "name": g.name,
            "type": "smpp",
            "host": g.host,
            "port": g.port,
            "system_id": g.system_id,
            "bind_mode": g.bind_mode,
            "binds": g.binds,
            "tps": g.tps,
            "window": g.window,
            "carriers": list(g.carriers),
            "default": g.default,
            "fallback": g.fallback,
            "parked_receipts_over_7_days": int(parked.get(g.name, 0)),
            "bound": None,
            "sessions": None,
            "rate_factor": None,
            "allowed_rate": None,
            "current_rate": None,
            "error_rate": None,
            "queue_depth": None,
            "down": None,
        }
        if client is not None:
            try:
                item.update(_live(client, g, queue_of))
            except redis.RedisError as exc:
                log.debug("gateway %s: live status unavailable: %s", g.name, exc)
        items.append(item)
    return items


def _live(client: redis.Redis[bytes], g: SmppGateway, queue_of: Any) -> dict[str, Any]:
    from gateways.ratelimit import safe_rate

    sessions = _bind_states(client, g)
    factor_raw = client.hget(LIMITER_KEY.format(g.name), "f")
    factor = float(factor_raw) if factor_raw is not None else 1.0
    stats = recent(client, g.name, RATE_WINDOW_S)
    down = client.get(DOWN_KEY.format(g.name))
    return {
        "bound": sum(1 for s in sessions if s.get("state") == "bound"),
        "sessions": sessions,
        "rate_factor": round(factor, 3),
        "allowed_rate": round(safe_rate(g.tps) * factor, 1),
        "current_rate": round(stats.rate, 1),
        "error_rate": round(stats.error_rate, 3),
        "queue_depth": int(client.llen(queue_of(g.name))),
        "down": down.decode(errors="replace") if down is not None else None,
    }
