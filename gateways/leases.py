"""Bind slots as leases in Redis: a carrier allows N binds per account, and however many SMS
workers run on however many hosts, at most N sessions may be open at once.

Each slot is one key, `{prefix}{resource}:{slot}`, holding its owner's id with a TTL. Taking a
slot (set if absent, with PX) and renewing or releasing one (only if the owner matches) are Lua
scripts, so a process never extends or deletes a lease that expired and went to someone else.

`LeaseManager` is the plain operations. `LeaseKeeper` is the background thread a worker runs
per gateway: it holds up to `want` slots, renews them every ttl/3, reports every change of the
held set to the owner (who opens or closes sessions to match) and re-acquires what it lost.

Safety when Redis misbehaves. A lease is proven until (time the last successful renew was sent)
+ ttl - margin, margin = ttl/5: Redis set the expiry after we sent, so until then nobody else
can hold the slot, and the margin is the owner's time to close the session. Redis calls run on
a helper thread, so a hung Redis (no socket timeout, a partition) cannot keep the keeper from
dropping a lease it can no longer prove. A wiped Redis (restart, FLUSHDB) forgets every lease at
once: until our next renew (at most ttl/3 later) another process may take and bind a slot we
still use, a window inherent to a lease store that can forget. That renew fails; the keeper
takes the slot back in the same pass if it is still free (the session may stay: nobody else
holds it) and otherwise reports it lost.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

log = logging.getLogger(__name__)

# KEYS: candidate slot keys; ARGV: owner, ttl_ms, then each key's slot index. Returns the first
# slot that is free (now ours) or already ours (re-proven), else -1.
_ACQUIRE_LUA = """
for i = 1, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if not holder then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    return tonumber(ARGV[2 + i])
  end
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    return tonumber(ARGV[2 + i])
  end
end
return -1
"""

# Renew / release a key only while it still names its owner (also used by the scheduler lock).
RENEW_IF_OWNER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_IF_OWNER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def default_owner() -> str:
    """An owner id unique per process and readable in `holders()`: host, pid, random tail."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseManager:
    """Lease operations on slots 0..slots-1 of a resource, as one owner."""

    def __init__(self, redis: redis.Redis[Any], owner: str, ttl_s: float = 15.0, prefix: str = "loa:lease:") -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        if not owner:
            raise ValueError("owner must be a non-empty, per-process unique string")
        self.owner = owner
        self.ttl_s = ttl_s
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._renew = redis.register_script(RENEW_IF_OWNER_LUA)
        self._release = redis.register_script(RELEASE_IF_OWNER_LUA)

    def key(self, resource: str, slot: int) -> str:
        return f"{self._prefix}{resource}:{slot}"

    def try_acquire(self, resource: str, slots: int, *, exclude: Iterable[int] = ()) -> int | None:
        """The first slot that was free (or already ours), now leased to us for ttl; None if all
        are taken. Slots in `exclude` (those the caller already holds) are not considered."""
        skip = set(exclude)
        candidates = [slot for slot in range(slots) if slot not in skip]
        if not candidates:
            return None
        keys = [self.key(resource, slot) for slot in candidates]
        got = int(self._acquire(keys=keys, args=[self.owner, self._ttl_ms, *candidates]))
        return None if got < 0 else got

    def renew(self, resource: str, slot: int) -> bool:
        """Extend our lease by ttl; False when it is no longer ours (expired, taken, Redis wiped)."""
        return bool(self._renew(keys=[self.key(resource, slot)], args=[self.owner, self._ttl_ms]))

    def release(self, resource: str, slot: int) -> None:
        """Give the slot up if it is still ours; someone else's lease is left alone."""
        if not self._release(keys=[self.key(resource, slot)], args=[self.owner]):
            log.debug("lease %s:%d was no longer ours to release", resource, slot)

    def holders(self, resource: str, slots: int) -> dict[int, str]:
        """Slot -> owner for every slot currently leased."""
        values = self._redis.mget([self.key(resource, slot) for slot in range(slots)])
        return {
            slot: value.decode() if isinstance(value, bytes) else str(value)
            for slot, value in enumerate(values)
            if value is not None
        }


