"""The send journal: what an SMS worker is about to submit and what the SMSC accepted, kept in Redis
until the batch's outcome is committed to the database, so that a worker killed mid-batch leaves
only the submits that were truly unanswered as ambiguous.

Why: the database write of a batch's outcome happens once per batch (one transaction for a few
hundred messages), not once per window of submits, which is what lets one bind run at the speed
of the SMSC. Between a submit_sm_resp and that commit the acceptance exists only in the worker's
memory. The journal keeps it in Redis within a millisecond or so: a list per claim,
`loa:sms:jr:<gateway>:<claim>`, holding

- `h`: the batch started (written before its rows are marked in flight);
- `i <id> <id> ...`: these messages are about to be written to the socket (pushed, and waited
  for, before the first of them is written);
- `s <id> <segment> <segments> <provider id>`: the SMSC accepted that segment (pushed by a
  background thread right after the response arrived).

When the batch's outcome is committed the worker deletes the list. After a crash the scheduler
tick runs :func:`recover_journals` before it sweeps expired leases: for a claim whose lease ran
out it records every fully accepted message as `sent` (with its provider ids), leaves the
messages that were about to be written (and not fully accepted) marked in flight, which the sweep
then resends as ambiguous, and unmarks those that were never about to be written, which the sweep
re-queues plainly. So the duplicates a crash can cause are the submits in the window, plus the
responses of the last millisecond.

Redis lost together with the worker (both at once) leaves the database's own in-flight marks:
the whole batch counts as ambiguous, which is conservative (resent, counted) and never loses a
message.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import Engine, select, update
from sqlmodel import col

from campaigns.models import Message, MessageStatus
from campaigns.sending import INFLIGHT_MARK, Outcome, inflight_claim, record
from loa.db import transaction
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

KEY = "loa:sms:jr:{}:{}"  # gateway, claim
PATTERN = "loa:sms:jr:*"


def journal_key(gateway: str, claim: str) -> str:
    return KEY.format(gateway, claim)


class SendJournal:
    """Writes journal entries; one per worker process, shared by its send tasks."""

    def __init__(self, client: redis.Redis[bytes], ttl_s: float) -> None:
        self._redis = client
        self._ttl_ms = max(1000, round(ttl_s * 1000))
        self._cond = threading.Condition()
        self._queue: list[tuple[str, str]] = []
        self._queued = 0  # entries ever queued
        self._written = 0  # entries ever taken by the writer (written, or given up on)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sms-journal", daemon=True)
        self._thread.start()

    def open(self, key: str) -> bool:
        """Start a batch's journal before its rows are marked in flight: recovery then knows that
        rows without an `i` entry were never about to be sent. False when the journal already
        existed: the task was redelivered after its worker died, and that journal is the dead
        worker's record (see `send_sms_batch`)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(key, "h")
        pipe.pexpire(key, self._ttl_ms)
        length, _ = pipe.execute()
        return int(length) == 1

    def intend(self, key: str, message_ids: Sequence[int], stop_keys: Sequence[str] = ()) -> bool:
        """Record (synchronously) that these messages are about to be submitted. The same round
        trip checks `stop_keys` (a campaign's halt flag, a gateway's down mark): returns True when
        one exists, and then the caller sends nothing more."""
        pipe = self._redis.pipeline(transaction=False)
        if stop_keys:
            pipe.exists(*stop_keys)
        pipe.rpush(key, "i " + " ".join(str(i) for i in message_ids))
        pipe.pexpire(key, self._ttl_ms)
        replies = pipe.execute()
        return bool(stop_keys) and bool(replies[0])

    def accepted(self, key: str, message_id: int, segment: int, segments: int, provider_id: str) -> None:
        """Queue an acceptance for the writer thread; quick, called on the session's reader thread."""
        entry = f"s {message_id} {segment} {segments} {provider_id}"
        with self._cond:
            self._queue.append((key, entry))
            self._queued += 1
            self._cond.notify()

    def wait_backlog(self, below: int, timeout: float = 10.0) -> None:
        """Block until fewer than `below` acceptances wait to be written (at least one may).

        The sender calls it before each submit with `window - outstanding`: submits in flight
        plus acceptances not yet in Redis then never pass the window, which is what bounds the
        duplicates a crash can cause."""
        limit = max(1, below)
        with self._cond:
            self._cond.wait_for(lambda: self._queued - self._written < limit or self._stop, timeout=timeout)

    def forget(self, key: str) -> None:
        """The batch's outcome is committed: drop its journal (after the writer caught up)."""
        with self._cond:
            target = self._queued
            self._cond.wait_for(lambda: self._written >= target or self._stop, timeout=10.0)
        self._redis.delete(key)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._stop)
                if not self._queue and self._stop:
                    return
                taken, self._queue = self._queue, []
            try:
                grouped: dict[str, list[str]] = defaultdict(list)
                for key, entry in taken:
                    grouped[key].append(entry)
                pipe = self._redis.pipeline(transaction=False)
                for key, entries in grouped.items():
                    pipe.rpush(key, *entries)
                    pipe.pexpire(key, self._ttl_ms)
                pipe.execute()
            except redis.RedisError as exc:
                # The batch still records its outcome itself; only crash recovery loses precision.
                log.warning("send journal: %d entries not written: %s", len(taken), exc)
            finally:
                with self._cond:
                    self._written += len(taken)
                    self._cond.notify_all()


