"""Pacing a batch of emails by recipient domain, relay and campaign through the shared limiter.

Every worker on every host asks the same Redis GCRA limiter (:mod:`gateways.ratelimit`), so the
caps hold globally: the relay's ``rate``, one key per recipient domain (``domain_rates`` in the
gateways file, with defaults for the big providers and ``"*"`` for the rest) and the campaign's
``rate_limit``.

:class:`DomainPacer` hands out *slices*: messages that may go out now. It walks the domains round
robin and asks each domain's key for a chunk of up to ``slice_s`` worth of its rate (one Redis
call per domain, not per message), then books the relay and campaign keys for the whole slice,
waiting for them if needed -- those waits are short, as the relay is shared by every domain.
A domain whose key says "wait" is skipped while the others go on, so one slow or throttled domain
never holds up the rest. When its wait is long (beyond ``defer_after_s``) or would outlast the
batch's time budget, its remaining messages leave the batch as *deferred*, each with the delay
after which it would fit (spread at the domain's rate): the caller stores that as
``next_attempt_at`` and the dispatcher brings them back then, instead of a worker thread sleeping
through them.

A domain that answers 4xx is slowed down: :meth:`DomainPacer.penalise` halves its rate factor in
Redis (for every worker), :meth:`DomainPacer.recover` raises it again on success.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateways.ratelimit import RateLimiter

__all__ = ["DEFAULT_DOMAIN_RATES", "DomainPacer", "DomainRates", "domain_of"]

T = TypeVar("T")

# Messages per second per recipient domain when the gateways file says nothing. The big
# providers throttle bursts from one sender (and count complaints per volume); "*" is everyone
# else, typically one organisation's own mail server.
DEFAULT_DOMAIN_RATES: Mapping[str, float] = {
    "gmail.com": 20.0,
    "googlemail.com": 20.0,
    "yahoo.com": 10.0,
    "yahoo.com.vn": 10.0,
    "outlook.com": 10.0,
    "hotmail.com": 10.0,
    "live.com": 10.0,
    "icloud.com": 10.0,
    "*": 50.0,
}


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(">").lower()


@dataclass(frozen=True)
class DomainRates:
    """Per-domain caps: the relay's ``domain_rates`` over the defaults; ``"*"`` for the rest."""

    overrides: Mapping[str, float] = field(default_factory=dict)

    def rate(self, domain: str) -> float:
        domain = domain.lower()
        if domain in self.overrides:
            return float(self.overrides[domain])
        if domain in DEFAULT_DOMAIN_RATES and domain != "*":
            return float(DEFAULT_DOMAIN_RATES[domain])
        return float(self.overrides.get("*", DEFAULT_DOMAIN_RATES["*"]))


class DomainPacer(Generic[T]):
    """Hands out slices of one batch's messages as the limiter allows (see the module docstring).

    ``shared`` are the (key, rate) pairs every message also counts against: the relay and, when
    set, the campaign cap. Not thread-safe: one pacer per batch.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        domain_key: Callable[[str], str],
        rates: DomainRates,
        shared: Sequence[tuple[str, float]],
        slice_s: float = 0.1,
        max_slice: int = 100,
        defer_after_s: float = 1.0,
        budget_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_slice < 1 or slice_s <= 0:
            raise ValueError("max_slice must be >= 1 and slice_s > 0")
        self._limiter = limiter
        self._domain_key = domain_key
        self._rates = rates
        self._shared = list(shared)
        self._slice_s = slice_s
        self._max_slice = max_slice
        self._defer_after_s = defer_after_s
        self._budget_s = budget_s
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self._pending: dict[str, deque[T]] = {}
        self._order: deque[str] = deque()
        self.deferred: list[tuple[T, float]] = []  # (item, seconds from now until it would fit)

    def add(self, domain: str, item: T) -> None:
        if domain not in self._pending:
            self._pending[domain] = deque()
            self._order.append(domain)
        self._pending[domain].append(item)

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def remaining(self) -> list[T]:
        """Take every item not yet handed out or deferred (e.g. the campaign was paused)."""
        items = [item for queue in self._pending.values() for item in queue]
        self._pending.clear()
        self._order.clear()
        return items

    def next_slice(self) -> list[tuple[str, T]]:
        """The next (domain, item) pairs that may be sent now; empty when the batch is done.

        Blocks while every remaining domain waits a short while, and for the shared keys.
        """
        while self._pending:
            granted: list[tuple[str, T]] = []
            soonest = math.inf
            for _ in range(len(self._order)):
                if len(granted) >= self._max_slice or not self._order:
                    break
                domain = self._order[0]
                self._order.rotate(-1)  # round robin: the next slice starts with the next domain
                queue = self._pending[domain]
                rate = self._rates.rate(domain)
                want = min(len(queue), max(1, math.floor(rate * self._slice_s)), self._max_slice - len(granted))
                wait = self._limiter.reserve(self._domain_key(domain), rate, cost=want)
                if wait <= 0:
                    granted.extend((domain, queue.popleft()) for _ in range(want))
                elif wait > self._defer_after_s or self._clock() - self._started + wait > self._budget_s:
                    self._defer(domain, wait, rate)
                else:
                    soonest = min(soonest, wait)
                if not queue:
                    self._drop(domain)
            if granted:
                self._limiter.acquire_many(self._shared, cost=len(granted))
                return granted
            if self._pending and math.isfinite(soonest):
                self._sleep(soonest)
        return []

    def penalise(self, domain: str) -> None:
        """The domain answered 4xx: halve its rate for every worker (recovering on success)."""
        self._limiter.penalise(self._domain_key(domain))

    def recover(self, domain: str) -> None:
        self._limiter.recover(self._domain_key(domain))

    def _defer(self, domain: str, wait: float, rate: float) -> None:
        queue = self._pending[domain]
        # Spread them at the rate the domain is allowed now, so they come back one by one rather
        # than all at once into the same refusal.
        effective = rate * self._limiter.factor(self._domain_key(domain))
        for index, item in enumerate(queue):
            self.deferred.append((item, wait + index / effective))
        queue.clear()

    def _drop(self, domain: str) -> None:
        del self._pending[domain]
        self._order.remove(domain)
