"""Worker start-up: SMS workers open their gateways' sessions once the Celery consumer is ready,
and switch each gateway's queue on or off as they gain or lose bind leases."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import signals

from workers.queues import sms_queue
from workers.runtime import get_runtime
from workers.smpp_runtime import SmsRuntime, set_sms_runtime

log = logging.getLogger(__name__)


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
