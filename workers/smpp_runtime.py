"""Long-lived SMPP sessions inside an SMS worker process.

Per gateway, the worker holds bind slots as leases in Redis (never more than `binds` sessions
across every worker on every host), opens one session per slot held, and consumes the gateway's
queue only while it holds at least one. Sessions outlive tasks, so receipts keep arriving
between batches; each receipt batch is committed before deliver_sm_resp goes back.

A health thread reports, once a second, each session's state to Redis (for `GET /v1/gateways`)
and to the metrics, and marks a gateway with a fallback down when its sessions could not bind for
`failover.after_s` or its error rate passed `failover.error_rate` (see `gateways/health.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import redis

from campaigns.receipts import IncomingDeliver, store_delivers
from gateways import health
from gateways.config import SmppGateway
from gateways.leases import LeaseKeeper, LeaseManager
from gateways.smpp.client import BindConfig, Deliver, Outcome, SmppSession, Submit, SubmitResult
from loa.db import transaction
from workers import sms_metrics
from workers.runtime import Runtime
from workers.sms_journal import SendJournal, journal_ttl
from workers.sms_pacing import GroupHook, ResultSink, TokenPacer

log = logging.getLogger(__name__)

DOWN_KEY = health.DOWN_KEY
QueueSwitch = Callable[[str, bool], None]
HEALTH_INTERVAL_S = 1.0


def bind_config(g: SmppGateway) -> BindConfig:
    return BindConfig(
        name=g.name,
        host=g.host,
        port=g.port,
        system_id=g.system_id,
        password=g.resolved_password(),
        system_type=g.system_type,
        bind_mode=g.bind_mode,
        window=g.window,
        enquire_link_s=g.enquire_link_s,
    )


def limiter_key(gateway: str) -> str:
    return f"smpp:{gateway}"


class GatewaySessions:
    """The sessions of one gateway in this process, one per bind slot it holds."""

    def __init__(
        self,
        gateway: SmppGateway,
        rt: Runtime,
        switch_queue: QueueSwitch,
        on_receipts: Callable[[], None],
        owner: str,
        journal: SendJournal | None = None,
    ) -> None:
        self.gateway, self.rt = gateway, rt
        self.journal = journal
        self._switch_queue = switch_queue
        self._on_receipts = on_receipts
        self._sessions: dict[int, SmppSession] = {}
        self._turns: dict[int, threading.Lock] = {}  # id(session) → its sender's turn
        self._since: dict[int, float] = {}
        self._lock = threading.Lock()
        self._bound_cond = threading.Condition(self._lock)
        self._consuming = False
        self._unbound_since: float | None = time.monotonic()
        self._owner = owner
        leases = LeaseManager(rt.redis, owner=owner)
        self.keeper = LeaseKeeper(leases, f"smpp:{gateway.name}", gateway.binds, gateway.binds, self._on_change)
        # Several send tasks may share the sessions; each needs a thread per extra session.
        self._pool = ThreadPoolExecutor(max_workers=4 * gateway.binds, thread_name_prefix=f"smpp-{gateway.name}-send")

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        self._switch(False)
        with contextlib.suppress(redis.RedisError):  # else it ages out of the set
            health.heartbeat(self.rt.redis, self.gateway.name, self._owner, leaving=True)
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()
        self.keeper.stop(release=True)  # after the sessions closed: nobody binds before that
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- leases → sessions → queue consumption --------------------------------------------------
    def _on_change(self, held: set[int]) -> None:
        closing: list[SmppSession] = []
        with self._lock:
            for slot in list(self._sessions):
                if slot not in held:
                    log.warning("gateway %s lost bind slot %s; closing its session", self.gateway.name, slot)
                    closing.append(self._sessions.pop(slot))
            for slot in held:
                if slot not in self._sessions:
                    session = SmppSession(bind_config(self.gateway), self._deliver)
                    session.start()
                    self._sessions[slot] = session
                    self._turns[id(session)] = threading.Lock()
                    self._since[slot] = time.time()
            has_any = bool(self._sessions)
        for session in closing:
            session.close()
        self._switch(has_any)

    def _switch(self, consume: bool) -> None:
        if consume != self._consuming:
            self._consuming = consume
            self._switch_queue(self.gateway.name, consume)

    def bound_sessions(self) -> list[SmppSession]:
        with self._lock:
            return [s for s in self._sessions.values() if s.bound]

    def wait_bound(self, timeout: float) -> list[SmppSession]:
        """The bound sessions, waiting up to `timeout` for one when none is bound yet."""
        deadline = time.monotonic() + timeout
        while True:
            bound = self.bound_sessions()
            if bound or time.monotonic() >= deadline:
                return bound
            time.sleep(0.05)

    # --- health: bind state, metrics, failover ------------------------------------------------
    def _share_binds(self) -> None:
        """Hold no more than a fair share of the gateway's binds while other workers serve it too.

        Every process wants all binds at first; with n workers its share is ceil(binds / n). A
        process above its share hands one idle session's slot back per health round (never one
        with submits in flight, never during a send), and another worker takes it."""
        g = self.gateway
        workers = health.heartbeat(self.rt.redis, g.name, self._owner)
        fair = max(1, -(-g.binds // max(1, workers)))
        self.keeper.want = fair
        held = sorted(self.keeper.held)
        if len(held) <= fair:
            return
        slot = held[-1]
        with self._lock:
            session = self._sessions.get(slot)
            turn = self._turns.get(id(session)) if session is not None else None
            if session is None or turn is None or session.outstanding or not turn.acquire(blocking=False):
                return
            self._sessions.pop(slot)
        try:
            log.info("gateway %s: %d workers share %d binds; handing slot %d over", g.name, workers, g.binds, slot)
            session.close()
            self.keeper.give_up(slot)
        finally:
            turn.release()

    def health(self) -> None:
        g = self.gateway
        self._share_binds()
        with self._lock:
            sessions = dict(self._sessions)
        states: dict[int, dict[str, object]] = {}
        bound = outstanding = 0
        for slot, s in sessions.items():
            is_bound, in_flight = s.bound, s.outstanding
            bound += is_bound
            outstanding += in_flight
            states[slot] = {
                "state": "bound" if is_bound else "binding",
                "worker": self._owner,
                "outstanding": in_flight,
                "since": self._since.get(slot),
                "last_error": s.stats["last_error"],
            }
        sms_metrics.set_sessions(g.name, bound, outstanding)
        client = self.rt.redis
        health.publish_binds(client, g.name, states)
        failover = health.failover_of(g)
        if bound:
            self._unbound_since = None
            health.clear_down(client, g.name, only_reason_prefix="cannot bind")
        elif sessions:
            if self._unbound_since is None:
                self._unbound_since = time.monotonic()
            unbound_for = time.monotonic() - self._unbound_since
            if failover is not None and unbound_for >= failover.after_s:
                health.mark_down(client, g.name, f"cannot bind for {unbound_for:.0f}s", 3 * HEALTH_INTERVAL_S + 5)
        if bound:
            health.check_error_rate(client, g)

    # --- receipts --------------------------------------------------------------------------------
    def _deliver(self, delivers: Sequence[Deliver]) -> None:
        incoming = [
            IncomingDeliver(
                d.source_addr,
                d.destination_addr,
                d.esm_class,
                d.data_coding,
                d.short_message,
                d.receipted_message_id,
                d.message_state,
            )
            for d in delivers
        ]
        with transaction(self.rt.engine) as session:
            stored = store_delivers(session, self.gateway.name, incoming, self.gateway.opt_out_keywords)
        # Committed: now the adapter may answer deliver_sm_resp. Ask for the inbox to be applied.
        sms_metrics.observe_receipts(self.gateway.name, stored.states, stored.replies, stored.opt_outs)
        if stored.states:
            self._on_receipts()

    # --- submitting ------------------------------------------------------------------------------
    def send(
        self,
        messages: Sequence[Sequence[Submit]],
        keys: Sequence[tuple[str, float]],
        *,
        on_result: ResultSink | None = None,
        before_group: GroupHook | None = None,
        sessions: Sequence[SmppSession] | None = None,
    ) -> list[list[SubmitResult]]:
        """Send messages (each a list of segment submits) over the bound sessions, in parallel.

        Each message goes whole to one session (round robin). Every segment takes a token from
        the shared limiter first (`keys`: the gateway's TPS, and the campaign's cap on top).
        `before_group` sees each group of up to `window` messages (and the group after it on the same
        session) before its first submit; if it raises, that session sends nothing more (the rest
        come back NOT_SENT)."""
        live = list(sessions) if sessions is not None else self.bound_sessions()
        if not live:
            return [[_not_sent(s) for s in msg] for msg in messages]
        shares: list[list[int]] = [[] for _ in live]
        for i in range(len(messages)):
            shares[i % len(live)].append(i)
        jobs = [(s, idx) for s, idx in zip(live, shares, strict=True) if idx]
        futures: list[Future[list[SubmitResult]]] = [
            self._pool.submit(self._send_share, s, idx, messages, keys, on_result, before_group) for s, idx in jobs[1:]
        ]
        first = self._send_share(jobs[0][0], jobs[0][1], messages, keys, on_result, before_group)
        results: list[list[SubmitResult]] = [[] for _ in messages]
        for (_, indexes), flat_results in zip(jobs, [first, *(f.result() for f in futures)], strict=True):
            it = iter(flat_results)
            for i in indexes:
                results[i] = [next(it) for _ in messages[i]]
        return results

    def _send_share(
        self,
        session: SmppSession,
        indexes: list[int],
        messages: Sequence[Sequence[Submit]],
        keys: Sequence[tuple[str, float]],
        on_result: ResultSink | None,
        before_group: GroupHook | None,
    ) -> list[SubmitResult]:
        flat: list[Submit] = []
        owner: list[tuple[int, int]] = []
        size = max(1, self.gateway.window)
        groups = [indexes[n : n + size] for n in range(0, len(indexes), size)]
        group_at: dict[int, int] = {}  # flat position → the number of the message group starting there
        for g, members in enumerate(groups):
            group_at[len(flat)] = g
            for i in members:
                for j, seg in enumerate(messages[i]):
                    flat.append(seg)
                    owner.append((i, j))
        pacer = TokenPacer(self.rt.limiter, keys)
        journal = self.journal
        position = 0

        def before_each() -> None:
            nonlocal position
            g = group_at.get(position)
            if g is not None and before_group is not None:
                before_group(groups[g], groups[g + 1] if g + 1 < len(groups) else [])
            pacer.take()
            if journal is not None:
                journal.write_accepted()
            position += 1

        hook = None
        if on_result is not None:
            sink = on_result

            def hook(k: int, result: SubmitResult) -> None:
                i, j = owner[k]
                sink(i, j, result)

        # One sender per session at a time: a batch's groups then go out back to back, so at
        # most one group per session is journaled as "about to be sent" and is not yet on the
        # wire. Other tasks load and record meanwhile.
        with self._turns.setdefault(id(session), threading.Lock()):
            return session.submit_many(flat, before_each=before_each, on_result=hook)


def _not_sent(submit: Submit) -> SubmitResult:
    return SubmitResult(ref=submit.ref, outcome=Outcome.NOT_SENT)


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SmsRuntime:
    """All gateways' sessions of this worker process, the send journal and the health thread."""

    def __init__(
        self, rt: Runtime, gateway_names: Sequence[str], switch_queue: QueueSwitch, on_receipts: Callable[[], None]
    ) -> None:
        owner = process_owner()
        by_name = rt.gateways.smpp_by_name()
        self.journal = SendJournal(rt.redis, journal_ttl(rt.settings.lease_seconds).total_seconds())
        self.gateways = {
            name: GatewaySessions(by_name[name], rt, switch_queue, on_receipts, owner, self.journal)
            for name in gateway_names
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._health_loop, name="smpp-health", daemon=True)

    def start(self) -> None:
        for g in self.gateways.values():
            g.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for g in self.gateways.values():
            g.stop()
        self.journal.close()

    def _health_loop(self) -> None:
        while not self._stop.wait(HEALTH_INTERVAL_S):
            for g in self.gateways.values():
                try:
                    g.health()
                except redis.RedisError as exc:  # Redis down: failover marks wait, sessions carry on
                    log.debug("gateway %s: health report skipped: %s", g.gateway.name, exc)
                except Exception:
                    log.exception("gateway %s: health report failed", g.gateway.name)


_sms_runtime: SmsRuntime | None = None


def set_sms_runtime(runtime: SmsRuntime | None) -> None:
    global _sms_runtime
    _sms_runtime = runtime


def sms_runtime() -> SmsRuntime | None:
    return _sms_runtime
