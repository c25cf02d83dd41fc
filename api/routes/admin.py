"""Keys, organisation settings, audit log and gateway status (admin), suppressions and MNP
overrides (per organisation)."""

from __future__ import annotations

import contextlib
import csv
import io
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlmodel import col

from accounts.models import AuditEntry
from accounts.schemas import KeyIn, OrgSettingsIn
from accounts.service import audit, create_key, list_keys, org_settings, revoke_key, update_org_settings
from api.deps import Admin, AnyRole, Sender, SessionDep, StateDep
from api.views import audit_view, encode_cursor, int_cursor, key_view
from campaigns.models import MnpOverride, Suppression
from campaigns.phones import PhoneError, normalise_phone
from campaigns.recipients import suppress_many
from loa.errors import Invalid, NotFound
from loa.timeutil import iso_z

router = APIRouter(prefix="/v1", tags=["administration"])

Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")]


@router.post("/keys", status_code=201, summary="Create a key; the key itself is shown only in this answer")
def create(body: KeyIn, caller: Admin, session: SessionDep) -> dict[str, Any]:
    issued = create_key(session, caller.org, body.role, body.name, actor=caller.key.id, via="api")
    return {**key_view(issued.record), "key": issued.key}


@router.get("/keys", summary="Keys of the organisation (never the keys themselves)")
def keys(caller: Admin, session: SessionDep) -> dict[str, Any]:
    return {"items": [key_view(k) for k in list_keys(session, caller.org.id)], "next_cursor": None}


@router.delete("/keys/{key_id}", summary="Revoke a key, with immediate effect")
def revoke(key_id: str, caller: Admin, session: SessionDep) -> dict[str, Any]:
    return key_view(revoke_key(session, key_id, caller.org.id, actor=caller.key.id, via="api"))


@router.get("/org", summary="The organisation of the key, with its launch rules")
def get_org(caller: AnyRole) -> dict[str, Any]:
    return org_settings(caller.org)


@router.patch("/org", summary="Set launch rules: approval threshold (four eyes), daily quota, frequency cap")
def patch_org(body: OrgSettingsIn, caller: Admin, session: SessionDep) -> dict[str, Any]:
    return org_settings(update_org_settings(session, caller.org, caller.key.id, body))


@router.get("/audit", summary="Audit log, newest first")
def audit_log(
    caller: Admin,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. campaign.launch, key.create")] = None,
    target: Annotated[str | None, Query(max_length=80, description="a campaign or key id")] = None,
    key_id: Annotated[str | None, Query(max_length=40, description="entries made with this key")] = None,
) -> dict[str, Any]:
    stmt = select(AuditEntry).where(col(AuditEntry.org_id) == caller.org.id)
    if action:
        stmt = stmt.where(col(AuditEntry.action) == action)
    if target:
        stmt = stmt.where(col(AuditEntry.target) == target)
    if key_id:
        stmt = stmt.where(col(AuditEntry.key_id) == key_id)
    after = int_cursor(cursor)
    if after is not None:
        stmt = stmt.where(col(AuditEntry.id) < after)
    rows = list(session.scalars(stmt.order_by(col(AuditEntry.id).desc()).limit(limit + 1)))
    return {
        "items": [audit_view(a) for a in rows[:limit]],
        "next_cursor": encode_cursor(rows[limit - 1].id) if len(rows) > limit else None,
    }


@router.get("/gateways", summary="Configured gateways with bind state, rate and queue depth")
def gateways(caller: Admin, state: StateDep, session: SessionDep) -> dict[str, Any]:
    from campaigns.receipts import parked_counts
    from gateways.health import gateway_status
    from workers.queues import email_queue, sms_queue

    r = state.redis
    # SMPP: bind state per slot, allowed and current rate, queue depth, failover, parked receipts.
    items: list[dict[str, Any]] = gateway_status(r, state.gateways, sms_queue, parked_counts(session))
    for relay in state.gateways.smtp:
        depth = None
        if r is not None:
            with contextlib.suppress(redis.RedisError):
                depth = int(r.llen(email_queue(relay.name)))
        items.append(
            {
                "name": relay.name,
                "type": "smtp",
                "host": relay.host,
                "port": relay.port,
                "connections": relay.connections,
                "rate": relay.rate,
                "queue_depth": depth,
                "dkim": relay.dkim.domain if relay.dkim else None,
            }
        )
    return {"items": items}


# --- suppressions -----------------------------------------------------------------------------
class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(min_length=3, max_length=320)
    reason: str = Field("manual", max_length=200)


def _normalise_address(address: str) -> str:
    if "@" in address:
        return address.strip().lower()
    try:
        return normalise_phone(address)
    except PhoneError as exc:
        raise Invalid(f"address: {exc.reason}", {"field": "address"}) from None


@router.get("/suppressions", summary="Suppressed addresses")
def suppressions(
    caller: AnyRole, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: Cursor = None
) -> dict[str, Any]:
    stmt = select(Suppression).where(col(Suppression.org_id) == caller.org.id)
    after = int_cursor(cursor)
    if after is not None:
        stmt = stmt.where(col(Suppression.id) > after)
    rows = list(session.scalars(stmt.order_by(col(Suppression.id)).limit(limit + 1)))
    return {
        "items": [{"address": s.address, "reason": s.reason, "created_at": iso_z(s.created_at)} for s in rows[:limit]],
        "next_cursor": encode_cursor(rows[limit - 1].id) if len(rows) > limit else None,
    }


