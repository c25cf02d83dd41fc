"""Webhooks: an organisation's callback URLs, and what Loa POSTs to them.

Events:
- `campaign.progress`: a snapshot of a running or paused campaign's counters, at most every
  `progress_interval_s` (the shortest among the organisation's webhooks applies).
- `campaign.report`: the final report once a campaign is completed, cancelled or failed (sent
  after the counters were reconciled with an exact count).
- `message.status`: per-message status changes, batched (up to `CHANGES_PER_POST` per POST).

Every POST is signed: `X-Loa-Signature: sha256=<hex>` is HMAC-SHA256 with the webhook's secret over
`<X-Loa-Timestamp>.<raw body>` (the timestamp defeats replays; receivers should refuse old ones).
Deliveries sit in an outbox table: a 2xx delivers; a 5xx, 408, 429, timeout or connection error
is retried with exponential backoff (up to `MAX_ATTEMPTS`); any other answer (a 4xx) fails at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import String, cast, delete, func, insert, or_, select, update
from sqlmodel import Session, col

from campaigns import counters, tally
from campaigns.models import Campaign, CampaignStatus
from campaigns.report_models import MessageChange, ReportState, Webhook, WebhookDelivery
from loa.crypto import SecretBox, SecretDecryptError
from loa.errors import Invalid, NotFound
from loa.timeutil import iso_z, utcnow

PROGRESS, REPORT, MESSAGES = "campaign.progress", "campaign.report", counters.MESSAGE_EVENTS
EVENTS = (PROGRESS, REPORT, MESSAGES)
MAX_WEBHOOKS = 20
MIN_INTERVAL_S = 10
CHANGES_PER_POST = 500
MAX_ATTEMPTS = 10
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 3600.0
CLAIM_LEASE_S = 120
TIMEOUT_S = 10.0
RETRY_STATUSES = frozenset({408, 429})
FINISHED = [CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value, CampaignStatus.FAILED.value]
USER_AGENT = "Loa-Webhooks/1"


def _aad(webhook_id: str) -> str:
    return f"webhook:{webhook_id}"


def register(
    session: Session,
    box: SecretBox,
    org_id: str,
    url: str,
    events: Sequence[str],
    *,
    secret: str | None = None,
    progress_interval_s: int = 60,
    description: str = "",
    created_by: str | None = None,
) -> tuple[Webhook, str]:
    """A new webhook and its signing secret (shown to the caller once, stored encrypted)."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Invalid("url: an http:// or https:// URL is needed", {"field": "url"})
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise Invalid(f"events: choose from {', '.join(EVENTS)}", {"field": "events", "unknown": unknown})
    if secret is not None and len(secret) < 16:
        raise Invalid("secret: at least 16 characters", {"field": "secret"})
    if progress_interval_s < MIN_INTERVAL_S:
        raise Invalid(f"progress_interval_s: at least {MIN_INTERVAL_S}", {"field": "progress_interval_s"})
    count = session.scalar(select(func.count()).where(col(Webhook.org_id) == org_id, col(Webhook.deleted_at).is_(None)))
    if int(count or 0) >= MAX_WEBHOOKS:
        raise Invalid(f"an organisation has at most {MAX_WEBHOOKS} webhooks", {"field": "url"})
    secret = secret or "whsec_" + secrets.token_urlsafe(24)
    hook = Webhook(
        org_id=org_id,
        url=str(parsed),
        events=list(dict.fromkeys(events)),
        secret="",
        progress_interval_s=progress_interval_s,
        description=description[:200],
        created_by=created_by,
    )
    hook.secret = box.encrypt(secret, _aad(hook.id))
    session.add(hook)
    session.flush()
    return hook, secret


def active(session: Session, org_id: str) -> list[Webhook]:
    stmt = select(Webhook).where(col(Webhook.org_id) == org_id, col(Webhook.deleted_at).is_(None))
    return list(session.scalars(stmt.order_by(col(Webhook.created_at))))


