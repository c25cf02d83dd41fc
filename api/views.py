"""JSON views of domain objects. Secrets never appear: secret fields are masked or left out."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlmodel import Session

from accounts.models import ApiKey, AuditEntry
from campaigns import tally
from campaigns.counters import GATEWAY
from campaigns.models import Campaign, Message
from campaigns.timeline import Entry
from loa.errors import Invalid
from loa.timeutil import iso_z, to_utc

MAX_CURSOR = 512


def campaign_view(session: Session, c: Campaign, *, with_counts: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": c.id,
        "name": c.name,
        "channel": c.channel.value if hasattr(c.channel, "value") else c.channel,
        "status": str(c.status),
        "sender": c.sender,
        "template": c.template,
        "encoding": c.encoding,
        "secret_fields": c.secret_fields,
        "fields": c.fields,
        "schedule": {"start_at": iso_z(c.start_at), "window": c.window, "deadline": iso_z(c.deadline)},
        "rate_limit": c.rate_limit,
        "priority": str(c.priority),
        "options": {k: v for k, v in c.options.items() if k not in ("purged_at", "approval", "test_of")},
        "test_of": c.options.get("test_of"),
        "waiting_for_window": c.waiting_for_window,
        "failure_reason": c.failure_reason,
        "approved_by": c.approved_by,
        "approved_at": (c.options.get("approval") or {}).get("at") if c.approved_by else None,
        "created_at": iso_z(c.created_at),
        "updated_at": iso_z(c.updated_at),
        "launched_at": iso_z(c.launched_at),
        "finished_at": iso_z(c.finished_at),
    }
    if with_counts:
        # From the live counters (campaigns/counters.py), not a recount of the messages.
        t = tally.read(session, c.id)
        view["counts"] = t.counts()
        view["by_gateway"] = t.by(GATEWAY)
        view["stats"] = tally.stats_view(t)
        view["progress"] = tally.progress(view["counts"])
    return view


def message_view(m: Message, timeline: list[Entry] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(m.id),
        "campaign_id": m.campaign_id,
        "upload": m.upload_id,
        "row": m.row,
        "to": m.to,
        "status": str(m.status),
        "gateway": m.gateway,
        "carrier": m.carrier,
        "segments": m.segments,
        "attempts": m.attempts,
        "ambiguous_resends": m.ambiguous_resends,
        "provider_message_id": m.provider_ids,
        "error": {"code": m.error_code, "text": m.error_text} if m.error_code else None,
        "no_receipt": m.no_receipt,
        "fields": m.fields,
        "has_secrets": m.secrets is not None,
        "created_at": iso_z(m.created_at),
        "submitted_at": iso_z(m.submitted_at),
        "delivered_at": iso_z(m.delivered_at),
        "updated_at": iso_z(m.updated_at),
    }
    if timeline is not None:
        view["events"] = [{"at": iso_z(e.at), "kind": e.kind, "detail": e.detail} for e in timeline]
    return view


def key_view(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "role": str(k.role),
        "prefix": k.prefix,
        "org_id": k.org_id,
        "created_at": iso_z(k.created_at),
        "revoked_at": iso_z(k.revoked_at),
        "last_used_at": iso_z(k.last_used_at),
    }


def audit_view(a: AuditEntry) -> dict[str, Any]:
    return {
        "id": a.id,
        "at": iso_z(a.at),
        "key_id": a.key_id,
        "action": a.action,
        "target": a.target,
        "detail": a.detail,
    }


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _bad_cursor() -> Invalid:
    return Invalid("invalid cursor: pass next_cursor from the previous page unchanged", {"field": "cursor"})


def decode_cursor(cursor: str | None) -> Any:
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR:
        raise _bad_cursor()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):  # JSONDecodeError is a ValueError
        raise _bad_cursor() from None


def int_cursor(cursor: str | None) -> int | None:
    """A cursor that holds an id (keyset pagination on an integer primary key)."""
    value = decode_cursor(cursor)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _bad_cursor()
    return int(value)


def time_id_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """A cursor that holds (timestamp, id), for lists ordered by creation time."""
    value = decode_cursor(cursor)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise _bad_cursor()
    try:
        return to_utc(datetime.fromisoformat(value[0])), value[1]
    except (ValueError, OverflowError):
        raise _bad_cursor() from None
