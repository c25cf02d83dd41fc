"""Prometheus metrics of the SMPP gateways, pushed by SMS workers and summed by the API's `/metrics`.

Like the rest of Loa's metrics (:mod:`loa.metrics`) they live in prometheus-client's
multiprocess mode: `loa worker` switches it on before anything here is created, each worker
process writes its own files and the API adds them up. Gauges use `livesum`: the window
occupancy and bound sessions of every live worker, summed. Submit-to-receipt latency per gateway
is `loa_receipt_latency_seconds` in :mod:`loa.metrics` (observed when a message's final receipt
lands).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from gateways.smpp.client import Outcome, SubmitResult
from gateways.smpp.errors import is_throttle


@dataclass(frozen=True)
class SmppMetrics:
    submits: Counter
    errors: Counter
    throttles: Counter
    ambiguous: Counter
    window: Gauge
    bound: Gauge
    receipts: Counter
    replies: Counter

    @classmethod
    def create(cls) -> SmppMetrics:
        return cls(
            submits=Counter("loa_smpp_submits", "submit_sm written to an SMSC (segments)", ["gateway"]),
            errors=Counter("loa_smpp_errors", "submit_sm answered with an error status, by code", ["gateway", "code"]),
            throttles=Counter("loa_smpp_throttles", "submit_sm answered 0x58 or 0x14 (slow down)", ["gateway"]),
            ambiguous=Counter(
                "loa_smpp_ambiguous", "submit_sm never answered (session lost or response timeout)", ["gateway"]
            ),
            window=Gauge(
                "loa_smpp_window_occupancy",
                "submit_sm outstanding (written, not yet answered), all sessions",
                ["gateway"],
                multiprocess_mode="livesum",
            ),
            bound=Gauge(
                "loa_smpp_bound_sessions", "Sessions bound to the SMSC", ["gateway"], multiprocess_mode="livesum"
            ),
            receipts=Counter("loa_smpp_receipts", "Delivery receipts stored, by receipt state", ["gateway", "state"]),
            replies=Counter("loa_smpp_replies", "MO messages (replies) stored", ["gateway", "opt_out"]),
        )


_lock = threading.Lock()
_metrics: SmppMetrics | None = None


def get() -> SmppMetrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = SmppMetrics.create()
        return _metrics


@dataclass(frozen=True)
class ResultTally:
    submits: int
    errors: int  # error statuses other than throttling, and ambiguous submits
    throttles: int
    by_code: Tally[int]
    ambiguous: int


def tally(results: Iterable[SubmitResult]) -> ResultTally:
    by_code: Tally[int] = Tally()
    submits = ambiguous = throttles = 0
    for r in results:
        if r.outcome is Outcome.NOT_SENT:
            continue
        submits += 1
        if r.outcome is Outcome.AMBIGUOUS:
            ambiguous += 1
        elif r.outcome is Outcome.ERROR:
            code = r.command_status or 0
            by_code[code] += 1
            if is_throttle(code):
                throttles += 1
    errors = sum(by_code.values()) - throttles + ambiguous
    return ResultTally(submits, errors, throttles, by_code, ambiguous)


def observe_results(gateway: str, t: ResultTally) -> None:
    m = get()
    if t.submits:
        m.submits.labels(gateway=gateway).inc(t.submits)
    if t.throttles:
        m.throttles.labels(gateway=gateway).inc(t.throttles)
    if t.ambiguous:
        m.ambiguous.labels(gateway=gateway).inc(t.ambiguous)
    for code, n in t.by_code.items():
        m.errors.labels(gateway=gateway, code=f"0x{code:02X}").inc(n)


def observe_receipts(gateway: str, states: Iterable[str], replies: int, opt_outs: int) -> None:
    m = get()
    for state, n in Tally(states).items():
        m.receipts.labels(gateway=gateway, state=state).inc(n)
    if replies - opt_outs:
        m.replies.labels(gateway=gateway, opt_out="false").inc(replies - opt_outs)
    if opt_outs:
        m.replies.labels(gateway=gateway, opt_out="true").inc(opt_outs)


def set_sessions(gateway: str, bound: int, outstanding: int) -> None:
    m = get()
    m.bound.labels(gateway=gateway).set(bound)
    m.window.labels(gateway=gateway).set(outstanding)
