"""How an SMS worker paces its submits: tokens from the shared rate limiter, taken a few at a time
and spent evenly, and the hooks a send task gives the sessions (results as they come, a check
before each group of messages)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateways.ratelimit import RateLimiter
from gateways.smpp.client import SubmitResult

# Tokens taken from the shared limiter per round trip: about 10 ms of the gateway's rate, spent
# evenly by the sending thread, so a fast gateway does not pay one Redis call per segment. At
# most TOKEN_CHUNK_MAX: what a batch leaves unspent when it ends is capacity lost for 10 ms.
TOKEN_CHUNK_S = 0.01
TOKEN_CHUNK_MAX = 100


class StopSending(Exception):
    """Raised by a group hook: the rest of the batch is not sent (paused, cancelled, halted)."""


class TokenPacer:
    """Takes submit tokens from the shared limiter a few at a time and spends them evenly.

    A grant of `cost` tokens at slot s books [s, s + cost / rate) in Redis; spending them at
    s, s + 1/rate, ... makes them equivalent to single grants, so the limiter's per-second bound
    still holds (see `gateways/ratelimit.py`)."""

    def __init__(self, limiter: RateLimiter, keys: Sequence[tuple[str, float]]) -> None:
        self._limiter = limiter
        self._keys = list(keys)
        rate = min(r for _, r in self._keys)
        self._interval = 1.0 / rate
        self._chunk = max(1, min(TOKEN_CHUNK_MAX, int(rate * TOKEN_CHUNK_S)))
        self._left = 0
        self._next = 0.0

    def take(self) -> None:
        if self._left == 0:
            self._limiter.acquire_many(self._keys, cost=self._chunk)
            self._left, self._next = self._chunk, time.monotonic()
        else:
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self._left -= 1
        self._next += self._interval


# (message index, segment index, result), called on a session's reader thread: keep it quick.
ResultSink = Callable[[int, int, SubmitResult], None]
# Called with the message indexes of a group, before the first of them is written, and those of
# the group that follows it on the same session (empty for the last).
GroupHook = Callable[[list[int], list[int]], None]
