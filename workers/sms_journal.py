"""The send journal: what an SMS worker is about to submit and what the SMSC accepted, kept in Redis
until the batch's outcome is committed to the database, so that a worker killed mid-batch leaves
only the submits that were truly unanswered as ambiguous.

Why: the database write of a batch's outcome happens once per batch (one transaction for a few
hundred messages), not once per window of submits, which is what lets one bind run at the speed
of the SMSC. Between a submit_sm_resp and that commit the acceptance exists only in the worker's
memory. The journal keeps it in Redis: a list per claim, `loa:sms:jr:<gateway>:<claim>`, holding

- `h`: the batch started (written before its rows are marked in flight);
- `i <id> <id> ...`: these messages (a group of up to `window`) are about to be written to the
  socket; answered by Redis before the first of them is written (see `Intents`);
- `s <id> <segment> <segments> <provider id>`: the SMSC accepted that segment; written before
  the session's next submit (`SendJournal.write_accepted`), so that submits in flight plus
  acceptances not yet journaled never exceed the window.

When the batch's outcome is committed the worker deletes the list. After a crash the scheduler
tick runs :func:`recover_journals` before it sweeps expired leases: for a claim whose lease ran
out it records every fully accepted message as `sent` (with its provider ids), leaves the
messages that were about to be written (and not fully accepted) marked in flight, which the sweep
then resends as ambiguous, and unmarks those that were never about to be written, which the sweep
re-queues plainly. So the duplicates a crash can cause are the submits in the window; a halt or
a crash leaves at most two groups intended and not written (resent as ambiguous, not duplicated).

Redis lost together with the worker (both at once) leaves the database's own in-flight marks:
the whole batch counts as ambiguous, which is conservative (resent, counted) and never loses a
message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from redis.connection import AbstractConnection
from sqlalchemy import Engine, select, update
from sqlmodel import col

from campaigns.models import Message, MessageStatus
from campaigns.sending import INFLIGHT_MARK, Outcome, inflight_claim, record
from loa.db import transaction
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

KEY = "loa:sms:jr:{}:{}"  # gateway, claim
RECONNECT_S = 1.0  # a lost journal connection is tried again after this long
MAX_UNREAD = 500  # sends whose answers are left unread at most (a few bytes each)
PATTERN = "loa:sms:jr:*"


def journal_key(gateway: str, claim: str) -> str:
    return KEY.format(gateway, claim)


class Probe:
    """The answer to an intent's halt check: read from the connection when somebody asks."""

    def __init__(self, stream: _Stream, checks_stops: bool) -> None:
        self._stream = stream
        self.checks_stops = checks_stops  # else its first answer is not a halt check
        self.done = False
        self.result = False
        self.error: Exception | None = None

    def halted(self) -> bool:
        """Whether a stop key existed, once Redis answered (so the intent is in Redis); raises
        when it did not."""
        if not self.done:
            self._stream.settle(self)
        if self.error is not None:
            raise self.error
        return self.result


