"""Gateway health in real Redis: submit statistics, the error-rate and no-worker failover marks,
the worker heartbeat behind the fair share of binds, and the status view of `GET /v1/gateways`."""

from __future__ import annotations

import time

import redis

from gateways import health
from gateways.config import GatewaysConfig, SmppGateway


def gw(name: str, **kw: object) -> SmppGateway:
    return SmppGateway(name=name, host="127.0.0.1", port=2775, system_id=name, password="pw", **kw)  # type: ignore[arg-type]


CONFIG = GatewaysConfig(
    smpp=[
        gw("primary", fallback="backup", failover={"after_s": 1, "error_rate": 0.5}, tps=100, binds=2),
        gw("backup"),
    ]
)
PRIMARY, BACKUP = CONFIG.smpp


def test_recent_statistics_sum_the_last_seconds(redis_client: redis.Redis[bytes]) -> None:
    health.count_results(redis_client, PRIMARY, 30, 6, 2)
    health.count_results(redis_client, PRIMARY, 10, 0, 0)
    stats = health.recent(redis_client, "primary")
    assert (stats.submits, stats.errors, stats.throttles) == (40, 6, 2)
    assert stats.error_rate == 6 / 40
    assert health.recent(redis_client, "backup").submits == 0


def test_an_error_rate_over_the_threshold_marks_the_gateway_down_for_after_s(redis_client: redis.Redis[bytes]) -> None:
    health.count_results(redis_client, PRIMARY, 10, 9, 0)  # too small a sample to judge
    health.check_error_rate(redis_client, PRIMARY)
    assert health.down_gateways(redis_client, CONFIG) == {}
    health.count_results(redis_client, PRIMARY, 30, 20, 0)  # the batch's own count judges at once
    down = health.down_gateways(redis_client, CONFIG)
    assert list(down) == ["primary"]
    assert down["primary"].startswith("error rate 72%")
    time.sleep(1.2)  # after_s: then it is tried again
    redis_client.set("loa:lease:smpp:primary:0", "someone")
    assert health.down_gateways(redis_client, CONFIG) == {}


def test_the_health_round_judges_what_batches_without_errors_do_not(redis_client: redis.Redis[bytes]) -> None:
    down = health.DOWN_KEY.format("primary")
    health.count_results(redis_client, PRIMARY, 30, 30, 0)
    redis_client.delete(down)  # expired after after_s, or Redis lost it
    health.count_results(redis_client, PRIMARY, 5, 0, 0)  # no errors: no extra round trip to judge
    assert not redis_client.exists(down)
    health.check_error_rate(redis_client, PRIMARY)  # the once-a-second round: 30 of 35 in the window
    assert redis_client.get(down) == b"error rate 86% over 10s (30 of 35)"
    health.count_results(redis_client, BACKUP, 30, 30, 0)  # no fallback: it keeps its traffic
    assert not redis_client.exists(health.DOWN_KEY.format("backup"))


def test_a_gateway_whose_binds_nobody_holds_for_after_s_is_down(redis_client: redis.Redis[bytes]) -> None:
    assert health.down_gateways(redis_client, CONFIG) == {}  # first seen without a holder
    time.sleep(1.1)
    assert "no worker has held a bind" in health.down_gateways(redis_client, CONFIG)["primary"]
    redis_client.delete(health.DOWN_KEY.format("primary"))
    redis_client.set("loa:lease:smpp:primary:1", "w")
    assert health.down_gateways(redis_client, CONFIG) == {}
    assert not redis_client.exists(health.UNHELD_KEY.format("primary"))


def test_clearing_a_bind_mark_leaves_an_error_rate_mark(redis_client: redis.Redis[bytes]) -> None:
    health.mark_down(redis_client, "primary", "error rate 90%", 5)
    health.clear_down(redis_client, "primary", only_reason_prefix="cannot bind")
    assert redis_client.exists(health.DOWN_KEY.format("primary"))
    health.mark_down(redis_client, "primary", "cannot bind for 61s", 5)
    health.clear_down(redis_client, "primary", only_reason_prefix="cannot bind")
    assert not redis_client.exists(health.DOWN_KEY.format("primary"))


def test_the_heartbeat_counts_live_workers(redis_client: redis.Redis[bytes]) -> None:
    assert health.heartbeat(redis_client, "primary", "a") == 1
    assert health.heartbeat(redis_client, "primary", "b") == 2
    assert health.heartbeat(redis_client, "primary", "a") == 2
    assert health.heartbeat(redis_client, "primary", "b", leaving=True) == 1
    redis_client.zadd(health.WORKERS_KEY.format("primary"), {"dead": time.time() - 60})
    assert health.heartbeat(redis_client, "primary", "a") == 1


def test_status_shows_sessions_rates_queues_and_marks(redis_client: redis.Redis[bytes]) -> None:
    redis_client.set("loa:lease:smpp:primary:0", "host:1:abc")
    health.publish_binds(redis_client, "primary", {0: {"state": "bound", "outstanding": 3}})
    redis_client.hset("loa:rl:smpp:primary", "f", "0.5")
    redis_client.rpush("sms.primary", "t1", "t2")
    health.count_results(redis_client, PRIMARY, 50, 0, 0)
    items = {i["name"]: i for i in health.gateway_status(redis_client, CONFIG, lambda n: f"sms.{n}", {"backup": 4})}
    primary = items["primary"]
    assert primary["bound"] == 1
    assert primary["sessions"] == [
        {"slot": 0, "leased_by": "host:1:abc", "state": "bound", "outstanding": 3},
        {"slot": 1, "leased_by": None, "state": "free"},
    ]
    assert (primary["rate_factor"], primary["allowed_rate"], primary["queue_depth"]) == (0.5, 48.5, 2)
    assert primary["current_rate"] == 50 / health.RATE_WINDOW_S
    assert items["backup"]["parked_receipts_over_7_days"] == 4
    offline = health.gateway_status(None, CONFIG, lambda n: n, {})
    assert offline[0]["bound"] is None
