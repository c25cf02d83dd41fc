"""Worker start-up: SMS workers open their gateways' sessions once the Celery consumer is ready,
and switch each gateway's queue on or off as they gain or lose bind leases."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import Any

from celery import signals

from workers.queues import sms_queue
from workers.runtime import get_runtime
from workers.smpp_runtime import SmsRuntime, set_sms_runtime

log = logging.getLogger(__name__)

# Young-generation threshold once the worker runs (CPython's default is 700 allocations).
GC_YOUNG_THRESHOLD = 20_000


def install_gc_tuning() -> None:
    """Once the worker is up, move everything allocated so far (Celery, SQLAlchemy, pydantic:
    ~150,000 objects) out of the collector's reach and collect the young generation less often.

    Why: a full collection scanned all of that with the interpreter lock held (up to ~100 ms),
    about once every 3 s under load; with the young collections an SMS worker stood still ~9 % of
    the time, its SMPP reader and sender included, while submits waited for window slots. Frozen
    objects are never collected; a long-lived worker's start-up objects live as long as it does."""

    signals.worker_ready.connect(tune_gc, weak=False)


def tune_gc(**_: Any) -> None:
    gc.collect()
    gc.freeze()
    young_default, middle, old = gc.get_threshold()
    gc.set_threshold(max(young_default, GC_YOUNG_THRESHOLD), middle, old)
    log.info("worker ready: %d start-up objects frozen out of the garbage collector's scans", gc.get_freeze_count())


def install_sms_boot(gateway_names: Sequence[str]) -> None:
    """Arrange for this worker process to hold sessions for these SMPP gateways."""
    names = list(gateway_names)
    if not names:
        return

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        consumer = sender
        rt = get_runtime()

        def switch(gateway: str, consume: bool) -> None:
            queue = sms_queue(gateway)
            # The consumer's own loop must make the change; call_soon is safe from our threads.
            if consume:
                log.info("holding a bind for %s: consuming %s", gateway, queue)
                consumer.call_soon(consumer.add_task_queue, queue)
            else:
                log.info("no bind held for %s: not consuming %s", gateway, queue)
                consumer.call_soon(consumer.cancel_task_queue, queue)

        def receipts_arrived() -> None:
            from workers.tasks import kick_receipts

            kick_receipts(rt)

        runtime = SmsRuntime(rt, names, switch, receipts_arrived)
        set_sms_runtime(runtime)
        runtime.start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        from workers.smpp_runtime import sms_runtime

        runtime = sms_runtime()
        if runtime is not None:
            runtime.stop()
            set_sms_runtime(None)
