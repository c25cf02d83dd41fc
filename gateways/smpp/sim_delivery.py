"""Routing of deliver_sm (receipts and MO messages) from the SMSC simulator to bound sessions.

A receipt belongs to an account, not to the connection its submit_sm came on: it goes to any
session of the same system_id bound as receiver or transceiver (round robin), and waits in a
per-account queue while none is bound, as carriers keep retrying. Delayed receipts are grouped
into 10 ms buckets, one timer per bucket, so a busy simulator arms a hundred timers a second
instead of one per message, and each bucket reaches a session in a single write.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DeliveryRouter", "Outbound", "Receiver"]

_TICK_S = 0.01


@dataclass(slots=True)
class Outbound:
    """A deliver_sm waiting to be sent: its body (the header is added per session) and kind."""

    system_id: str
    body: bytes
    is_receipt: bool


class Receiver(Protocol):
    """A bound session that can take deliver_sm PDUs."""

    def deliver(self, items: Sequence[Outbound]) -> None:
        """Write ``items`` as deliver_sm PDUs; they stay the session's until answered."""


class DeliveryRouter:
    """Per-account queues and receiver sessions; lives on the simulator's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._receivers: dict[str, list[Receiver]] = {}
        self._turn: dict[str, int] = {}
        self._queues: dict[str, deque[Outbound]] = {}
        self._buckets: dict[int, tuple[asyncio.TimerHandle, list[Outbound]]] = {}
        self._closed = False

    def queued(self, system_id: str) -> int:
        """How many deliver_sm wait for a receiver of ``system_id``."""
        queue = self._queues.get(system_id)
        return len(queue) if queue else 0

    def attach(self, system_id: str, receiver: Receiver) -> None:
        """A session of ``system_id`` can now receive; it gets the whole backlog at once."""
        self._receivers.setdefault(system_id, []).append(receiver)
        queue = self._queues.pop(system_id, None)
        if queue:
            receiver.deliver(list(queue))

    def detach(self, system_id: str, receiver: Receiver) -> None:
        """The session stops receiving (unbind, drop); idempotent."""
        receivers = self._receivers.get(system_id)
        if receivers and receiver in receivers:
            receivers.remove(receiver)

    def send(self, items: Iterable[Outbound]) -> None:
        """Hand ``items`` to receivers now (grouped into one write per session) or queue them."""
        if self._closed:
            return
        batches: dict[int, tuple[Receiver, list[Outbound]]] = {}
        for item in items:
            receivers = self._receivers.get(item.system_id)
            if not receivers:
                self._queues.setdefault(item.system_id, deque()).append(item)
                continue
            turn = self._turn.get(item.system_id, 0)
            self._turn[item.system_id] = turn + 1
            receiver = receivers[turn % len(receivers)]
            batch = batches.get(id(receiver))
            if batch is None:
                batches[id(receiver)] = (receiver, [item])
            else:
                batch[1].append(item)
        for receiver, batch_items in batches.values():
            receiver.deliver(batch_items)

    def send_later(self, delay_s: float, item: Outbound) -> None:
        """Send ``item`` after ``delay_s`` seconds (rounded up to the next 10 ms tick)."""
        if self._closed:
            return
        tick = math.ceil((self._loop.time() + delay_s) / _TICK_S)
        bucket = self._buckets.get(tick)
        if bucket is None:
            handle = self._loop.call_at(tick * _TICK_S, self._fire, tick)
            self._buckets[tick] = (handle, [item])
        else:
            bucket[1].append(item)

    def _fire(self, tick: int) -> None:
        _, items = self._buckets.pop(tick)
        self.send(items)

    def close(self) -> None:
        """Drop every queued and scheduled deliver_sm; later calls do nothing."""
        self._closed = True
        for handle, _ in self._buckets.values():
            handle.cancel()
        self._buckets.clear()
        self._queues.clear()
        self._receivers.clear()
