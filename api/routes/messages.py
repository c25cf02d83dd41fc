"""Messages across campaigns (search by recipient), one message with its timeline, bounces."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from accounts.service import audit
from api.deps import AnyRole, Sender, SessionDep, StateDep
from api.views import encode_cursor, int_cursor, message_view
from campaigns import timeline
from campaigns.bounces import BounceKeys, apply_bounce
from campaigns.models import Campaign, Message
from campaigns.phones import PhoneError, normalise_phone
from loa.errors import Invalid, NotFound, TooLarge

router = APIRouter(prefix="/v1", tags=["messages"])

MAX_BOUNCE_BYTES = 5 * 1024 * 1024


def normalise_query_address(raw: str) -> str:
    """Accept the number as people type it ("0912 345 678") or an email address."""
    if "@" in raw:
        return raw.strip().lower()
    try:
        return normalise_phone(raw)
    except PhoneError as exc:
        raise Invalid(f"to: {exc.reason}", {"field": "to"}) from None


@router.get("/messages", summary="Messages to one recipient across campaigns (any usual number form)")
def search(
    caller: AnyRole,
    session: SessionDep,
    to: str = Query(..., min_length=3),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> dict[str, Any]:
    address = normalise_query_address(to)
    stmt = (
        select(Message)
        .join(Campaign, col(Campaign.id) == col(Message.campaign_id))
        .where(col(Campaign.org_id) == caller.org.id, col(Message.to) == address)
    )
    after = int_cursor(cursor)
    if after is not None:
        stmt = stmt.where(col(Message.id) < after)
    rows = list(session.scalars(stmt.order_by(col(Message.id).desc()).limit(limit + 1)))
    return {
        "items": [message_view(m) for m in rows[:limit]],
        "next_cursor": encode_cursor(rows[limit - 1].id) if len(rows) > limit else None,
    }


@router.get("/messages/{message_id}", summary="One message with its events (timeline)")
def get(message_id: str, caller: AnyRole, session: SessionDep) -> dict[str, Any]:
    if not (message_id.isascii() and message_id.isdigit() and len(message_id) <= 18):
        raise NotFound(f"message {message_id} not found")
    row = session.execute(
        select(Message)
        .join(Campaign, col(Campaign.id) == col(Message.campaign_id))
        .where(col(Message.id) == int(message_id), col(Campaign.org_id) == caller.org.id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"message {message_id} not found")
    audit(session, caller.org.id, caller.key.id, "message.view", message_id)
    return message_view(row, timeline.entries(session, row))


@router.post(
    "/bounces",
    summary="Submit a raw bounce (RFC 3464 DSN or plain bounce message)",
    description="The body is the bounce exactly as received (`message/rfc822`). It is matched to its message by "
    "the VERP token of the address it was sent to, else by the original Message-ID it quotes. A hard bounce makes "
    "the message `bounced` and suppresses the address; `Action: failed` with a 4.x.x status makes it `bounced` "
    "without suppression; a delay notice is recorded on the message's timeline. An unmatched bounce answers 200 "
    "with `matched: false`.",
    openapi_extra={"requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}}},
)
async def bounce(request: Request, caller: Sender, session: SessionDep, state: StateDep) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BOUNCE_BYTES:
        raise TooLarge("bounce message is larger than 5 MiB")
    if not raw.strip():
        raise Invalid("empty body: send the raw bounce message", {"field": "body"})
    keys = BounceKeys.from_secrets(*state.settings.secret_keys())
    # The database work runs in the thread pool: this handler is async only to read the raw body.
    result = await run_in_threadpool(apply_bounce, session, raw, keys, org_id=caller.org.id)
    if result["matched"]:
        audit(session, caller.org.id, caller.key.id, "bounce.apply", result["message_id"])
    return result