def remove(session: Session, org_id: str, webhook_id: str) -> Webhook:
    hook = session.scalars(
        select(Webhook).where(
            col(Webhook.id) == webhook_id, col(Webhook.org_id) == org_id, col(Webhook.deleted_at).is_(None)
        )
    ).first()
    if hook is None:
        raise NotFound(f"webhook {webhook_id} not found")
    hook.deleted_at = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.webhook_id) == webhook_id, col(WebhookDelivery.status) == "pending")
        .values(status="failed", last_error="webhook deleted")
    )
    return hook


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (tests and documentation): constant-time comparison."""
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


# --- producing deliveries ---------------------------------------------------------------------
def _subscribed(event: str) -> Any:
    return cast(col(Webhook.events), String).like(f'%"{event}"%')


def enqueue(session: Session, org_id: str, event: str, payload: dict[str, Any]) -> int:
    hooks = session.scalars(
        select(col(Webhook.id)).where(
            col(Webhook.org_id) == org_id, col(Webhook.deleted_at).is_(None), _subscribed(event)
        )
    ).all()
    if hooks:
        now = utcnow()
        body = {"event": event, "at": iso_z(now), **payload}
        rows = [{"webhook_id": h, "event": event, "payload": body, "next_attempt_at": now} for h in hooks]
        session.execute(insert(WebhookDelivery), rows)
    return len(hooks)


def campaign_summary(session: Session, campaign: Campaign, *, final: bool = False) -> dict[str, Any]:
    t = tally.read(session, campaign.id)
    counts = t.counts()
    summary: dict[str, Any] = {
        "id": campaign.id,
        "name": campaign.name,
        "channel": str(campaign.channel),
        "status": str(campaign.status),
        "waiting_for_window": campaign.waiting_for_window,
        "failure_reason": campaign.failure_reason,
        "created_at": iso_z(campaign.created_at),
        "launched_at": iso_z(campaign.launched_at),
        "finished_at": iso_z(campaign.finished_at),
        "counts": counts,
        "progress": tally.progress(counts),
        "by_gateway": t.by(counters.GATEWAY),
        "stats": tally.stats_view(t),
        "by_field": {name: t.by(counters.FIELD + name) for name in t.fields},
    }
    if final:
        summary["per_minute"] = t.per_minute()
        summary["report_csv"] = f"/v1/campaigns/{campaign.id}/report.csv"
    return summary


def produce_progress(session: Session, now: datetime | None = None) -> int:
    """Progress snapshots of running and paused campaigns whose organisation asked for them."""
    now = now or utcnow()
    rows = session.execute(
        select(col(Campaign.id), func.min(col(Webhook.progress_interval_s)), col(ReportState.progress_at))
        .join(Webhook, col(Webhook.org_id) == col(Campaign.org_id))
        .outerjoin(ReportState, col(ReportState.campaign_id) == col(Campaign.id))
        .where(
            col(Campaign.status).in_([CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value]),
            col(Webhook.deleted_at).is_(None),
            _subscribed(PROGRESS),
        )
        .group_by(col(Campaign.id), col(ReportState.progress_at))
    ).all()
    sent = 0
    for campaign_id, interval, last in rows:
        if last is not None and (now - last).total_seconds() < interval:
            continue
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            continue
        enqueue(session, campaign.org_id, PROGRESS, {"campaign": campaign_summary(session, campaign)})
        counters.upsert_state(session, campaign_id, progress_at=now)
        sent += 1
    return sent


def report_finished(session: Session, limit: int = 20) -> list[str]:
    """Campaigns that ended since the last pass: reconcile their counters with an exact count,
    then send the final report. Returns their ids."""
    rows = session.execute(
        select(col(Campaign.id))
        .outerjoin(ReportState, col(ReportState.campaign_id) == col(Campaign.id))
        .where(
            col(Campaign.status).in_(FINISHED),
            or_(col(ReportState.final_at).is_(None), col(ReportState.final_at) < col(Campaign.finished_at)),
        )
        .order_by(col(Campaign.finished_at))
        .limit(limit)
    ).all()
    done: list[str] = []
    for (campaign_id,) in rows:
        counters.reconcile(session, campaign_id)
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            continue
        enqueue(session, campaign.org_id, REPORT, {"campaign": campaign_summary(session, campaign, final=True)})
        counters.upsert_state(session, campaign_id, final_at=utcnow())
        done.append(campaign_id)
    return done


def produce_changes(session: Session, limit: int = CHANGES_PER_POST, max_changes: int = 50_000) -> int:
    """Batch pending per-message status changes into `message.status` deliveries of at most
    `limit` changes; stops after `max_changes` (the next upkeep goes on)."""
    orgs = session.scalars(select(col(MessageChange.org_id)).distinct()).all()
    moved = 0
    for org_id in orgs:
        while moved < max_changes:
            stmt = (
                select(MessageChange)
                .where(col(MessageChange.org_id) == org_id)
                .order_by(col(MessageChange.id))
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            changes = list(session.scalars(stmt))
            if not changes:
                break
            items = [
                {
                    "seq": c.id,  # orders the changes of one message (timestamps are to the second)
                    "message_id": str(c.message_id),
                    "campaign_id": c.campaign_id,
                    "to": c.to,
                    "status": c.status,
                    "error": c.error_code,
                    "at": iso_z(c.at),
                }
                for c in changes
            ]
            enqueue(session, org_id, MESSAGES, {"changes": items})
            session.execute(delete(MessageChange).where(col(MessageChange.id).in_([c.id for c in changes])))
            moved += len(changes)
    return moved


# --- delivering -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    id: int
    url: str
    secret: str
    event: str
    body: bytes
    attempts: int


@dataclass(frozen=True)
class Result:
    job: Job
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return True  # timeout, connection refused or reset
        return self.status >= 500 or self.status in RETRY_STATUSES


def claim_due(session: Session, box: SecretBox, limit: int = 50, now: datetime | None = None) -> list[Job]:
    """Pending deliveries that are due, leased for `CLAIM_LEASE_S` (a crash retries them then)."""
    now = now or utcnow()
    stmt = (
        select(WebhookDelivery, Webhook)
        .join(Webhook, col(Webhook.id) == col(WebhookDelivery.webhook_id))
        .where(col(WebhookDelivery.status) == "pending", col(WebhookDelivery.next_attempt_at) <= now)
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
    jobs: list[Job] = []
    for delivery, hook in session.execute(stmt).tuples():
        assert delivery.id is not None
        try:
            secret = box.decrypt(hook.secret, _aad(hook.id))
        except SecretDecryptError as exc:
            delivery.status, delivery.last_error = "failed", f"secret unreadable: {exc}"[:500]
            continue
        delivery.next_attempt_at = now + timedelta(seconds=CLAIM_LEASE_S)
        body = json.dumps(delivery.payload, ensure_ascii=False, separators=(",", ":")).encode()
        jobs.append(Job(delivery.id, hook.url, secret, delivery.event, body, delivery.attempts))
    return jobs


def post(client: httpx.Client, job: Job) -> Result:
    """One POST (no database connection is held while it runs)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Loa-Event": job.event,
        "X-Loa-Delivery": str(job.id),
        "X-Loa-Timestamp": str(timestamp),
        "X-Loa-Signature": sign(job.secret, timestamp, job.body),
    }
    try:
        response = client.post(job.url, content=job.body, headers=headers)
    except httpx.TimeoutException:
        return Result(job, None, "timeout")
    except httpx.HTTPError as exc:
        return Result(job, None, f"{type(exc).__name__}: {exc}"[:500])
    return Result(job, response.status_code, None if response.is_success else response.text[:200])


