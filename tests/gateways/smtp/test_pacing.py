"""DomainPacer on the real Redis limiter: fast domains go while a slow one waits, long waits leave
the batch spread at the domain's rate, 4xx slows a domain down for everyone, caps by domain."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from gateways.ratelimit import RateLimiter
from gateways.smtp.pacing import DomainPacer, DomainRates, domain_of


@pytest.fixture
def limiter(redis_client: redis.Redis[bytes]) -> RateLimiter:
    return RateLimiter(redis_client, prefix=f"test:{uuid.uuid4().hex}:")


def pacer(limiter: RateLimiter, rates: dict[str, float], **kwargs: Any) -> DomainPacer[str]:
    return DomainPacer(
        limiter,
        domain_key=lambda d: f"domain:{d}",
        rates=DomainRates(rates),
        shared=[("relay", 10_000.0)],
        **kwargs,
    )


def drain(p: DomainPacer[str]) -> list[list[str]]:
    slices = []
    while chunk := p.next_slice():
        slices.append([item for _, item in chunk])
    return slices


def test_fast_domains_go_while_a_slow_one_waits(limiter: RateLimiter) -> None:
    p = pacer(limiter, {"slow.vn": 4, "*": 1000})
    for i in range(4):
        p.add("slow.vn", f"slow{i}")
    for i in range(60):
        p.add(f"fast{i % 2}.vn", f"fast{i}")

    started = time.monotonic()
    slices = drain(p)
    elapsed = time.monotonic() - started

    # Every fast message is in the first slice, next to the one slow message that fitted.
    assert sorted(slices[0]) == sorted(["slow0", *(f"fast{i}" for i in range(60))])
    assert slices[1:] == [["slow1"], ["slow2"], ["slow3"]]  # then the slow domain at its 4/s
    assert elapsed >= 0.6
    assert p.deferred == []


def test_a_waiting_domain_is_skipped_not_slept_on(limiter: RateLimiter) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    p = pacer(limiter, {"slow.vn": 2, "*": 1000}, sleep=sleep)
    assert limiter.reserve("domain:slow.vn", 2) == 0  # another batch has just used the slow domain
    for i in range(2):
        p.add("slow.vn", f"s{i}")
    for i in range(10):
        p.add("fast.vn", f"f{i}")

    assert [item for _, item in p.next_slice()] == [f"f{i}" for i in range(10)]
    assert slept == []  # the fast domain did not wait for the slow one
    assert drain(p) == [["s0"], ["s1"]]  # then the slow one, at its own pace


def test_a_long_wait_leaves_the_batch_spread_at_the_domain_rate(limiter: RateLimiter) -> None:
    p = pacer(limiter, {"slow.vn": 0.5}, defer_after_s=1.0)
    for i in range(5):
        p.add("slow.vn", f"m{i}")
    p.add("other.vn", "x")

    assert sorted(item for _, item in p.next_slice()) == ["m0", "x"]
    assert p.next_slice() == []  # the next slow one would wait ~2 s: not in this batch
    assert [item for item, _ in p.deferred] == ["m1", "m2", "m3", "m4"]
    delays = [delay for _, delay in p.deferred]
    assert 1.5 < delays[0] <= 2.0
    assert [round(b - a, 3) for a, b in zip(delays, delays[1:], strict=False)] == [2.0, 2.0, 2.0]


def test_the_batch_budget_bounds_how_long_a_domain_is_waited_for(limiter: RateLimiter) -> None:
    p = pacer(limiter, {"slow.vn": 5}, budget_s=0.5, defer_after_s=1.0)
    for i in range(10):
        p.add("slow.vn", f"m{i}")
    slices = drain(p)
    sent = [item for chunk in slices for item in chunk]
    # 5/s for ~0.5 s: a few go out, the rest wait in the database rather than in this thread.
    assert 2 <= len(sent) <= 5, sent
    assert len(sent) + len(p.deferred) == 10


def test_4xx_halves_a_domain_for_every_worker_and_success_recovers_it(redis_client: redis.Redis[bytes]) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RateLimiter(redis_client, prefix=prefix)
    pacer(limiter, {"*": 10}).penalise("grey.vn")
    assert limiter.factor("domain:grey.vn") == 0.5
    assert limiter.factor("domain:other.vn") == 1.0
    # Another process's pacer sees the same factor through Redis, and raises it on success.
    elsewhere = RateLimiter(redis_client, prefix=prefix, recover_interval_s=0)
    pacer(elsewhere, {"*": 10}).recover("grey.vn")
    assert limiter.factor("domain:grey.vn") == pytest.approx(0.55)


def test_remaining_hands_back_what_was_not_sent(limiter: RateLimiter) -> None:
    p = pacer(limiter, {"*": 1000})
    for i in range(3):
        p.add("a.vn", f"a{i}")
    assert p.pending == 3
    assert sorted(p.remaining()) == ["a0", "a1", "a2"]
    assert p.next_slice() == []


def test_domain_rates_defaults_overrides_and_the_rest() -> None:
    rates = DomainRates({"gso.gov.vn": 100, "*": 30})
    assert rates.rate("gso.gov.vn") == 100
    assert rates.rate("GMAIL.com") == 20  # a big provider's default
    assert rates.rate("dn.example.vn") == 30
    assert DomainRates().rate("dn.example.vn") == 50
    assert DomainRates({"gmail.com": 5}).rate("gmail.com") == 5
    assert domain_of("Unit@So-Tai-Chinh.Example.VN") == "so-tai-chinh.example.vn"