@dataclass
class _Round:
    """One pass of Redis work, run on a helper thread: renew what we hold, acquire what we lack."""

    held: list[int]
    started: float = field(default_factory=time.monotonic)
    renewed: list[tuple[int, float, bool]] = field(default_factory=list)  # slot, sent at, still ours
    acquired: list[tuple[int, float]] = field(default_factory=list)  # slot, sent at
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class LeaseKeeper:
    """Keeps up to `want` of a resource's slots leased and tells the owner whenever that changes.

    `on_change(held)` runs on the keeper's thread with the new set of slots: open a session for
    each slot that appeared, close the session of each that vanished (at once: it is proven for
    ttl/5 more at best). Shutdown order: close the sessions, then `stop(release=True)`, so no
    other process binds before ours is closed. `stop` does not call `on_change`.
    """

    def __init__(
        self,
        manager: LeaseManager,
        resource: str,
        slots: int,
        want: int,
        on_change: Callable[[set[int]], None],
        interval_s: float | None = None,
    ) -> None:
        if not 1 <= want <= slots:
            raise ValueError(f"need 1 <= want <= slots, got want={want} slots={slots}")
        interval = manager.ttl_s / 3 if interval_s is None else interval_s
        if not 0 < interval < manager.ttl_s * 0.8:
            raise ValueError(f"interval_s must be positive and well below the ttl, got {interval!r}")
        self._manager = manager
        self._resource = resource
        self._slots = slots
        self._want = want
        self._on_change = on_change
        self._interval = interval
        self._lifetime = manager.ttl_s * 0.8  # proven lifetime of a lease after its renew was sent
        self._lock = threading.Lock()
        self._held: dict[int, float] = {}  # slot -> monotonic time until which we can prove it
        self._reported: set[int] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._round: _Round | None = None
        self._thread: threading.Thread | None = None
        self._failing = False
        self._given_up: dict[int, float] = {}  # slot -> monotonic time it was given up

    @property
    def held(self) -> set[int]:
        """The slots this keeper can currently prove it holds."""
        with self._lock:
            return set(self._held)

    @property
    def want(self) -> int:
        return self._want

    @want.setter
    def want(self, value: int) -> None:
        """How many slots to hold from the next round on (a fair share among several workers);
        slots already held above it stay until `give_up`."""
        if not 1 <= value <= self._slots:
            raise ValueError(f"need 1 <= want <= slots, got want={value} slots={self._slots}")
        self._want = value

    def give_up(self, slot: int) -> None:
        """Stop holding `slot` and release it at once (its owner closed the session on it first),
        so another worker can take it. Does not call `on_change`."""
        with self._lock:
            self._held.pop(slot, None)
            self._reported.discard(slot)
            self._given_up[slot] = time.monotonic()
        try:
            self._manager.release(self._resource, slot)
        except redis.RedisError as exc:
            log.warning("lease %s:%d not released (%s); it expires on its own", self._resource, slot, exc)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("LeaseKeeper.start() called twice")
        self._thread = threading.Thread(target=self._run, name=f"lease-keeper:{self._resource}", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop keeping; with `release`, give the held slots back now instead of at expiry.
        Waits at most min(ttl, 5 s) for Redis; calling it again, or before `start`, is harmless."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()  # (from inside on_change the loop ends once on_change returns)
        with self._lock:
            slots = set(self._held)
            self._held.clear()
        pending = self._round
        bound = min(self._manager.ttl_s, 5.0)
        if pending is not None and pending.done.wait(bound):
            # A round still in flight may have taken slots we never applied: give those back too.
            slots |= {slot for slot, _, ours in pending.renewed if ours}
            slots |= {slot for slot, _ in pending.acquired}
        if release and slots:
            # On a helper thread too, so a hung Redis cannot hang the owner's shutdown.
            done = threading.Event()
            threading.Thread(target=self._release_all, args=(sorted(slots), done), daemon=True).start()
            if not done.wait(bound):
                log.warning("releasing leases %s:%s timed out; they expire on their own", self._resource, slots)

    def _release_all(self, slots: list[int], done: threading.Event) -> None:
        try:
            for slot in slots:
                self._manager.release(self._resource, slot)
        except redis.RedisError as exc:
            log.warning("could not release leases on %s: %s; they expire on their own", self._resource, exc)
        finally:
            done.set()

    def _run(self) -> None:
        next_round = time.monotonic()
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            work = self._round
            if work is not None and work.done.is_set():
                self._round = None
                self._apply(work)
                next_round = work.started + self._interval
            elif work is not None and now - work.started > self._manager.ttl_s:
                # Stuck on a dead connection: leave that thread hanging, start over on a new one.
                log.warning(
                    "lease round on %s hung for over %.0fs; starting another",
                    self._resource,
                    now - work.started,
                )
                self._round = None
                next_round = now
            elif work is None and now >= next_round:
                self._start_round()
            self._drop_unproven()
            self._report()
            self._wake.wait(self._sleep_time(next_round))

    def _start_round(self) -> None:
        with self._lock:
            work = _Round(held=sorted(self._held))
        self._round = work
        threading.Thread(target=self._io, args=(work,), name=f"lease-io:{self._resource}", daemon=True).start()

    def _io(self, work: _Round) -> None:
        manager, resource = self._manager, self._resource
        try:
            kept: list[int] = []
            for slot in work.held:
                sent = time.monotonic()
                ours = manager.renew(resource, slot)
                work.renewed.append((slot, sent, ours))
                if ours:
                    kept.append(slot)
            while len(kept) + len(work.acquired) < self._want and not self._stop.is_set():
                sent = time.monotonic()
                got = manager.try_acquire(resource, self._slots, exclude=kept + [s for s, _ in work.acquired])
                if got is None:
                    break
                work.acquired.append((got, sent))
        except Exception as exc:  # reported by the keeper thread, which must outlive any failure
            work.error = exc
        finally:
            work.done.set()
            self._wake.set()

    def _apply(self, work: _Round) -> None:
        if work.error is not None:
            # Log the first failure loudly and the rest quietly until Redis answers again.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "lease round on %s failed: %s", self._resource, work.error)
            self._failing = True
        elif self._failing:
            log.info("lease round on %s succeeded again", self._resource)
            self._failing = False
        with self._lock:
            # A round that started before a give_up may have renewed that slot: it stays given up.
            stale = {slot for slot, at in self._given_up.items() if work.started <= at}
            self._given_up = {slot: at for slot, at in self._given_up.items() if slot in stale}
            for slot, sent, ours in work.renewed:
                if slot in stale:
                    continue
                if ours:
                    self._held[slot] = sent + self._lifetime
                elif self._held.pop(slot, None) is not None:
                    log.warning("lease %s:%d was lost (expired, taken or Redis wiped)", self._resource, slot)
            for slot, sent in work.acquired:
                if slot not in stale:
                    self._held[slot] = sent + self._lifetime

    def _drop_unproven(self) -> None:
        now = time.monotonic()
        with self._lock:
            for slot in [slot for slot, until in self._held.items() if until <= now]:
                del self._held[slot]
                log.warning(
                    "lease %s:%d can no longer be proven (Redis not answering); dropping it",
                    self._resource,
                    slot,
                )

    def _report(self) -> None:
        current = self.held
        if current == self._reported:
            return
        self._reported = current
        try:
            self._on_change(set(current))
        except Exception:  # the owner's bug must not stop the leases from being kept
            log.exception("on_change for %s raised", self._resource)

    def _sleep_time(self, next_round: float) -> float:
        now = time.monotonic()
        wake_at = [next_round] if self._round is None else [self._round.started + self._manager.ttl_s]
        with self._lock:
            wake_at.extend(self._held.values())
        return max(0.0, min(wake_at) - now)