def backoff(attempts: int, base_s: float = BACKOFF_BASE_S) -> float:
    """Seconds before attempt `attempts + 1`: exponential with 25% jitter, capped at an hour."""
    return float(min(BACKOFF_MAX_S, base_s * 2 ** max(0, attempts - 1)) * (1 + random.random() / 4))


def record(session: Session, results: Sequence[Result], *, base_s: float = BACKOFF_BASE_S) -> dict[str, int]:
    """Store what the POSTs gave: delivered, retry later, or failed."""
    now = utcnow()
    tally_: dict[str, int] = {"delivered": 0, "retry": 0, "failed": 0}
    for r in results:
        attempts = r.job.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_status": r.status, "last_error": r.error}
        if r.delivered:
            outcome = "delivered"
            values |= {"status": "delivered", "delivered_at": now}
        elif r.retryable and attempts < MAX_ATTEMPTS:
            outcome = "retry"
            values |= {"next_attempt_at": now + timedelta(seconds=backoff(attempts, base_s))}
        else:
            outcome = "failed"
            values |= {"status": "failed"}
        session.execute(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == r.job.id, col(WebhookDelivery.status) == "pending")
            .values(**values)
        )
        tally_[outcome] += 1
    return tally_


def purge(session: Session, older_than: timedelta = timedelta(days=7)) -> int:
    """Finished deliveries are kept a week for `GET /v1/webhooks/{id}/deliveries`."""
    result = session.execute(
        delete(WebhookDelivery).where(
            col(WebhookDelivery.status) != "pending", col(WebhookDelivery.created_at) < utcnow() - older_than
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
