"""Prometheus metrics shared by every Loa process, and their exposition at the API's `/metrics`.

Workers, the scheduler and the API are separate processes (and `loa run` starts several), so the
metrics use prometheus-client's multiprocess mode: each process writes its values to mmap files in
one directory (`PROMETHEUS_MULTIPROC_DIR`, default `<state dir>/metrics`) and the API sums them
at scrape time. Processes on other hosts need that directory shared (a volume), or a Prometheus
scrape of their own host's API.

Metric objects are created on first use, not at import, because multiprocess mode must be
switched on (`enable_multiprocess`) before a metric exists in a process. Other modules take them
from `get()`:

    from loa import metrics
    metrics.get().transitions.labels(gateway="viettel", status="sent").inc(200)

Besides the pushed metrics, the API computes gauges at scrape time (`LiveCollector`): Celery queue
depths from Redis and the messages of active campaigns by status from the counters table.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from loa.settings import Settings

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Receipts arrive from seconds to days after the submit.
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
NO_WAIT_S = 0.001
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Metrics:
    """Every metric a Loa process pushes; label values are gateway names, statuses, kinds."""

    transitions: Counter  # messages entering a status, by the gateway they went through
    segments: Counter  # SMS segments (or emails) accepted by a gateway: throughput per gateway
    receipt_latency: Histogram  # submit → final receipt, per gateway
    limiter_wait: Histogram  # waits (>= 1 ms) for the shared rate limiter, per limiter key
    webhook_deliveries: Counter  # webhook POSTs by result
    exports: Counter  # export jobs by format and result
    registry: CollectorRegistry | None = None

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        reg: Any = registry if registry is not None else REGISTRY
        return cls(
            transitions=Counter(
                "loa_messages",
                "Messages that entered a status (per gateway; '' before routing)",
                ["channel", "gateway", "status"],
                registry=reg,
            ),
            segments=Counter(
                "loa_gateway_accepted",
                "Segments (SMS) or messages (email) accepted by a gateway",
                ["gateway"],
                registry=reg,
            ),
            receipt_latency=Histogram(
                "loa_receipt_latency_seconds",
                "Seconds from submit to the final delivery receipt",
                ["gateway"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            limiter_wait=Histogram(
                "loa_limiter_wait_seconds",
                "Waits of 1 ms or more for the shared rate limiter, in seconds",
                ["key"],
                buckets=WAIT_BUCKETS,
                registry=reg,
            ),
            webhook_deliveries=Counter(
                "loa_webhook_deliveries", "Webhook POST attempts by result", ["event", "result"], registry=reg
            ),
            exports=Counter(
                "loa_exports", "Report export jobs by format and result", ["format", "result"], registry=reg
            ),
            registry=registry,
        )


_lock = threading.Lock()
_metrics: Metrics | None = None


def get() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics.create()
        return _metrics


def metrics_dir(settings: Settings) -> Path:
    configured = os.environ.get(ENV)
    return Path(configured) if configured else (settings.state_dir / "metrics").resolve()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(ENV))


def enable_multiprocess(settings: Settings) -> Path:
    """Switch this process to multiprocess mode (call at process start, before any metric is
    used). Child processes inherit the directory through the environment."""
    path = metrics_dir(settings)
    path.mkdir(parents=True, exist_ok=True)
    with _lock:
        if _metrics is not None and not multiprocess_enabled():
            log.warning("metrics were used before multiprocess mode was enabled; they stay in-process")
            return path
        os.environ[ENV] = str(path)
        # prometheus-client picks its value class at import; metrics are created after this line.
        prometheus_values.ValueClass = prometheus_values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def observe_wait(key: str, seconds: float) -> None:
    """Limiter wait, labelled by the kind of key ("sms:viettel"; campaign keys share one label)."""
    label = "campaign" if key.startswith("campaign:") else key
    get().limiter_wait.labels(key=label).observe(max(0.0, seconds))


def timed_wait(key: str, fn: Callable[[], bool]) -> bool:
    """Run a blocking limiter acquire and record how long it waited, when it did wait (a grant
    within a millisecond is no wait, and costs no metric update on the hot path)."""
    start = time.monotonic()
    try:
        return fn()
    finally:
        waited = time.monotonic() - start
        if waited >= NO_WAIT_S:
            observe_wait(key, waited)


# --- exposition ----------------------------------------------------------------------------------
class LiveCollector(Collector):
    """Gauges computed at scrape time: Celery queue depths and active campaigns' messages."""

    def __init__(
        self, queue_depths: Callable[[], dict[str, int]], messages: Callable[[], Iterable[tuple[str, str, int]]]
    ):
        self._queue_depths = queue_depths
        self._messages = messages

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("loa_queue_depth", "Tasks waiting in each Celery queue", labels=["queue"])
        try:
            for queue, n in sorted(self._queue_depths().items()):
                depth.add_metric([queue], n)
        except Exception as exc:  # a scrape must not fail because Redis blinked
            log.debug("queue depths unavailable: %s", exc)
        yield depth
        messages = GaugeMetricFamily(
            "loa_campaign_messages", "Messages of active campaigns by status", labels=["campaign_id", "status"]
        )
        try:
            for campaign_id, status, n in self._messages():
                messages.add_metric([campaign_id, status], n)
        except Exception as exc:
            log.debug("campaign counters unavailable: %s", exc)
        yield messages


def render(settings: Settings, live: Collector | None = None) -> bytes:
    """The text exposition: every process's pushed metrics plus the live gauges."""
    registry = CollectorRegistry()
    path = metrics_dir(settings)
    if path.is_dir():
        MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
        output = b""
    else:
        # One process without a metrics directory (an API started on its own): its own values.
        output = generate_latest(REGISTRY)
    if live is not None:
        registry.register(live)
    return output + generate_latest(registry)