@router.post(
    "/suppressions", status_code=201, summary="Suppress an address (JSON), or many (CSV upload: address[,reason])"
)
async def add_suppression(request: Request, caller: Sender, session: SessionDep) -> dict[str, Any]:
    entries = await _entries(request, SuppressionIn, ("address", "reason"))
    suppress_many(session, caller.org.id, [(_normalise_address(e.address), e.reason) for e in entries])
    audit(session, caller.org.id, caller.key.id, "suppression.add", None, count=len(entries))
    return {"added": len(entries)}


@router.delete("/suppressions/{address}", status_code=204, summary="Remove an address from the list")
def remove_suppression(address: str, caller: Sender, session: SessionDep) -> Response:
    result = session.execute(
        delete(Suppression).where(
            col(Suppression.org_id) == caller.org.id, col(Suppression.address) == _normalise_address(address)
        )
    )  # type: ignore[arg-type]
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound("address is not suppressed")
    return Response(status_code=204)


# --- MNP overrides ----------------------------------------------------------------------------
class MnpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: str = Field(min_length=3, max_length=32)
    carrier: str = Field(min_length=1, max_length=40)


@router.get("/mnp", summary="Number portability overrides (number → carrier)")
def mnp(
    caller: AnyRole, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: Cursor = None
) -> dict[str, Any]:
    stmt = select(MnpOverride).where(col(MnpOverride.org_id) == caller.org.id)
    after = int_cursor(cursor)
    if after is not None:
        stmt = stmt.where(col(MnpOverride.id) > after)
    rows = list(session.scalars(stmt.order_by(col(MnpOverride.id)).limit(limit + 1)))
    return {
        "items": [{"number": m.number, "carrier": m.carrier} for m in rows[:limit]],
        "next_cursor": encode_cursor(rows[limit - 1].id) if len(rows) > limit else None,
    }


@router.post("/mnp", status_code=201, summary="Add overrides: JSON {number, carrier} or CSV upload (number,carrier)")
async def add_mnp(request: Request, caller: Sender, session: SessionDep) -> dict[str, Any]:
    entries = await _entries(request, MnpIn, ("number", "carrier"))
    for e in entries:
        try:
            number = normalise_phone(e.number)
        except PhoneError as exc:
            raise Invalid(f"number {e.number!r}: {exc.reason}", {"field": "number"}) from None
        existing = session.scalars(
            select(MnpOverride).where(col(MnpOverride.org_id) == caller.org.id, col(MnpOverride.number) == number)
        ).first()  # type: ignore[arg-type]
        if existing:
            existing.carrier = e.carrier
        else:
            session.add(MnpOverride(org_id=caller.org.id, number=number, carrier=e.carrier))
    audit(session, caller.org.id, caller.key.id, "mnp.add", None, count=len(entries))
    return {"added": len(entries)}


@router.delete("/mnp/{number}", status_code=204, summary="Remove an override")
def remove_mnp(number: str, caller: Sender, session: SessionDep) -> Response:
    try:
        normalised = normalise_phone(number)
    except PhoneError as exc:
        raise Invalid(f"number: {exc.reason}") from None
    result = session.execute(
        delete(MnpOverride).where(col(MnpOverride.org_id) == caller.org.id, col(MnpOverride.number) == normalised)
    )  # type: ignore[arg-type]
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound("no override for that number")
    return Response(status_code=204)


async def _entries(request: Request, model: type[Any], columns: tuple[str, str]) -> list[Any]:
    """One JSON object, a JSON list, or a CSV file (multipart `file`) with the given columns."""
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1)
            file = form.get("file")
            if file is None or isinstance(file, str):
                raise Invalid("multipart upload needs a 'file' part", {"field": "file"})
            text = (await file.read()).decode("utf-8-sig")
            reader = csv.reader(io.StringIO(text), _dialect(text))
            rows = [r for r in reader if any(c.strip() for c in r)]
            if rows and rows[0][0].strip().lower() == columns[0]:
                rows = rows[1:]
            out = []
            for n, r in enumerate(rows, start=2):
                values = {columns[0]: r[0].strip()}
                if len(r) > 1 and r[1].strip():
                    values[columns[1]] = r[1].strip()
                try:
                    out.append(model(**values))
                except Exception as exc:
                    raise Invalid(f"row {n}: {exc}", {"row": n}) from None
            return out
        data = await request.json()
        items = data if isinstance(data, list) else [data]
        return [model(**item) for item in items]
    except (ValueError, TypeError, csv.Error) as exc:
        raise Invalid(str(exc)) from None


def _dialect(text: str) -> type[csv.Dialect] | str:
    """Comma, semicolon (Excel in many locales) or tab; plain CSV when the sample says nothing."""
    try:
        return csv.Sniffer().sniff(text[:2048], ",;\t") if text.strip() else "excel"
    except csv.Error:
        return "excel"
