"""The scheduler tick: starts due campaigns, opens and closes send windows, expires what passed
its deadline, returns messages whose lease expired (their worker died) and completes campaigns.
Every step is a conditional update, so two ticks at once do no harm."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlmodel import Session, col

from campaigns.models import Campaign, CampaignStatus, Channel, Message, MessageStatus
from campaigns.windows import in_window
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

ACTIVE = [CampaignStatus.SCHEDULED.value, CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value]


def start_due(session: Session) -> int:
    now = utcnow()
    result = session.execute(
        update(Campaign)
        .where(
            col(Campaign.status) == CampaignStatus.SCHEDULED.value,
            or_(col(Campaign.start_at).is_(None), col(Campaign.start_at) <= now),
        )
        .values(status=CampaignStatus.RUNNING.value, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def update_windows(session: Session) -> None:
    now = utcnow()
    for campaign in session.scalars(
        select(Campaign).where(col(Campaign.status) == CampaignStatus.RUNNING.value, col(Campaign.window).is_not(None))
    ):
        waiting = not in_window(campaign.window, now)
        if waiting != campaign.waiting_for_window:
            campaign.waiting_for_window = waiting
            campaign.updated_at = now
            log.info(
                "campaign %s %s its send window",
                campaign.id,
                "outside" if waiting else "inside",
                extra={"campaign_id": campaign.id},
            )


def expire_past_deadline(session: Session) -> int:
    now = utcnow()
    overdue = select(col(Campaign.id)).where(col(Campaign.status).in_(ACTIVE), col(Campaign.deadline) < now)
    result = session.execute(
        update(Message)
        .where(col(Message.campaign_id).in_(overdue), col(Message.status) == MessageStatus.QUEUED.value)
        .values(
            status=MessageStatus.EXPIRED.value,
            error_code="deadline",
            error_text="deadline passed before sending",
            secrets=None,
            updated_at=now,
        ),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def sweep_expired_leases(session: Session) -> int:
    """Messages a dead worker had claimed go back to the queue. Their submit may have reached the
    carrier, so each counts as an ambiguous resend."""
    now = utcnow()
    result = session.execute(
        update(Message)
        .where(col(Message.status) == MessageStatus.DISPATCHING.value, col(Message.lease_until) < now)
        .values(
            status=MessageStatus.QUEUED.value,
            claim=None,
            lease_until=None,
            ambiguous_resends=col(Message.ambiguous_resends) + 1,
            updated_at=now,
        ),
        execution_options={"synchronize_session": False},
    )
    swept = int(result.rowcount)  # type: ignore[attr-defined]
    if swept:
        log.warning("returned %s messages with an expired lease to the queue", swept)
    return swept


def complete_finished(session: Session, receipt_timeout: timedelta) -> list[str]:
    """Running campaigns with nothing pending (and no SMS awaiting a receipt) become completed."""
    now = utcnow()
    done: list[str] = []
    for campaign in session.scalars(select(Campaign).where(col(Campaign.status) == CampaignStatus.RUNNING.value)):
        pending = session.scalar(
            select(
                exists().where(
                    col(Message.campaign_id) == campaign.id,
                    col(Message.status).in_([MessageStatus.QUEUED.value, MessageStatus.DISPATCHING.value]),
                )
            )
        )
        if pending:
            continue
        if campaign.channel is Channel.SMS:
            waiting_receipt = and_(
                col(Message.campaign_id) == campaign.id,
                col(Message.status) == MessageStatus.SENT.value,
            )
            young = session.scalar(
                select(func.count()).where(waiting_receipt, col(Message.submitted_at) > now - receipt_timeout)
            )
            if young:
                continue
            session.execute(
                update(Message).where(waiting_receipt).values(no_receipt=True),
                execution_options={"synchronize_session": False},
            )
        campaign.status = CampaignStatus.COMPLETED
        campaign.finished_at = now
        campaign.updated_at = now
        done.append(campaign.id)
        log.info("campaign %s completed", campaign.id, extra={"campaign_id": campaign.id})
    return done


def purge_retention(session: Session, retention_days: int) -> int:
    """Personal fields of campaigns finished longer than the retention period are deleted."""
    cutoff = utcnow() - timedelta(days=retention_days)
    ended = [CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value, CampaignStatus.FAILED.value]
    purged = 0
    for campaign in session.scalars(
        select(Campaign).where(col(Campaign.status).in_(ended), col(Campaign.finished_at) < cutoff)
    ):
        if campaign.options.get("purged_at"):
            continue
        result = session.execute(
            update(Message).where(col(Message.campaign_id) == campaign.id).values(fields={}, secrets=None),
            execution_options={"synchronize_session": False},
        )
        campaign.options = {**campaign.options, "purged_at": utcnow().isoformat()}
        purged += int(result.rowcount)  # type: ignore[attr-defined]
    return purged


def tick(session: Session, receipt_timeout: timedelta) -> dict[str, int]:
    started = start_due(session)
    update_windows(session)
    expired = expire_past_deadline(session)
    swept = sweep_expired_leases(session)
    completed = complete_finished(session, receipt_timeout)
    return {"started": started, "expired": expired, "swept": swept, "completed": len(completed)}
