"""Delivery report rows: one per recipient with the contract's columns, then the campaign's
non-secret fields. User-supplied cells that a spreadsheet would run as a formula are escaped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from campaigns.models import Campaign, Message
from loa.timeutil import iso_z

BASE_COLUMNS = [
    "upload",
    "row",
    "to",
    "status",
    "gateway",
    "carrier",
    "segments",
    "provider_message_id",
    "error",
    "submitted_at",
    "delivered_at",
]
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
PAGE = 5000


def escape_cell(value: Any) -> Any:
    """CSV/formula injection: a leading = + - @ makes Excel evaluate the cell; prefix a quote."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def header(campaign: Campaign) -> tuple[list[str], list[str]]:
    fields = [f for f in campaign.fields if f not in campaign.secret_fields]
    names = [f"field_{f}" if f in BASE_COLUMNS else f for f in fields]
    return BASE_COLUMNS + names, fields


def report_rows(engine: Engine, campaign: Campaign) -> Iterator[list[Any]]:
    """Rows in id order, read page by page with keyset pagination: memory stays flat."""
    _names, fields = header(campaign)
    last = 0
    while True:
        with Session(engine) as session:
            page = list(
                session.execute(
                    select(
                        col(Message.id),
                        col(Message.upload_id),
                        col(Message.row),
                        col(Message.to),
                        col(Message.status),
                        col(Message.gateway),
                        col(Message.carrier),
                        col(Message.segments),
                        col(Message.provider_ids),
                        col(Message.error_code),
                        col(Message.error_text),
                        col(Message.submitted_at),
                        col(Message.delivered_at),
                        col(Message.fields),
                    )
                    .where(col(Message.campaign_id) == campaign.id, col(Message.id) > last)
                    .order_by(col(Message.id))
                    .limit(PAGE)
                )
            )
        if not page:
            return
        for r in page:
            error = f"{r.error_code}: {r.error_text}" if r.error_code and r.error_text else (r.error_code or "")
            values = r.fields or {}
            yield [
                r.upload_id or "",
                r.row if r.row is not None else "",
                r.to,
                str(r.status),
                r.gateway or "",
                r.carrier or "",
                r.segments,
                r.provider_ids or "",
                escape_cell(error),
                iso_z(r.submitted_at) or "",
                iso_z(r.delivered_at) or "",
                *(escape_cell(values.get(f, "")) for f in fields),
            ]
        last = page[-1].id