class _Stream:
    """Commands written to one connection of their own; answers read only when needed.

    Why not a redis-py call per entry: from a busy SMS worker a round trip took ~0.5 ms (the
    benchmark's end-to-end run), and the sender waited for two per group of `window` submits (the
    intent, the rate tokens) and, with the window full, for a background writer's before reusing
    a slot: close to half the time the bind was in use. Redis runs the commands of one connection
    in the order they were sent, and bytes handed to the kernel reach Redis if this process is
    killed right after (not if the host dies within a round trip); so an entry counts as written
    once `sendall` returned. Answers are read by the thread that needs one (an intent's halt
    check, a flush), usually long after they arrived: no thread is woken per entry."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._pool = client.connection_pool
        self._lock = threading.Lock()
        self._conn: AbstractConnection | None = None
        self._expected: deque[tuple[int, Probe | None]] = deque()  # per send: its answers, its probe
        self._retry_at = 0.0
        self._closed = False

    def send(self, commands: Sequence[tuple[object, ...]], probe: Probe | None = None) -> None:
        """Write `commands` (connecting first if need be); raises redis.ConnectionError when they
        could not be written."""
        with self._lock:
            conn = self._connected()
            if conn is None:
                raise redis.ConnectionError("send journal: not connected to Redis")
            try:
                packed = conn.pack_commands(commands)  # bytes; types-redis says str
                conn.send_packed_command(packed, check_health=False)  # type: ignore[arg-type]
            except (redis.RedisError, OSError) as exc:
                self._drop(conn, exc)
                raise redis.ConnectionError(f"send journal: {exc}") from exc
            self._expected.append((len(commands), probe))
            if len(self._expected) > MAX_UNREAD:
                self._read(len(self._expected) - MAX_UNREAD // 2)

    def connect(self) -> None:
        """Connect now unless connected (or a failed attempt is less than RECONNECT_S old)."""
        with self._lock:
            self._connected()

    def settle(self, probe: Probe) -> None:
        """Read answers until `probe`'s has come (or the connection failed)."""
        with self._lock:
            while not probe.done and self._expected:
                self._read(1)
            if not probe.done:
                probe.done, probe.error = True, redis.ConnectionError("send journal: no answer")

    def flush(self) -> None:
        """Read every answer due: everything written so far was executed (or the connection failed)."""
        with self._lock:
            self._read(len(self._expected))

    def close(self) -> None:
        with self._lock:
            self._read(len(self._expected))
            self._closed = True
            if self._conn is not None:
                self._drop(self._conn, redis.ConnectionError("send journal closed"))

    def _connected(self) -> AbstractConnection | None:
        if self._conn is None and not self._closed and time.monotonic() >= self._retry_at:
            pool = self._pool  # a connection of its own, never checked out to anyone else
            conn: AbstractConnection = pool.connection_class(**{**pool.connection_kwargs, "health_check_interval": 0})
            try:
                conn.connect()
            except redis.RedisError as exc:
                self._retry_at = time.monotonic() + RECONNECT_S
                raise redis.ConnectionError(f"send journal: {exc}") from exc
            self._conn = conn
        return self._conn

    def _read(self, sends: int) -> None:
        """Read the answers of the next `sends` sends (lock held)."""
        conn = self._conn
        for _ in range(min(sends, len(self._expected))):
            if conn is None:
                return
            count, probe = self._expected[0]
            try:
                first = [self._answer(conn) for _ in range(count)][0]
            except (redis.RedisError, OSError) as exc:
                self._drop(conn, exc)
                return
            self._expected.popleft()
            if probe is not None:
                probe.done = True
                if isinstance(first, Exception):
                    probe.error = first
                else:
                    probe.result = probe.checks_stops and bool(first)

    @staticmethod
    def _answer(conn: AbstractConnection) -> object:
        try:
            return conn.read_response()
        except redis.ResponseError as exc:  # one command refused, the others still answer
            log.warning("send journal: Redis refused an entry: %s", exc)
            return exc

    def _drop(self, conn: AbstractConnection, exc: Exception) -> None:
        """Give the connection up (lock held): its unanswered sends fail, the next one reconnects."""
        if self._conn is not conn:
            return
        self._conn = None
        self._retry_at = time.monotonic() + RECONNECT_S
        conn.disconnect()
        for _, probe in self._expected:
            if probe is not None:
                probe.done, probe.error = True, redis.ConnectionError(f"send journal: {exc}")
        self._expected.clear()
        if not self._closed:
            log.warning("send journal: connection to Redis lost (%s); entries are not journaled meanwhile", exc)


