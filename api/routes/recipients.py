"""Recipient uploads (CSV/XLSX multipart or JSON), messages of a campaign, and the report export."""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from accounts.service import audit
from api.deps import AnyRole, Sender, SessionDep, StateDep
from api.views import decode_cursor, encode_cursor, message_view
from campaigns import repository
from campaigns.models import CampaignStatus, Message, MessageStatus
from campaigns.recipients import ImportResult, RecipientImporter, rows_from_json, rows_from_table
from campaigns.schemas import RecipientsIn
from campaigns.tabular import TableError, open_table
from loa.errors import Conflict, Invalid, TooLarge

router = APIRouter(prefix="/v1/campaigns", tags=["recipients"])

UPLOADABLE = {CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.PAUSED}


class _LimitedReader:
    """Counts bytes as the table reader pulls them, so an oversize upload stops with 413."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw, self.limit, self.read_bytes = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.read_bytes += len(chunk)
        if self.read_bytes > self.limit:
            raise TooLarge(f"upload is larger than {self.limit} bytes")
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


@router.post(
    "/{campaign_id}/recipients",
    summary="Add recipients: multipart `file` (CSV or XLSX, header row first) or JSON {recipients: [...]}",
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
    campaign = repository.get_campaign(session, caller.org.id, campaign_id, for_update=True)
    if campaign.status not in UPLOADABLE:
        raise Conflict(
            f"cannot add recipients to a campaign that is {campaign.status.value}",
            {"status": campaign.status.value},
            code="invalid_transition",
        )
    settings = state.settings
    length = int(request.headers.get("content-length") or 0)
    if length > settings.max_upload_bytes:
        raise TooLarge(f"upload is larger than {settings.max_upload_bytes} bytes")
    ctype = request.headers.get("content-type", "")
    importer = RecipientImporter(session, campaign, state.box)
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise Invalid("multipart upload needs a 'file' part", {"field": "file"})
        importer.upload.filename = file.filename
        reader = _LimitedReader(file.file, settings.max_upload_bytes)  # type: ignore[arg-type]

        def import_file() -> ImportResult:
            try:
                table = open_table(reader, file.filename, file.content_type)  # type: ignore[arg-type, union-attr]
                columns, rows = rows_from_table(table, campaign.channel)
                return importer.run(columns, _limit_rows(rows, settings.max_upload_rows))
            except TableError as exc:
                raise Invalid(exc.message, {"code": exc.code}, code=exc.code) from None

        # Parsing and bulk inserts are blocking work: keep them off the event loop.
        result = await run_in_threadpool(import_file)
    else:
        try:
            body = RecipientsIn.model_validate(json.loads(await request.body() or b"null"))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise Invalid(
                "body must be JSON {recipients: [{to, fields}]} or a multipart file", _json_errors(exc)
            ) from None
        columns, rows = rows_from_json(r.model_dump() for r in body.recipients)
        result = await run_in_threadpool(importer.run, columns, rows)
    audit(
        session,
        caller.org.id,
        caller.key.id,
        "recipients.upload",
        campaign.id,
        upload=result.upload,
        accepted=result.accepted,
        rejected=result.rejected,
    )
    return result.as_dict()


def _limit_rows(rows: Any, limit: int) -> Any:
    for i, row in enumerate(rows):
        if i >= limit:
            raise TooLarge(f"upload has more than {limit} rows")
        yield row


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
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(col(Message.id) > int(after))
    rows = list(session.scalars(stmt.order_by(col(Message.id)).limit(limit + 1)))
    items = [message_view(m) for m in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}
