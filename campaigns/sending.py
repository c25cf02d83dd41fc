"""The database halves of a send batch: load and render before the network call, record the
outcomes in bulk after it. The session is closed in between, so a slow carrier never holds a
database connection.

Secrets are decrypted here, in the send worker, only for rendering; the rendered text lives in
memory for the duration of the batch and is never stored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlmodel import Session, col

from campaigns.models import Campaign, CampaignStatus, Message, MessageEvent, MessageStatus, SmsSegment
from campaigns.recipients import secret_aad
from campaigns.templates import Rendered, render
from campaigns.windows import window_end_utc
from loa.crypto import SecretBox, SecretDecryptError
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

RETRY_BASE_S = 30.0
RETRY_MAX_S = 3600.0


@dataclass
class LoadedMessage:
    id: int
    to: str
    attempts: int
    rendered: Rendered


@dataclass
class LoadedBatch:
    campaign: Campaign | None
    messages: list[LoadedMessage] = field(default_factory=list)
    validity: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one message in a batch; `kind` decides the new status."""

    message_id: int
    kind: str  # sent | failed | retry | ambiguous | not_sent
    error_code: str | None = None
    error_text: str | None = None
    provider_ids: Sequence[str] = ()
    segments: int = 1
    suppress: bool = False


def load_batch(session: Session, box: SecretBox, campaign_id: str, ids: Sequence[int], claim: str) -> LoadedBatch:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.status is not CampaignStatus.RUNNING or campaign.waiting_for_window:
        release(session, ids, claim)
        return LoadedBatch(campaign=None)
    rows = session.execute(
        select(
            col(Message.id), col(Message.to), col(Message.fields), col(Message.secrets), col(Message.attempts)
        ).where(
            col(Message.id).in_(ids),
            col(Message.claim) == claim,
            col(Message.status) == MessageStatus.DISPATCHING.value,
        )
    ).all()
    batch = LoadedBatch(campaign=campaign, validity=_validity(campaign))
    failures: list[Outcome] = []
    for mid, to, fields, token, attempts in rows:
        values: dict[str, Any] = dict(fields)
        if token:
            try:
                values.update(box.decrypt_fields(token, secret_aad(campaign.org_id, to)))
            except SecretDecryptError as exc:
                failures.append(Outcome(mid, "failed", "secret_unreadable", str(exc)))
                continue
        try:
            rendered = render(campaign.template, values)
        except Exception as exc:  # a template error names the field, never a value
            failures.append(Outcome(mid, "failed", "template_error", type(exc).__name__ + ": " + str(exc)[:200]))
            continue
        batch.messages.append(LoadedMessage(int(mid), str(to), int(attempts), rendered))
    if failures:
        record(session, failures, claim, max_attempts=1)
    return batch


def _validity(campaign: Campaign) -> datetime | None:
    ends = [t for t in (campaign.deadline, window_end_utc(campaign.window, utcnow())) if t is not None]
    return min(ends) if ends else None


def release(session: Session, ids: Iterable[int], claim: str) -> None:
    """Give claimed rows back to the queue untouched (campaign paused, window closed, shutdown)."""
    session.execute(
        update(Message)
        .where(
            col(Message.id).in_(list(ids)),
            col(Message.claim) == claim,
            col(Message.status) == MessageStatus.DISPATCHING.value,
        )
        .values(status=MessageStatus.QUEUED.value, claim=None, lease_until=None)
    )


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts - 1)))


def record(
    session: Session,
    outcomes: Sequence[Outcome],
    claim: str,
    *,
    max_attempts: int,
    gateway: str | None = None,
    sent_status: MessageStatus = MessageStatus.SENT,
    ambiguous_policy: str = "resend",
) -> dict[str, int]:
    """Apply outcomes with conditional updates; returns how many of each kind were applied."""
    now = utcnow()
    pending = [MessageStatus.DISPATCHING.value, MessageStatus.QUEUED.value]
    ours = [MessageStatus.DISPATCHING.value]
    events: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    ids = [o.message_id for o in outcomes]
    attempts = {
        int(mid): int(n)
        for mid, n in session.execute(select(col(Message.id), col(Message.attempts)).where(col(Message.id).in_(ids)))
    }
    for o in outcomes:
        tried = int(attempts.get(o.message_id, 0)) + (0 if o.kind == "not_sent" else 1)
        values: dict[str, Any] = {"updated_at": now, "claim": None, "lease_until": None, "attempts": tried}
        allowed = ours
        kind = o.kind
        if kind == "ambiguous" and ambiguous_policy == "hold":
            kind = "failed"
        if kind in ("retry", "ambiguous") and tried >= max_attempts:
            kind = "failed"
        if kind == "sent":
            allowed = pending  # the carrier accepted it: that is the truth, whatever a pause did since
            values |= {
                "status": sent_status.value,
                "provider_ids": ";".join(o.provider_ids) or None,
                "submitted_at": now,
                "segments": o.segments,
                "error_code": None,
                "error_text": None,
                "secrets": None,  # never needed again once the carrier or relay has the message
            }
        elif kind == "failed":
            values |= {
                "status": MessageStatus.FAILED.value,
                "error_code": o.error_code,
                "error_text": o.error_text,
                "secrets": None,
            }
        elif kind == "retry":
            values |= {
                "status": MessageStatus.QUEUED.value,
                "error_code": o.error_code,
                "error_text": o.error_text,
                "next_attempt_at": now + retry_delay(tried),
            }
        elif kind == "ambiguous":
            values |= {
                "status": MessageStatus.QUEUED.value,
                "next_attempt_at": None,
                "ambiguous_resends": col(Message.ambiguous_resends) + 1,
            }
        else:  # not_sent: back to the queue, no attempt used
            values |= {"status": MessageStatus.QUEUED.value}
        result = session.execute(
            update(Message).where(col(Message.id) == o.message_id, col(Message.status).in_(allowed)).values(**values)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            continue
        counts[kind] = counts.get(kind, 0) + 1
        detail: dict[str, Any] = {}
        if o.error_code:
            detail = {"error": o.error_code, "text": o.error_text}
        if o.provider_ids:
            detail["provider_ids"] = list(o.provider_ids)
        events.append(
            {
                "message_id": o.message_id,
                "at": now,
                "kind": kind if kind != "sent" else "submitted",
                "detail": detail,
            }
        )
        if kind == "sent" and gateway is not None:
            segments.extend(
                {
                    "message_id": o.message_id,
                    "gateway": gateway,
                    "seq": i,
                    "provider_id": pid,
                    "submitted_at": now,
                }
                for i, pid in enumerate(o.provider_ids)
            )
    if events:
        session.execute(insert(MessageEvent), events)
    if segments:
        session.execute(insert(SmsSegment), segments)
    return counts
