"""Campaign rules: create, edit, clone, launch, pause, resume, cancel. Flushes, never commits."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlmodel import Session, col

from accounts.models import ApiKey, Organisation
from accounts.service import audit
from campaigns import repository
from campaigns.lifecycle import Action, InvalidTransition, next_status
from campaigns.models import Campaign, CampaignStatus, Channel, Message, MessageStatus, Upload
from campaigns.schemas import CampaignCreate, CampaignUpdate, CloneIn, TemplateIn, validate_channel_fields
from campaigns.templates import TemplateError, check_template
from gateways.smpp.codec import EncodingPolicy, UnencodableError, prepare
from loa.errors import Conflict, Invalid
from loa.timeutil import to_utc, utcnow

_PLACEHOLDER = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


def _schedule_columns(data: CampaignCreate | CampaignUpdate) -> dict[str, Any]:
    if data.schedule is None:
        return {}
    s = data.schedule
    return {
        "start_at": to_utc(s.start_at) if s.start_at else None,
        "deadline": to_utc(s.deadline) if s.deadline else None,
        "window": s.window.model_dump() if s.window else None,
    }


def _check_template(template: dict[str, Any], encoding: str, channel: Channel) -> None:
    try:
        check_template(template)
    except TemplateError as exc:
        raise Invalid(str(exc), {"part": exc.part, "line": exc.line}) from None
    if channel is Channel.SMS and encoding in ("gsm7", "strip_diacritics"):
        # Only the literal text can be checked now; field values are checked at upload and send.
        literal = template.get("body") or ""
        try:
            prepare(_without_placeholders(literal), EncodingPolicy(encoding))
        except UnencodableError as exc:
            raise Invalid(
                f"template.body has characters that do not fit {encoding}: {' '.join(exc.chars)}",
                {"characters": exc.chars},
            ) from None


def _without_placeholders(text: str) -> str:
    return _PLACEHOLDER.sub("", text)


def create_campaign(session: Session, org: Organisation, key: ApiKey, data: CampaignCreate) -> Campaign:
    template = data.template.model_dump(exclude_none=True)
    _check_template(template, data.encoding, data.channel)
    campaign = Campaign(
        org_id=org.id,
        name=data.name,
        channel=data.channel,
        sender=data.sender,
        template=template,
        encoding=data.encoding,
        secret_fields=list(dict.fromkeys(data.secret_fields)),
        rate_limit=data.rate_limit,
        priority=data.priority,
        options=data.options.model_dump(),
        created_by=key.id,
        **_schedule_columns(data),
    )
    session.add(campaign)
    session.flush()
    audit(session, org.id, key.id, "campaign.create", campaign.id, name=data.name)
    return campaign


def update_campaign(session: Session, campaign: Campaign, data: CampaignUpdate) -> Campaign:
    if campaign.status is not CampaignStatus.DRAFT:
        raise Conflict(
            f"only drafts can be edited; campaign is {campaign.status.value}",
            {"status": campaign.status.value},
            code="invalid_transition",
        )
    values = data.model_dump(exclude_unset=True, exclude={"schedule", "template", "options"})
    if data.template is not None:
        values["template"] = data.template.model_dump(exclude_none=True)
    if data.options is not None:
        values["options"] = data.options.model_dump()
    values.update(_schedule_columns(data))
    sender = values.get("sender", campaign.sender)
    template = values.get("template", campaign.template)
    try:
        validate_channel_fields(campaign.channel, sender, TemplateIn(**template))
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    _check_template(template, values.get("encoding", campaign.encoding), campaign.channel)
    for name, value in values.items():
        setattr(campaign, name, value)
    campaign.updated_at = utcnow()
    return campaign


def delete_campaign(session: Session, campaign: Campaign) -> None:
    if campaign.status is not CampaignStatus.DRAFT:
        raise Conflict(
            f"only drafts can be deleted; campaign is {campaign.status.value}",
            {"status": campaign.status.value},
            code="invalid_transition",
        )
    session.execute(delete(Message).where(col(Message.campaign_id) == campaign.id))
    session.execute(delete(Upload).where(col(Upload.campaign_id) == campaign.id))
    session.delete(campaign)


UNDELIVERED = (
    MessageStatus.UNDELIVERABLE,
    MessageStatus.EXPIRED,
    MessageStatus.REJECTED,
    MessageStatus.FAILED,
    MessageStatus.BOUNCED,
    MessageStatus.CANCELLED,
    MessageStatus.QUEUED,
)


def clone_campaign(session: Session, campaign: Campaign, key: ApiKey, data: CloneIn) -> Campaign:
    """A new draft with the same settings; optionally with all or the undelivered recipients."""
    clone = Campaign(
        org_id=campaign.org_id,
        name=data.name or f"{campaign.name} (copy)",
        channel=campaign.channel,
        sender=campaign.sender,
        template=dict(campaign.template),
        encoding=campaign.encoding,
        secret_fields=list(campaign.secret_fields),
        fields=list(campaign.fields) if data.recipients != "none" else [],
        window=campaign.window,
        rate_limit=campaign.rate_limit,
        priority=campaign.priority,
        options=dict(campaign.options),
        created_by=key.id,
    )
    session.add(clone)
    session.flush()
    if data.recipients != "none":
        src = select(
            col(Message.to),
            col(Message.carrier),
            col(Message.fields),
            col(Message.secrets),
            col(Message.row),
            col(Message.segments),
        ).where(col(Message.campaign_id) == campaign.id)
        if data.recipients == "undelivered":
            src = src.where(col(Message.status).in_([s.value for s in UNDELIVERED]))
        # Secrets are bound to their campaign (AEAD associated data), so they are re-encrypted by
        # the recipients module rather than copied; here we only copy non-secret data.
        from campaigns.recipients import copy_messages

        copy_messages(session, campaign, clone, src)
    audit(
        session,
        campaign.org_id,
        key.id,
        "campaign.clone",
        clone.id,
        source=campaign.id,
        recipients=data.recipients,
    )
    return clone


def transition(session: Session, campaign: Campaign, action: Action, key: ApiKey | None) -> Campaign:
    try:
        new = next_status(campaign.status, action)
    except InvalidTransition as exc:
        raise Conflict(str(exc), {"status": campaign.status.value}, code="invalid_transition") from None
    old = campaign.status
    if (
        action is Action.RESUME
        and campaign.launched_at is not None
        and campaign.start_at
        and campaign.start_at > utcnow()
    ):
        new = CampaignStatus.SCHEDULED
    campaign.status = new
    campaign.updated_at = utcnow()
    if new in (CampaignStatus.CANCELLED, CampaignStatus.COMPLETED, CampaignStatus.FAILED):
        campaign.finished_at = utcnow()
    if action is Action.CANCEL:
        session.execute(
            update(Message)
            .where(
                col(Message.campaign_id) == campaign.id,
                col(Message.status).in_([MessageStatus.QUEUED.value, MessageStatus.DISPATCHING.value]),
            )
            .values(status=MessageStatus.CANCELLED.value, secrets=None, claim=None, updated_at=utcnow())
        )
    if action is Action.PAUSE:
        # Batches already handed to a send worker see the pause and give their rows back.
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == campaign.id, col(Message.status) == MessageStatus.DISPATCHING.value)
            .values(status=MessageStatus.QUEUED.value, claim=None, lease_until=None)
        )
    if key is not None:
        audit(session, campaign.org_id, key.id, f"campaign.{action.value}", campaign.id, previous=old.value)
    return campaign


def launch(session: Session, org: Organisation, campaign: Campaign, key: ApiKey) -> Campaign:
    if campaign.status is not CampaignStatus.DRAFT:
        raise Conflict(
            f"cannot launch a campaign that is {campaign.status.value}",
            {"status": campaign.status.value},
            code="invalid_transition",
        )
    total = repository.count_messages(session, campaign.id)
    pending = int(
        session.scalar(
            select(func.count()).where(
                col(Message.campaign_id) == campaign.id, col(Message.status) == MessageStatus.QUEUED.value
            )
        )
        or 0
    )
    if total == 0:
        raise Conflict("campaign has no recipients; upload some before launching", code="no_recipients")
    try:
        check_template(campaign.template, set(campaign.fields) | set(campaign.secret_fields))
    except TemplateError as exc:
        raise Invalid(str(exc), {"part": exc.part, "line": exc.line}) from None
    if org.approval_threshold is not None and total > org.approval_threshold and campaign.approved_by is None:
        raise Conflict(
            f"campaign has {total} recipients (> {org.approval_threshold}): a second key must approve it first",
            {"recipients": total, "threshold": org.approval_threshold},
            code="approval_required",
        )
    if org.daily_quota is not None:
        used = _messages_launched_today(session, org.id)
        if used + pending > org.daily_quota:
            raise Conflict(
                f"daily quota exceeded: {used} launched in the last 24 h + {pending} > {org.daily_quota}",
                {"used": used, "requested": pending, "quota": org.daily_quota},
                code="quota_exceeded",
            )
    campaign = transition(session, campaign, Action.LAUNCH, key)
    campaign.launched_at = utcnow()
    if campaign.start_at is None or campaign.start_at <= utcnow():
        campaign.status = CampaignStatus.RUNNING
    return campaign


def approve(session: Session, campaign: Campaign, key: ApiKey) -> Campaign:
    if campaign.status is not CampaignStatus.DRAFT:
        raise Conflict(f"only drafts can be approved; campaign is {campaign.status.value}", code="invalid_transition")
    if key.id == campaign.created_by:
        raise Conflict("the key that created the campaign cannot approve it", code="four_eyes")
    campaign.approved_by = key.id
    audit(session, campaign.org_id, key.id, "campaign.approve", campaign.id)
    return campaign


def _messages_launched_today(session: Session, org_id: str) -> int:
    since = utcnow() - timedelta(hours=24)
    return int(
        session.scalar(
            select(func.count())
            .select_from(Message)
            .join(Campaign, col(Campaign.id) == col(Message.campaign_id))
            .where(col(Campaign.org_id) == org_id, col(Campaign.launched_at) >= since)
        )
        or 0
    )
