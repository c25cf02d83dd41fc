"""Lifecycle actions with their rules: launch (recipients, template, secrets, deadline, four-eyes
approval, daily quota), approve, pause, resume, cancel. Flushes, never commits.

Four-eyes: above the organisation's `approval_threshold` a campaign needs the approval of a key
other than the one that created it. The approval records a fingerprint of what was approved
(settings, template, recipients); an edit or an upload after it makes the launch ask again.

Daily quota: messages sent in the last 24 hours plus those still waiting in active campaigns,
plus this launch, must stay within the organisation's `daily_quota`. The organisation row is
locked while counting, so two launches at once cannot both squeeze under the quota.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlmodel import Session, col

from accounts.models import ApiKey, Organisation
from accounts.service import audit
from campaigns import counters
from campaigns.lifecycle import ACTIVE, Action, InvalidTransition, next_status
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus
from campaigns.service import check_template_text, require_draft
from campaigns.windows import in_window
from loa.errors import Conflict
from loa.timeutil import iso_z, utcnow

PENDING = [MessageStatus.QUEUED.value, MessageStatus.DISPATCHING.value]


def _status_change(campaign: Campaign, action: Action) -> CampaignStatus:
    try:
        return next_status(campaign.status, action)
    except InvalidTransition as exc:
        raise Conflict(
            str(exc), {"status": campaign.status.value, "action": action.value}, code="invalid_transition"
        ) from None


def _start_if_due(campaign: Campaign) -> None:
    """scheduled → running now when due; the window flag is set at once so the answer is true."""
    now = utcnow()
    if campaign.status is CampaignStatus.SCHEDULED and (campaign.start_at is None or campaign.start_at <= now):
        campaign.status = next_status(campaign.status, Action.START)
        campaign.waiting_for_window = not in_window(campaign.window, now)


def transition(session: Session, campaign: Campaign, action: Action, key: ApiKey | None) -> Campaign:
    """Pause, resume or cancel (launch has its own rules below)."""
    new = _status_change(campaign, action)
    old = campaign.status
    now = utcnow()
    campaign.status = new
    campaign.updated_at = now
    if action is Action.RESUME:
        _start_if_due(campaign)
    if new in (CampaignStatus.CANCELLED, CampaignStatus.COMPLETED, CampaignStatus.FAILED):
        campaign.finished_at = now
    if action is Action.CANCEL:
        # Rows locked in id order (the subquery), as the send path locks them: a cancel and a
        # batch being recorded at the same moment never deadlock.
        pending = (
            select(col(Message.id))
            .where(col(Message.campaign_id) == campaign.id, col(Message.status).in_(PENDING))
            .order_by(col(Message.id))
            .with_for_update()
        )
        session.execute(
            update(Message)
            .where(col(Message.id).in_(pending.scalar_subquery()))
            .values(status=MessageStatus.CANCELLED.value, secrets=None, claim=None, lease_until=None, updated_at=now),
            execution_options={"synchronize_session": False},
        )
        # Set-based: webhooks' change feed and one exact recount, rather than row by row.
        counters.bulk_changed(session, campaign.id, col(Message.status) == "cancelled", col(Message.updated_at) == now)
    # PAUSE leaves `dispatching` rows to the send task holding them: it sees the halt flag (or the
    # status, when it loads the batch), gives back what it did not submit and records what it did.
    # Re-queueing them here would let a quick resume claim and send them a second time.
    if key is not None:
        audit(
            session,
            campaign.org_id,
            key.id,
            f"campaign.{action.value}",
            campaign.id,
            previous=old.value,
            status=campaign.status.value,
        )
    return campaign


def _count(session: Session, campaign_id: str, *conditions: Any) -> int:
    stmt = select(func.count()).select_from(Message).where(col(Message.campaign_id) == campaign_id, *conditions)
    return int(session.scalar(stmt) or 0)


def approval_fingerprint(session: Session, campaign: Campaign) -> str:
    """What an approver approves: settings, template and the recipients (count and last id)."""
    count, last = session.execute(
        select(func.count(), func.max(col(Message.id))).where(col(Message.campaign_id) == campaign.id)
    ).one()
    state = {
        "sender": campaign.sender,
        "template": campaign.template,
        "encoding": campaign.encoding,
        "secret_fields": campaign.secret_fields,
        "start_at": iso_z(campaign.start_at),
        "deadline": iso_z(campaign.deadline),
        "window": campaign.window,
        "rate_limit": campaign.rate_limit,
        "recipients": int(count or 0),
        "last_recipient": int(last or 0),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def approve(session: Session, campaign: Campaign, key: ApiKey) -> Campaign:
    require_draft(campaign, "approved")
    if key.id == campaign.created_by:
        raise Conflict(
            "four eyes: the key that created the campaign cannot approve it; use another admin or sender key",
            {"created_by": campaign.created_by},
            code="same_key",
        )
    recipients = _count(session, campaign.id, col(Message.status) == MessageStatus.QUEUED.value)
    campaign.approved_by = key.id
    campaign.options = {
        **campaign.options,
        "approval": {"by": key.id, "at": iso_z(utcnow()), "fingerprint": approval_fingerprint(session, campaign)},
    }
    campaign.updated_at = utcnow()
    audit(session, campaign.org_id, key.id, "campaign.approve", campaign.id, recipients=recipients)
    return campaign


def _check_approval(session: Session, org: Organisation, campaign: Campaign, pending: int) -> None:
    threshold = org.approval_threshold
    if threshold is None or pending <= threshold:
        return
    approval = campaign.options.get("approval") or {}
    if campaign.approved_by is None or not approval:
        raise Conflict(
            f"the campaign has {pending} recipients (more than {threshold}): another key must approve it first "
            f"(POST /v1/campaigns/{campaign.id}/approve)",
            {"recipients": pending, "approval_threshold": threshold},
            code="approval_required",
        )
    if approval.get("fingerprint") != approval_fingerprint(session, campaign):
        raise Conflict(
            "the campaign changed after it was approved (settings or recipients); it needs a new approval",
            {"approved_by": campaign.approved_by, "approved_at": approval.get("at")},
            code="approval_stale",
        )


def messages_used_today(session: Session, org_id: str) -> int:
    """Sent in the last 24 hours, plus still waiting to be sent in active campaigns."""
    since = utcnow() - timedelta(hours=24)
    recent = select(col(Campaign.id)).where(
        col(Campaign.org_id) == org_id,
        or_(col(Campaign.status).in_([s.value for s in ACTIVE]), col(Campaign.finished_at) >= since),
    )
    active = select(col(Campaign.id)).where(
        col(Campaign.org_id) == org_id, col(Campaign.status).in_([s.value for s in ACTIVE])
    )
    stmt = (
        select(func.count())
        .select_from(Message)
        .where(
            col(Message.campaign_id).in_(recent),
            or_(
                col(Message.submitted_at) >= since,
                (col(Message.status).in_(PENDING)) & col(Message.campaign_id).in_(active),
            ),
        )
    )
    return int(session.scalar(stmt) or 0)


def _check_quota(session: Session, org: Organisation, pending: int) -> None:
    if org.daily_quota is None:
        return
    session.scalars(select(Organisation).where(col(Organisation.id) == org.id).with_for_update()).first()
    used = messages_used_today(session, org.id)
    if used + pending > org.daily_quota:
        raise Conflict(
            f"daily quota exceeded: {used} messages used in the last 24 h + {pending} in this campaign "
            f"> the quota of {org.daily_quota}",
            {"quota": org.daily_quota, "used": used, "requested": pending, "available": max(0, org.daily_quota - used)},
            code="quota_exceeded",
        )


def launch(session: Session, org: Organisation, campaign: Campaign, key: ApiKey) -> Campaign:
    _status_change(campaign, Action.LAUNCH)
    total = _count(session, campaign.id)
    pending = _count(session, campaign.id, col(Message.status) == MessageStatus.QUEUED.value)
    if pending == 0:
        why = "upload some before launching" if total == 0 else f"all {total} are suppressed or final"
        raise Conflict(
            f"the campaign has no recipients to send to: {why}",
            {"status": campaign.status.value, "recipients": total, "sendable": 0},
            code="no_recipients",
        )
    used = check_template_text(
        campaign.template, campaign.encoding, campaign.channel, set(campaign.fields) | set(campaign.secret_fields)
    )
    secret_used = used & set(campaign.secret_fields)
    if secret_used:
        missing = _count(
            session,
            campaign.id,
            col(Message.status) == MessageStatus.QUEUED.value,
            col(Message.secrets).is_(None),
        )
        if missing:
            raise Conflict(
                f"{missing} recipients have no stored value for the secret fields {', '.join(sorted(secret_used))} "
                "(secrets are deleted once a message is final): upload them again in a new campaign",
                {"recipients": missing, "fields": sorted(secret_used)},
                code="missing_secrets",
            )
    if campaign.deadline is not None and campaign.deadline <= utcnow():
        raise Conflict(
            f"the deadline {iso_z(campaign.deadline)} has passed; edit the schedule first",
            {"deadline": iso_z(campaign.deadline)},
            code="deadline_passed",
        )
    _check_approval(session, org, campaign, pending)
    _check_quota(session, org, pending)
    now = utcnow()
    campaign.status = next_status(campaign.status, Action.LAUNCH)
    campaign.launched_at = now
    campaign.updated_at = now
    _start_if_due(campaign)
    audit(
        session,
        org.id,
        key.id,
        "campaign.launch",
        campaign.id,
        recipients=pending,
        status=campaign.status.value,
        approved_by=campaign.approved_by,
    )
    return campaign
