"""Campaign rules for drafts: create, list, edit, delete, clone. Flushes, never commits.

Launching and the other lifecycle actions live in `campaigns.launching`, test sends in
`campaigns.testsend`, the preview in `campaigns.preview`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import delete, literal, select, tuple_
from sqlmodel import Session, col

from accounts.models import ApiKey, Organisation
from accounts.service import audit
from campaigns import counters, repository
from campaigns.models import Campaign, CampaignStatus, Channel, Message, MessageEvent, MessageStatus, Upload
from campaigns.schemas import (
    CampaignCreate,
    CampaignUpdate,
    CloneIn,
    ScheduleIn,
    TemplateIn,
    validate_sender,
    validate_template_parts,
)
from campaigns.templates import TemplateError, check_template
from gateways.smpp.codec import EncodingPolicy, UnencodableError, prepare
from loa.db import table_of
from loa.errors import Conflict, Invalid
from loa.timeutil import utcnow

_PLACEHOLDER = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
# Keys of `Campaign.options` that the system writes; never copied to a clone, never user-set.
INTERNAL_OPTIONS = ("test_of", "approval", "purged_at")
TEST_OF = "test_of"


def require_draft(campaign: Campaign, doing: str) -> None:
    if campaign.status is not CampaignStatus.DRAFT:
        raise Conflict(
            f"only drafts can be {doing}; the campaign is {campaign.status.value}",
            {"status": campaign.status.value},
            code="invalid_transition",
        )


def _schedule_columns(schedule: ScheduleIn | None) -> dict[str, Any]:
    if schedule is None:
        return {"start_at": None, "deadline": None, "window": None}
    return {
        "start_at": schedule.start_at,
        "deadline": schedule.deadline,
        "window": schedule.window.model_dump() if schedule.window else None,
    }


def _check_deadline(deadline: datetime | None) -> None:
    if deadline is not None and deadline <= utcnow():
        raise Invalid("schedule.deadline is in the past", {"field": "schedule.deadline"})


def check_template_text(
    template: dict[str, Any], encoding: str, channel: Channel, columns: set[str] | None = None
) -> set[str]:
    """Compile the template (422 with the line), check placeholders against `columns` when given,
    and under `gsm7`/`strip_diacritics` the literal SMS text (422 listing the characters)."""
    try:
        names = check_template(template, columns)
    except TemplateError as exc:
        code = "unknown_placeholder" if exc.unknown else "template_error"
        raise Invalid(str(exc), exc.details(), code=code) from None
    if channel is Channel.SMS and encoding in ("gsm7", "strip_diacritics"):
        # Only the literal text can be checked now; field values are checked at upload.
        literal_text = _PLACEHOLDER.sub("", template.get("body") or "")
        try:
            prepare(literal_text, EncodingPolicy(encoding))
        except UnencodableError as exc:
            raise Invalid(
                f"template.body has characters that do not fit {encoding}: {' '.join(exc.chars)}",
                {"part": "body", "characters": list(exc.chars)},
                code="unencodable",
            ) from None
    return names


def create_campaign(session: Session, org: Organisation, key: ApiKey, data: CampaignCreate) -> Campaign:
    template = data.template.model_dump(exclude_none=True)
    check_template_text(template, data.encoding, data.channel)
    _check_deadline(data.schedule.deadline)
    campaign = Campaign(
        org_id=org.id,
        name=data.name,
        channel=data.channel,
        sender=data.sender,
        template=template,
        encoding=data.encoding,
        secret_fields=data.secret_fields,
        rate_limit=data.rate_limit,
        priority=data.priority,
        options=data.options.model_dump(),
        created_by=key.id,
        **_schedule_columns(data.schedule),
    )
    session.add(campaign)
    session.flush()
    audit(session, org.id, key.id, "campaign.create", campaign.id, name=data.name, channel=data.channel.value)
    return campaign


def list_campaigns(
    session: Session,
    org_id: str,
    *,
    status: CampaignStatus | None,
    test_of: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Campaign]:
    """Newest first, keyset-paginated on (created_at, id). Test sends are listed only by `test_of`."""
    test_key = col(Campaign.options)[TEST_OF].as_string()
    stmt = select(Campaign).where(col(Campaign.org_id) == org_id)
    stmt = stmt.where(test_key.is_(None) if test_of is None else test_key == test_of)
    if status is not None:
        stmt = stmt.where(col(Campaign.status) == status.value)
    if after is not None:
        stmt = stmt.where(
            tuple_(col(Campaign.created_at), col(Campaign.id))
            < tuple_(literal(after[0], type_=table_of(Campaign).c.created_at.type), literal(after[1]))
        )
    stmt = stmt.order_by(col(Campaign.created_at).desc(), col(Campaign.id).desc()).limit(limit)
    return list(session.scalars(stmt))


def update_campaign(session: Session, campaign: Campaign, key: ApiKey, data: CampaignUpdate) -> Campaign:
    require_draft(campaign, "edited")
    given = data.model_fields_set
    values: dict[str, Any] = data.model_dump(include=given - {"schedule", "template", "options"})
    if data.template is not None:
        values["template"] = data.template.model_dump(exclude_none=True)
    if data.options is not None:
        values["options"] = data.options.model_dump()
    if "schedule" in given:
        values |= _schedule_columns(data.schedule)
        _check_deadline(values["deadline"])
    sender = values.get("sender", campaign.sender)
    template = values.get("template", campaign.template)
    try:
        validate_sender(campaign.channel, sender)
    except ValueError as exc:
        raise Invalid(str(exc), {"field": "sender"}) from None
    try:
        validate_template_parts(campaign.channel, TemplateIn(**template))
    except ValueError as exc:
        raise Invalid(str(exc), {"field": "template"}) from None
    has_recipients = repository.count_messages(session, campaign.id) > 0
    secret_fields = values.get("secret_fields", campaign.secret_fields)
    if has_recipients and set(secret_fields) != set(campaign.secret_fields):
        # Stored rows were split into plain fields and encrypted secrets at upload: changing the
        # split now would leave a "secret" column in plain text, or a plain one unreadable.
        raise Conflict(
            "secret_fields cannot change once recipients are uploaded; clone without recipients instead",
            {"secret_fields": campaign.secret_fields},
            code="recipients_uploaded",
        )
    columns = set(campaign.fields) | set(secret_fields) if has_recipients else None
    check_template_text(template, values.get("encoding", campaign.encoding), campaign.channel, columns)
    for name, value in values.items():
        setattr(campaign, name, value)
    # An approval is for what the approver saw: any edit needs a new one.
    campaign.approved_by = None
    campaign.options = {k: v for k, v in campaign.options.items() if k != "approval"}
    campaign.updated_at = utcnow()
    audit(session, campaign.org_id, key.id, "campaign.update", campaign.id, fields=sorted(given))
    return campaign


def delete_campaign(session: Session, campaign: Campaign, key: ApiKey) -> None:
    require_draft(campaign, "deleted")
    ids = select(col(Message.id)).where(col(Message.campaign_id) == campaign.id)
    session.execute(delete(MessageEvent).where(col(MessageEvent.message_id).in_(ids)))
    session.execute(delete(Message).where(col(Message.campaign_id) == campaign.id))
    session.execute(delete(Upload).where(col(Upload.campaign_id) == campaign.id))
    counters.forget(session, campaign.id)
    session.delete(campaign)
    audit(session, campaign.org_id, key.id, "campaign.delete", campaign.id, name=campaign.name)


# "Not delivered": every final failure, plus what was never sent (queued when paused, cancelled).
# `suppressed` stays out (the recipient opted out), and so do `sent` messages: an email `sent` is
# a success, and an SMS `sent` without its receipt may well have arrived.
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
    """A new draft with the same settings; optionally with all or the undelivered recipients.

    Secret values are copied where they are still stored; they are deleted once a message is
    final, so recipients of a finished credential campaign come without them and the launch of
    the clone says so (`missing_secrets`) instead of sending broken messages."""
    now = utcnow()
    clone = Campaign(
        org_id=campaign.org_id,
        name=data.name or f"{campaign.name} (copy)"[:200],
        channel=campaign.channel,
        sender=campaign.sender,
        template=dict(campaign.template),
        encoding=campaign.encoding,
        secret_fields=list(campaign.secret_fields),
        fields=list(campaign.fields) if data.recipients != "none" else [],
        window=campaign.window,
        start_at=campaign.start_at if campaign.start_at and campaign.start_at > now else None,
        deadline=campaign.deadline if campaign.deadline and campaign.deadline > now else None,
        rate_limit=campaign.rate_limit,
        priority=campaign.priority,
        options={k: v for k, v in campaign.options.items() if k not in INTERNAL_OPTIONS},
        created_by=key.id,
    )
    session.add(clone)
    session.flush()
    copied = 0
    if data.recipients != "none":
        from campaigns.recipients import copy_messages

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
        copied = copy_messages(session, campaign, clone, src.order_by(col(Message.id)))
    audit(
        session,
        campaign.org_id,
        key.id,
        "campaign.clone",
        clone.id,
        source=campaign.id,
        recipients=data.recipients,
        copied=copied,
    )
    return clone