class SendJournal:
    """Writes journal entries; one per worker process, shared by its send tasks (see `_Stream`)."""

    def __init__(self, client: redis.Redis[bytes], ttl_s: float) -> None:
        self._redis = client
        self._ttl_ms = max(1000, round(ttl_s * 1000))
        self._stream = _Stream(client)
        self._accepts: list[tuple[str, str]] = []
        self._accepts_lock = threading.Lock()

    def open(self, key: str) -> bool:
        """Start a batch's journal before its rows are marked in flight: recovery then knows that
        rows without an `i` entry were never about to be sent. False when the journal already
        existed: the task was redelivered after its worker died, and that journal is the dead
        worker's record (see `send_sms_batch`)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(key, "h")
        pipe.pexpire(key, self._ttl_ms)
        length, _ = pipe.execute()
        self._stream.connect()  # now, rather than before the first submit
        return int(length) == 1

    def intend(self, key: str, message_ids: Sequence[int], stop_keys: Sequence[str] = ()) -> Probe:
        """Record that these messages are about to be submitted (written when this returns; raises
        redis.ConnectionError when it could not be). The same write checks `stop_keys` (a
        campaign's halt flag, a gateway's down mark): the probe says whether one existed, once
        Redis answered."""
        commands: list[tuple[object, ...]] = []
        if stop_keys:
            commands.append(("EXISTS", *stop_keys))
        commands.append(("RPUSH", key, "i " + " ".join(str(i) for i in message_ids)))
        commands.append(("PEXPIRE", key, self._ttl_ms))
        probe = Probe(self._stream, checks_stops=bool(stop_keys))
        self._stream.send(commands, probe)
        return probe

    def accepted(self, key: str, message_id: int, segment: int, segments: int, provider_id: str) -> None:
        """Note an acceptance; quick, called on the session's reader thread. It is written to
        Redis by the sender before its next submit (`write_accepted`), or by `forget`."""
        with self._accepts_lock:
            self._accepts.append((key, f"s {message_id} {segment} {segments} {provider_id}"))

    def write_accepted(self) -> None:
        """Write the acceptances noted so far: the sender calls it right before each submit, so
        submits in flight plus acceptances not yet journaled never exceed the window."""
        self._write_noted()

    def flush(self) -> None:
        """Write what is noted and wait until Redis executed everything written (tests)."""
        self._write_noted()
        self._stream.flush()

    def forget(self, key: str) -> None:
        """The batch's outcome is committed: drop its journal. Its acceptances still noted need no
        writing; the delete follows whatever was written on the same connection."""
        self._write(self._take(lambda k: k != key))
        try:
            self._stream.send([("DEL", key)])
        except redis.ConnectionError:
            self._redis.delete(key)  # else it expires; recovery skips finished claims

    def close(self) -> None:
        self._write_noted()
        self._stream.close()

    def _write_noted(self) -> None:
        self._write(self._take(lambda _key: True))

    def _take(self, keep: Callable[[str], bool]) -> list[tuple[str, str]]:
        with self._accepts_lock:
            taken, self._accepts = self._accepts, []
        return [(key, entry) for key, entry in taken if keep(key)]

    def _write(self, taken: Sequence[tuple[str, str]]) -> None:
        if not taken:
            return
        grouped: dict[str, list[str]] = defaultdict(list)
        for key, entry in taken:
            grouped[key].append(entry)
        try:
            self._stream.send([("RPUSH", key, *entries) for key, entries in grouped.items()])
        except redis.ConnectionError as exc:
            # The batch still records its outcome itself; only crash recovery loses precision.
            log.warning("send journal: %d acceptances not journaled: %s", len(taken), exc)


class Intents:
    """A batch's intents on one session, each sent a group ahead of its submits.

    Before group g is written, its intent must be in Redis (it was sent while group g - 1 was on
    the wire, so its answer is usually there already) and the intent of group g + 1 goes out.
    The halt check travels with each intent, so a halt stops the batch within two groups; a crash
    leaves at most two groups intended but unwritten (resent as ambiguous, never duplicated)."""

    def __init__(self, journal: SendJournal, key: str, stop_keys: Sequence[str]) -> None:
        self._journal, self._key, self._stops = journal, key, list(stop_keys)
        self._ahead: dict[int, Probe] = {}  # first message id of a group → its intent

    def before(self, ids: Sequence[int], following: Sequence[int]) -> bool:
        """Called before group `ids` is written; True when the batch must stop (halted)."""
        probe = self._ahead.pop(ids[0], None) or self._journal.intend(self._key, ids, self._stops)
        if following:
            self._ahead[following[0]] = self._journal.intend(self._key, following, self._stops)
        return probe.halted()


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
