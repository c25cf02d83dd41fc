"""Recipient uploads (CSV/XLSX multipart or JSON) and the messages of a campaign.

An upload is checked (campaign exists, accepts recipients, size) before its body is read, then
imported in a worker thread inside the request's transaction, with the campaign row locked; a
file is imported while it arrives (:mod:`api.streamed_upload`).
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO, cast

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool
from starlette.types import Message as AsgiMessage

from accounts.service import audit
from api.deps import AnyRole, Caller, Sender, SessionDep, StateDep
from api.state import AppState
from api.streamed_upload import stream_file_part
from api.views import encode_cursor, int_cursor, message_view
from campaigns import repository
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus
from campaigns.recipients import ImportResult, RecipientImporter
from campaigns.schemas import RecipientsIn
from campaigns.tabular import TableError, open_table
from loa.errors import Conflict, Invalid, TooLarge

router = APIRouter(prefix="/v1/campaigns", tags=["recipients"])

UPLOADABLE = {CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.PAUSED}
# RecipientsIn takes up to 100,000 recipients: a few hundred bytes each.
MAX_JSON_BYTES = 32 * 1024 * 1024


def _too_large(limit: int, multipart: bool) -> str:
    if multipart:
        return f"The upload is larger than {limit:,} bytes."
    return f"A JSON upload is limited to {limit:,} bytes; send larger lists as a CSV or XLSX file."


def _byte_limited(request: Request, limit: int, refusal: str) -> Request:
    """The request with a body that raises 413 as soon as more than ``limit`` bytes arrived, for
    bodies sent without a Content-Length (chunked): they are refused before they fill a disk."""
    received = 0
    receive = request.receive

    async def counting() -> AsgiMessage:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise TooLarge(refusal, {"limit_bytes": limit})
        return message

    return Request(request.scope, counting)


def _uploadable(campaign: Campaign) -> None:
    if campaign.status not in UPLOADABLE:
        raise Conflict(
            f"cannot add recipients to a campaign that is {campaign.status.value}",
            {"status": campaign.status.value},
            code="invalid_transition",
        )


@router.post(
    "/{campaign_id}/recipients",
    summary="Add recipients: multipart `file` (CSV or XLSX, header row first) or JSON {recipients: [...]}",
    description=(
        "CSV (UTF-8, with or without BOM; comma, semicolon or tab separated) or XLSX (first sheet) as "
        "multipart `file`, or JSON `{recipients: [{to, fields}]}`. The address column is `phone` (SMS) or "
        "`email` (email); the other columns are template fields. Each upload is atomic and appends to the "
        "campaign. `accepted + rejected + duplicates + suppressed = total_rows`; `errors` lists the first "
        "1,000 rejected rows with spreadsheet row numbers (header = 1). Larger than LOA_MAX_UPLOAD_BYTES "
        "(200 MB; 32 MB for JSON) or LOA_MAX_UPLOAD_ROWS (1,000,000 rows): 413. A file is imported while it "
        "arrives."
    ),
    responses={
        200: {
            "description": "What became of every row",
            "content": {
                "application/json": {
                    "example": {
                        "upload": "upl_3f2a9c0d1e2b4a5c",
                        "total_rows": 4,
                        "accepted": 2,
                        "rejected": 1,
                        "duplicates": 1,
                        "suppressed": 0,
                        "errors": [{"row": 3, "column": "phone", "reason": "too short"}],
                        "errors_truncated": False,
                    }
                }
            },
        },
        413: {"description": "Too many bytes or rows"},
        422: {"description": "The file cannot be read (the error names why), or a template placeholder is missing"},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/RecipientsIn"},
                    "example": {"recipients": [{"to": "0912345678", "fields": {"name": "An"}}]},
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            }
        }
    },
)
async def upload(
    campaign_id: str, request: Request, caller: Sender, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    settings = state.settings

    def check() -> None:
        _uploadable(repository.get_campaign(session, caller.org.id, campaign_id))
        # End the authentication transaction before the body arrives: on SQLite every transaction
        # holds the write lock, and a slow client must not hold it for the length of its upload.
        session.commit()

    await run_in_threadpool(check)  # 404/409 before a byte of the body is read
    ctype = request.headers.get("content-type", "")
    multipart = ctype.startswith("multipart/form-data")
    # A JSON body is parsed whole, so it gets a smaller limit than a streamed file.
    limit = settings.max_upload_bytes if multipart else min(settings.max_upload_bytes, MAX_JSON_BYTES)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge(_too_large(limit, multipart), {"limit_bytes": limit})
    request = _byte_limited(request, limit, _too_large(limit, multipart))
    if multipart:
        # The file is imported while it arrives: see api.streamed_upload.
        result = await stream_file_part(
            request,
            lambda pipe, filename, content_type: _import_file(
                session, state, caller, campaign_id, cast(BinaryIO, pipe), filename, content_type
            ),
        )
    else:
        try:
            body = RecipientsIn.model_validate(json.loads(await request.body() or b"null"))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            raise Invalid(
                "body must be JSON {recipients: [{to, fields}]} or a multipart file", _json_errors(exc)
            ) from None
        items = [r.model_dump() for r in body.recipients]
        result = await run_in_threadpool(_import_json, session, state, caller, campaign_id, items)
    return result.as_dict()


def _locked_campaign(session: Session, caller: Caller, campaign_id: str) -> Campaign:
    """The campaign, locked until commit: concurrent uploads to it queue up, and it cannot be
    launched halfway through an upload."""
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    session.refresh(campaign, with_for_update=True)
    _uploadable(campaign)
    return campaign


def _import_file(
    session: Session,
    state: AppState,
    caller: Caller,
    campaign_id: str,
    stream: BinaryIO,
    filename: str | None,
    content_type: str | None,
) -> ImportResult:
    campaign = _locked_campaign(session, caller, campaign_id)
    importer = RecipientImporter(session, campaign, state.box, filename)
    try:
        table = open_table(stream, filename, content_type)
        result = importer.import_table(table, state.settings.max_upload_rows)
    except TableError as exc:
        details = {"code": exc.code} if exc.row is None else {"code": exc.code, "row": exc.row}
        raise Invalid(exc.message, details, code=exc.code) from None
    _audit(session, caller, campaign, result, filename)
    return result


def _import_json(
    session: Session, state: AppState, caller: Caller, campaign_id: str, items: list[dict[str, Any]]
) -> ImportResult:
    campaign = _locked_campaign(session, caller, campaign_id)
    result = RecipientImporter(session, campaign, state.box).import_json(items)
    _audit(session, caller, campaign, result, None)
    return result


def _audit(session: Session, caller: Caller, campaign: Campaign, result: ImportResult, filename: str | None) -> None:
    audit(
        session,
        caller.org.id,
        caller.key.id,
        "recipients.upload",
        campaign.id,
        upload=result.upload,
        filename=filename,
        total_rows=result.total_rows,
        accepted=result.accepted,
        rejected=result.rejected,
        duplicates=result.duplicates,
        suppressed=result.suppressed,
    )


def _json_errors(exc: Exception) -> list[dict[str, Any]]:
    if isinstance(exc, ValidationError):
        return [{"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()[:50]]
    return [{"field": "body", "reason": str(exc)}]


@router.get("/{campaign_id}/messages", summary="Messages of a campaign, filterable, cursor-paginated")
def messages(
    campaign_id: str,
    caller: AnyRole,
    session: SessionDep,
    status: MessageStatus | None = None,
    gateway: str | None = None,
    carrier: str | None = None,
    error: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    stmt = select(Message).where(col(Message.campaign_id) == campaign.id)
    if status is not None:
        stmt = stmt.where(col(Message.status) == status.value)
    if gateway:
        stmt = stmt.where(col(Message.gateway) == gateway)
    if carrier:
        stmt = stmt.where(col(Message.carrier) == carrier)
    if error:
        stmt = stmt.where(col(Message.error_code) == error)
    after = int_cursor(cursor)
    if after is not None:
        stmt = stmt.where(col(Message.id) > after)
    rows = list(session.scalars(stmt.order_by(col(Message.id)).limit(limit + 1)))
    items = [message_view(m) for m in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}
