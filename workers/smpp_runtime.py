"""Long-lived SMPP sessions inside an SMS worker process.

Per gateway, the worker holds bind slots as leases in Redis (never more than `binds` sessions
across every worker on every host), opens one session per slot held, and consumes the gateway's
queue only while it holds at least one. Sessions outlive tasks, so receipts keep arriving
between batches; each receipt batch is committed before deliver_sm_resp goes back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from campaigns.receipts import IncomingDeliver, store_delivers
from gateways.config import SmppGateway
from gateways.leases import LeaseKeeper, LeaseManager
from gateways.ratelimit import safe_rate
from gateways.smpp.client import BindConfig, Deliver, SmppSession, Submit, SubmitResult
from loa.db import transaction
from workers.runtime import Runtime

log = logging.getLogger(__name__)

DOWN_KEY = "loa:gw:down:{}"
QueueSwitch = Callable[[str, bool], None]


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
        self, gateway: SmppGateway, rt: Runtime, switch_queue: QueueSwitch, on_receipts: Callable[[], None], owner: str
    ) -> None:
        self.gateway, self.rt = gateway, rt
        self._switch_queue = switch_queue
        self._on_receipts = on_receipts
        self._sessions: dict[int, SmppSession] = {}
        self._lock = threading.Lock()
        self._consuming = False
        self._unbound_since: float | None = time.monotonic()
        leases = LeaseManager(rt.redis, owner=owner)
        self.keeper = LeaseKeeper(leases, f"smpp:{gateway.name}", gateway.binds, gateway.binds, self._on_change)
        self._pool = ThreadPoolExecutor(max_workers=gateway.binds, thread_name_prefix=f"smpp-{gateway.name}-send")

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        self._switch(False)
        self.keeper.stop(release=True)
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- leases → sessions → queue consumption
    def _on_change(self, held: set[int]) -> None:
        with self._lock:
            for slot in list(self._sessions):
                if slot not in held:
                    log.warning("gateway %s lost bind slot %s; closing its session", self.gateway.name, slot)
                    self._sessions.pop(slot).close()
            for slot in held:
                if slot not in self._sessions:
                    session = SmppSession(bind_config(self.gateway), self._deliver)
                    session.start()
                    self._sessions[slot] = session
            has_any = bool(self._sessions)
        self._switch(has_any)

    def _switch(self, consume: bool) -> None:
        if consume != self._consuming:
            self._consuming = consume
            self._switch_queue(self.gateway.name, consume)

    def bound_sessions(self) -> list[SmppSession]:
        with self._lock:
            return [s for s in self._sessions.values() if s.bound]

    def health(self) -> None:
        """Mark the gateway down (for failover) when it has had no bound session for too long."""
        if self.bound_sessions():
            self._unbound_since = None
            self.rt.redis.delete(DOWN_KEY.format(self.gateway.name))
            return
        if self._unbound_since is None:
            self._unbound_since = time.monotonic()
        failover = self.gateway.failover
        if failover and self._sessions and time.monotonic() - self._unbound_since > failover.after_s:
            self.rt.redis.set(DOWN_KEY.format(self.gateway.name), "1", ex=int(failover.after_s * 2) + 10)

    # --- receipts
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
            store_delivers(session, self.gateway.name, incoming)
        # Committed: now the adapter may answer deliver_sm_resp. Ask for the inbox to be applied.
        self._on_receipts()

    # --- submitting
    def submit(
        self, submits: Sequence[Sequence[Submit]], rate_cap: tuple[str, float] | None
    ) -> list[list[SubmitResult]]:
        """Send messages (each a list of segment submits) over the bound sessions, in parallel.

        Every segment takes a token from the shared limiter first: the gateway's TPS across all
        hosts, and the campaign's own rate cap on top."""
        sessions = self.bound_sessions()
        if not sessions:
            return [[_not_sent(s) for s in msg] for msg in submits]
        keys = [(limiter_key(self.gateway.name), safe_rate(self.gateway.tps))]
        if rate_cap is not None:
            keys.append(rate_cap)
        limiter = self.rt.limiter

        def before_each() -> None:
            limiter.acquire_many(keys)

        shares: list[list[int]] = [[] for _ in sessions]
        for i in range(len(submits)):
            shares[i % len(sessions)].append(i)

        def run(session: SmppSession, indexes: list[int]) -> list[SubmitResult]:
            flat = [seg for i in indexes for seg in submits[i]]
            return session.submit_many(flat, before_each=before_each) if flat else []

        futures = [self._pool.submit(run, s, idx) for s, idx in zip(sessions, shares, strict=True)]
        results: list[list[SubmitResult]] = [[] for _ in submits]
        for future, indexes in zip(futures, shares, strict=True):
            flat_results = iter(future.result())
            for i in indexes:
                results[i] = [next(flat_results) for _ in submits[i]]
        return results


def _not_sent(submit: Submit) -> SubmitResult:
    from gateways.smpp.client import Outcome

    return SubmitResult(ref=submit.ref, outcome=Outcome.NOT_SENT)


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SmsRuntime:
    """All gateways' sessions of this worker process, plus a health thread."""

    def __init__(
        self, rt: Runtime, gateway_names: Sequence[str], switch_queue: QueueSwitch, on_receipts: Callable[[], None]
    ) -> None:
        owner = process_owner()
        by_name = rt.gateways.smpp_by_name()
        self.gateways = {
            name: GatewaySessions(by_name[name], rt, switch_queue, on_receipts, owner) for name in gateway_names
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

    def _health_loop(self) -> None:
        while not self._stop.wait(2.0):
            for g in self.gateways.values():
                try:
                    g.health()
                except Exception:  # Redis down: failover marks wait, sessions carry on
                    log.debug("gateway health check failed", exc_info=True)


_sms_runtime: SmsRuntime | None = None


def set_sms_runtime(runtime: SmsRuntime | None) -> None:
    global _sms_runtime
    _sms_runtime = runtime


def sms_runtime() -> SmsRuntime | None:
    return _sms_runtime
