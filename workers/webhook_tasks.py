"""Webhook delivery (queue `receipts`): claim due deliveries from the outbox, POST them in
parallel with no database connection held, record the answers (retry with backoff or fail).
Kicked by the reports upkeep when deliveries are due; one sender at a time per Redis lock."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx

from campaigns import webhooks
from loa import metrics
from loa.db import transaction
from workers.celery_app import app
from workers.retrying import with_db_retry
from workers.runtime import Runtime, get_runtime
from workers.tasks import exclusive

log = logging.getLogger(__name__)

PARALLEL = 8
BATCH = 50
MAX_RUN_S = 60.0


def deliver_due(
    rt: Runtime, *, client: httpx.Client | None = None, max_run_s: float = MAX_RUN_S, base_s: float | None = None
) -> dict[str, int]:
    """Deliver what is due until nothing is, or `max_run_s` has passed."""
    totals = {"delivered": 0, "retry": 0, "failed": 0}
    own = client is None
    http = client or httpx.Client(timeout=webhooks.TIMEOUT_S, follow_redirects=False)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="webhook") as pool:
            while time.monotonic() - started < max_run_s:

                def claim() -> list[webhooks.Job]:
                    with transaction(rt.engine) as session:
                        return webhooks.claim_due(session, rt.box, BATCH)

                jobs = with_db_retry(claim)
                if not jobs:
                    break
                results = list(pool.map(lambda job: webhooks.post(http, job), jobs))
                save = partial(_save, rt, results, base_s or webhooks.BACKOFF_BASE_S)
                for outcome, n in with_db_retry(save).items():
                    totals[outcome] += n
                for r in results:
                    result = "delivered" if r.delivered else (str(r.status) if r.status else "error")
                    metrics.get().webhook_deliveries.labels(event=r.job.event, result=result).inc()
    finally:
        if own:
            http.close()
    if totals["failed"]:
        log.warning("webhooks: %s deliveries failed for good", totals["failed"])
    return totals


def _save(rt: Runtime, results: list[webhooks.Result], base_s: float) -> dict[str, int]:
    with transaction(rt.engine) as session:
        return webhooks.record(session, results, base_s=base_s)


@app.task(name="loa.webhooks.deliver", ignore_result=True)  # type: ignore[untyped-decorator]
def deliver() -> dict[str, int]:
    rt = get_runtime()
    with exclusive(rt, "webhooks", int(MAX_RUN_S) + 60) as got:
        return deliver_due(rt) if got else {}
