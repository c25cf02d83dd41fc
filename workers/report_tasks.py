"""Reporting tasks (queue `receipts`): the periodic upkeep of counters and webhooks, and export jobs.

`loa.reports.upkeep` (beat, every few seconds; one at a time through a Redis lock):
compacts counter journals, reconciles finished campaigns and sends their final report, re-checks
small active campaigns against an exact count now and then, produces progress snapshots and
batched message changes for webhooks, then kicks the webhook sender. The bodies are plain
functions in `campaigns/` that tests call directly.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import func, select
from sqlmodel import Session, col

from campaigns import counters, reports, tally, webhooks
from campaigns.models import Campaign, CampaignStatus
from campaigns.report_models import CampaignCounter, ReportState, WebhookDelivery
from loa.db import transaction
from loa.timeutil import utcnow
from workers.celery_app import app
from workers.queues import RECEIPTS_QUEUE
from workers.retrying import with_db_retry
from workers.runtime import Runtime, get_runtime
from workers.tasks import exclusive, kick

log = logging.getLogger(__name__)

COMPACT_ROWS = 500  # journal rows of one campaign before they are folded
RECHECK_EVERY = timedelta(minutes=10)
RECHECK_MAX_MESSAGES = 100_000  # larger campaigns are recounted only when they end, or on demand
PURGE_EVERY_S = 600


def compact_journals(session: Session) -> int:
    busy = session.execute(
        select(col(CampaignCounter.campaign_id))
        .group_by(col(CampaignCounter.campaign_id))
        .having(func.count() > COMPACT_ROWS)
        .limit(50)
    ).all()
    return sum(counters.compact(session, cid) for (cid,) in busy)


def recheck_active(session: Session, limit: int = 5) -> list[str]:
    """Reconcile small active campaigns not checked for a while (drift from any write path that
    bypassed the counters heals within minutes)."""
    active = [CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value, CampaignStatus.SCHEDULED.value]
    due = session.execute(
        select(col(Campaign.id))
        .join(ReportState, col(ReportState.campaign_id) == col(Campaign.id))
        .where(col(Campaign.status).in_(active), col(ReportState.reconciled_at) < utcnow() - RECHECK_EVERY)
        .limit(limit)
    ).all()
    ids = [cid for (cid,) in due]
    sizes: dict[str, int] = {}
    for cid, _status, n in tally.status_totals(session, ids):
        sizes[cid] = sizes.get(cid, 0) + n
    checked = []
    for cid in ids:
        if sizes.get(cid, 0) <= RECHECK_MAX_MESSAGES:
            counters.reconcile(session, cid)
        else:  # only the timestamp: the campaign's end reconciles it
            counters.upsert_state(session, cid, reconciled_at=utcnow())
        checked.append(cid)
    return checked


def upkeep(rt: Runtime) -> dict[str, Any]:
    def step(fn: Any) -> Any:
        def run() -> Any:
            with transaction(rt.engine) as session:
                return fn(session)

        return with_db_retry(run)

    result: dict[str, Any] = {
        "compacted": step(compact_journals),
        "finished": step(webhooks.report_finished),
        "rechecked": step(recheck_active),
        "progress": step(webhooks.produce_progress),
        "changes": step(webhooks.produce_changes),
    }
    for job_id in step(reports.requeue_stalled):
        if rt.redis.set(f"loa:export:requeued:{job_id}", "1", nx=True, ex=300):
            app.send_task("loa.export", args=[job_id], queue=RECEIPTS_QUEUE)
    if rt.redis.set("loa:reports:purged", "1", nx=True, ex=PURGE_EVERY_S):
        step(reports.purge_exports)
        step(webhooks.purge)

    def due(session: Session) -> bool:
        return bool(
            session.scalar(
                select(func.count()).where(
                    col(WebhookDelivery.status) == "pending", col(WebhookDelivery.next_attempt_at) <= utcnow()
                )
            )
        )

    if step(due):
        kick(rt, "loa.webhooks.deliver", RECEIPTS_QUEUE)
    return result


@app.task(name="loa.reports.upkeep", ignore_result=True)  # type: ignore[untyped-decorator]
def upkeep_task() -> dict[str, Any]:
    rt = get_runtime()
    try:
        with exclusive(rt, "reports", 120) as got:
            return upkeep(rt) if got else {"skipped": True}
    except redis.RedisError as exc:
        log.warning("reports upkeep skipped: redis unavailable (%s)", exc)
        return {"skipped": True}


@app.task(name="loa.export", ignore_result=True)  # type: ignore[untyped-decorator]
def export(job_id: str) -> str | None:
    from loa import metrics

    rt = get_runtime()
    try:
        job = reports.run_export(rt.engine, job_id)
    except Exception:
        metrics.get().exports.labels(format="xlsx", result="failed").inc()
        raise
    if job is not None and job.status == "done":
        metrics.get().exports.labels(format=job.format, result="done").inc()
    return job.status if job else None
