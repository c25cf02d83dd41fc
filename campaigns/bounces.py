"""Bounces mapped back to their message: by VERP token (`bounce+<message id>@domain`) or by the
original Message-ID. A hard bounce makes the message `bounced` and suppresses the address; a soft
one is recorded on the message's timeline."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlmodel import Session, col

from campaigns.models import Campaign, Message, MessageEvent, MessageStatus
from campaigns.recipients import mark_suppressed
from gateways.smtp.bounces import BounceKind, BounceParseError, parse_bounce
from gateways.smtp.message import message_key_from_message_id
from loa.errors import Invalid
from loa.timeutil import utcnow


def apply_bounce(session: Session, raw: bytes, *, org_id: str | None = None) -> dict[str, Any]:
    try:
        bounce = parse_bounce(raw)
    except BounceParseError as exc:
        raise Invalid(f"not a bounce: {exc}", code="not_a_bounce") from None
    key = bounce.verp_token or (
        message_key_from_message_id(bounce.original_message_id) if bounce.original_message_id else None
    )
    message: Message | None = None
    if key and key.isdigit():
        stmt = select(Message).where(col(Message.id) == int(key))
        if org_id is not None:
            stmt = stmt.join(Campaign, col(Campaign.id) == col(Message.campaign_id)).where(
                col(Campaign.org_id) == org_id
            )
        message = session.scalars(stmt).first()
    result: dict[str, Any] = {
        "matched": message is not None,
        "kind": bounce.kind.value,
        "status": bounce.status,
        "message_id": str(message.id) if message else None,
    }
    if message is None:
        return result
    now = utcnow()
    detail = {
        "kind": bounce.kind.value,
        "status": bounce.status,
        "diagnostic": (bounce.diagnostic or "")[:300],
    }
    session.execute(insert(MessageEvent), [{"message_id": message.id, "at": now, "kind": "bounce", "detail": detail}])
    if bounce.kind is BounceKind.HARD:
        session.execute(
            update(Message)
            .where(
                col(Message.id) == message.id,
                col(Message.status).in_(
                    [
                        MessageStatus.SENT.value,  # type: ignore[arg-type, attr-defined]
                        MessageStatus.DELIVERED.value,
                    ]
                ),
            )
            .values(
                status=MessageStatus.BOUNCED.value,
                error_code=f"bounce:{bounce.status or '5.0.0'}",
                error_text=(bounce.diagnostic or "hard bounce")[:500],
                updated_at=now,
            )
        )
        campaign = session.get(Campaign, message.campaign_id)
        if campaign is not None:
            mark_suppressed(session, campaign.org_id, message.to, f"hard bounce {bounce.status or ''}".strip())
    return result