@dataclass
class _Entries:
    intended: set[int] = field(default_factory=set)
    segments: dict[int, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    totals: dict[int, int] = field(default_factory=dict)


def _parse(raw: Sequence[bytes]) -> _Entries:
    out = _Entries()
    for item in raw:
        parts = item.decode(errors="replace").split(" ")
        try:
            if parts[0] == "i":
                out.intended.update(int(p) for p in parts[1:] if p)
            elif parts[0] == "s" and len(parts) >= 5:
                mid, seg, total = int(parts[1]), int(parts[2]), int(parts[3])
                out.segments[mid][seg] = " ".join(parts[4:])
                out.totals[mid] = total
        except ValueError:
            log.warning("send journal: unreadable entry %r skipped", item[:80])
    return out


def _idle_keys(client: redis.Redis[bytes], idle_s: float) -> list[str]:
    """Journal keys nobody wrote for `idle_s` seconds (a live batch writes at every group)."""
    keys = [k.decode() for k in client.scan_iter(PATTERN, count=500)]
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.object("idletime", key)
    # An LFU eviction policy makes IDLETIME an error: then every journal gets the database check.
    idles = pipe.execute(raise_on_error=False)
    return [key for key, idle in zip(keys, idles, strict=True) if not isinstance(idle, int) or idle >= idle_s]


def _expired_claim_keys(client: redis.Redis[bytes], engine: Engine, now: datetime) -> list[str]:
    """Journals of claims with rows in flight whose lease ran out before `now`.

    The idle scan alone left a race: a journal written (or reopened by the redelivered task) less
    than `idle_s` before the lease ran out was skipped, and the sweep then resent every accepted
    message of that batch as ambiguous. These journals are looked at whatever their idle time."""
    with transaction(engine) as session:
        rows = session.execute(
            select(col(Message.gateway), col(Message.claim))
            .where(
                col(Message.status) == MessageStatus.DISPATCHING.value,
                col(Message.lease_until) < now,
                col(Message.claim).like(f"%{INFLIGHT_MARK}"),
            )
            .distinct()
            .limit(1000)
        ).all()
    keys = sorted({journal_key(str(gateway), str(claim)[: -len(INFLIGHT_MARK)]) for gateway, claim in rows if gateway})
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [key for key, found in zip(keys, pipe.execute(), strict=True) if found]


def recover_journals(
    client: redis.Redis[bytes],
    engine: Engine,
    *,
    max_attempts: int,
    idle_s: float = 10.0,
    now: datetime | None = None,
) -> dict[str, int]:
    """Apply the journals of claims whose lease ran out (their worker died); see the module docstring.

    Runs before the lease sweep, which must then sweep only leases that ran out before the same
    `now`: every in-flight claim it finds has had its journal applied. Journals idle for `idle_s`
    are looked at too, so those of finished or swept claims are deleted."""
    totals = {"sent": 0, "ambiguous": 0, "unsent": 0}
    prefix = KEY.format("", "")[:-1]  # "loa:sms:jr:"
    now = now or utcnow()
    keys = sorted(set(_idle_keys(client, idle_s)) | set(_expired_claim_keys(client, engine, now)))
    for key in keys:
        gateway, _, claim = key[len(prefix) :].partition(":")
        if not claim:
            continue
        with transaction(engine) as session:
            rows = session.execute(
                select(col(Message.id), col(Message.claim), col(Message.lease_until)).where(
                    col(Message.claim).in_([claim, inflight_claim(claim)]),
                    col(Message.status) == MessageStatus.DISPATCHING.value,
                )
            ).all()
            if not rows:
                client.delete(key)  # finished normally, or already swept
                continue
            if any(lease is not None and lease >= now for _, _, lease in rows):
                continue  # its worker is alive (or the lease has not run out yet)
            entries = _parse(client.lrange(key, 0, -1))
            outcomes: list[Outcome] = []
            for mid, segs in entries.segments.items():
                total = entries.totals.get(mid, 0)
                if total and len(segs) == total:
                    ids = [segs[i] for i in sorted(segs)]
                    outcomes.append(Outcome(mid, "sent", provider_ids=ids, segments=total))
            if outcomes:
                record(session, outcomes, claim, max_attempts=max_attempts, gateway=gateway)
            sent = {o.message_id for o in outcomes}
            plain = [int(mid) for mid, _, _ in rows if mid not in entries.intended and mid not in sent]
            maybe = [int(mid) for mid, _, _ in rows if mid in entries.intended and mid not in sent]
            if plain:
                session.execute(
                    update(Message)
                    .where(col(Message.id).in_(plain), col(Message.status) == MessageStatus.DISPATCHING.value)
                    .values(claim=claim)
                )
            if maybe:
                session.execute(
                    update(Message)
                    .where(col(Message.id).in_(maybe), col(Message.status) == MessageStatus.DISPATCHING.value)
                    .values(claim=inflight_claim(claim))
                )
        client.delete(key)
        totals["sent"] += len(outcomes)
        totals["ambiguous"] += len(maybe)
        totals["unsent"] += len(plain)
        log.warning(
            "recovered the send journal of claim %s on %s: %d sent, %d ambiguous, %d never submitted",
            claim,
            gateway,
            len(outcomes),
            len(maybe),
            len(plain),
        )
    return totals


def journal_ttl(lease_s: float) -> timedelta:
    """Long enough to outlive the claim's lease by far (the sweep must find the journal)."""
    return timedelta(seconds=max(600.0, lease_s * 4))
