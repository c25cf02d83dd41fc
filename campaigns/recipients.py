"""Recipient import: rows from CSV/XLSX/JSON validated, normalised, deduplicated, suppressed and
stored in bulk, with a row-level error list. One upload is one transaction (all or nothing).

Rows stream through in chunks; nothing holds the whole file. Duplicates within the campaign are
found by the (campaign_id, to) unique key (ON CONFLICT DO NOTHING), so a second upload appends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from campaigns.models import Campaign, Channel, Message, MessageStatus, Suppression, Upload
from campaigns.phones import PhoneError, normalise_with_carrier
from campaigns.tabular import Row, TableReader
from campaigns.templates import TemplateError, check_template
from gateways.smpp.codec import strip_diacritics, unencodable_gsm7
from loa.crypto import SecretBox
from loa.db import table_of
from loa.errors import Invalid
from loa.timeutil import utcnow

MAX_ERRORS = 1000
CHUNK = 5000


def secret_aad(org_id: str, to: str) -> str:
    """Associated data binding a secret token to its organisation and recipient."""
    return f"{org_id}:{to}"


@dataclass
class ImportResult:
    upload: str
    total_rows: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    suppressed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_truncated: bool = False

    def error(self, row: int, column: str | None, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"row": row, "column": column, "reason": reason})
        else:
            self.errors_truncated = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "upload": self.upload,
            "total_rows": self.total_rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "suppressed": self.suppressed,
            "errors": self.errors,
            "errors_truncated": self.errors_truncated,
        }


@dataclass(frozen=True)
class SourceRow:
    number: int
    to: Any
    fields: dict[str, Any]
    extra: bool = False


def address_column(channel: Channel) -> str:
    return "phone" if channel is Channel.SMS else "email"


def rows_from_table(table: TableReader, channel: Channel) -> tuple[list[str], Iterator[SourceRow]]:
    header = [h.strip() for h in table.header]
    wanted = address_column(channel)
    lowered = [h.lower() for h in header]
    if wanted not in lowered:
        raise Invalid(
            f"no '{wanted}' column in the header (found: {', '.join(header) or 'nothing'})",
            {"row": 1, "column": wanted},
            code="missing_column",
        )
    index = lowered.index(wanted)
    columns = [h for i, h in enumerate(header) if i != index]

    def generate() -> Iterator[SourceRow]:
        for row in table:
            values = list(row.values) + [""] * (len(header) - len(row.values))
            to = values[index]
            fields = {h: values[i] for i, h in enumerate(header) if i != index}
            yield SourceRow(row.number, to, fields, row.extra)

    return columns, generate()


def rows_from_json(recipients: Iterable[Mapping[str, Any]]) -> tuple[list[str], Iterator[SourceRow]]:
    items = list(recipients)
    columns: list[str] = []
    for item in items:
        for name in item.get("fields", {}):
            if name not in columns:
                columns.append(name)

    def generate() -> Iterator[SourceRow]:
        for i, item in enumerate(items, start=1):
            yield SourceRow(i, item["to"], {k: _cell(v) for k, v in item.get("fields", {}).items()})

    return columns, generate()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


class RecipientImporter:
    """Imports rows into one campaign inside the caller's transaction."""

    def __init__(self, session: Session, campaign: Campaign, box: SecretBox, filename: str | None = None) -> None:
        self.session = session
        self.campaign = campaign
        self.box = box
        self.upload = Upload(campaign_id=campaign.id, filename=filename)
        session.add(self.upload)
        session.flush()
        self.result = ImportResult(upload=self.upload.id)
        self._seen: set[str] = set()
        self._suppressed = _suppression_lookup(session, campaign.org_id)
        self._strict_gsm = campaign.channel is Channel.SMS and campaign.encoding in (
            "gsm7",
            "strip_diacritics",
        )

    def run(self, columns: list[str], rows: Iterator[SourceRow]) -> ImportResult:
        known = list(dict.fromkeys([*self.campaign.fields, *columns]))
        try:
            check_template(self.campaign.template, set(known) | set(self.campaign.secret_fields))
        except TemplateError as exc:
            raise Invalid(str(exc), {"part": exc.part, "line": exc.line}, code="unknown_placeholder") from None
        self.campaign.fields = [c for c in known if c not in self.campaign.secret_fields]
        chunk: list[dict[str, Any]] = []
        for row in rows:
            self.result.total_rows += 1
            record = self._validate(row)
            if record is not None:
                chunk.append(record)
                if len(chunk) >= CHUNK:
                    self._insert(chunk)
                    chunk = []
        if chunk:
            self._insert(chunk)
        for name in ("total_rows", "accepted", "rejected", "duplicates", "suppressed"):
            setattr(self.upload, name, getattr(self.result, name))
        self.campaign.updated_at = utcnow()
        return self.result

    def _validate(self, row: SourceRow) -> dict[str, Any] | None:
        column = address_column(self.campaign.channel)
        if row.extra:
            self.result.error(row.number, None, "row has more cells than the header")
            return None
        carrier: str | None = None
        try:
            if self.campaign.channel is Channel.SMS:
                to, carrier = normalise_with_carrier(row.to)
            else:
                to = _normalise_email(str(row.to))
        except PhoneError as exc:
            self.result.error(row.number, column, exc.reason)
            return None
        except EmailNotValidError as exc:
            self.result.error(row.number, column, str(exc))
            return None
        if to in self._seen:
            self.result.duplicates += 1
            return None
        self._seen.add(to)
        secret_names = self.campaign.secret_fields
        plain = {k: v for k, v in row.fields.items() if k not in secret_names}
        secrets = {k: str(row.fields[k]) for k in secret_names if k in row.fields}
        if self._strict_gsm:
            bad = self._unencodable(plain, secrets)
            if bad:
                self.result.error(row.number, bad[0], f"characters that do not fit GSM-7: {' '.join(bad[1])}")
                return None
        status = MessageStatus.SUPPRESSED if to in self._suppressed else MessageStatus.QUEUED
        return {
            "campaign_id": self.campaign.id,
            "upload_id": self.upload.id,
            "row": row.number,
            "to": to,
            "carrier": carrier,
            "status": status.value,
            "fields": plain,
            "secrets": self.box.encrypt_fields(secrets, secret_aad(self.campaign.org_id, to)) if secrets else None,
            "segments": 1,
            "attempts": 0,
            "ambiguous_resends": 0,
            "no_receipt": False,
            "created_at": utcnow(),
            "updated_at": utcnow(),
        }

    def _unencodable(self, plain: Mapping[str, Any], secrets: Mapping[str, str]) -> tuple[str, list[str]] | None:
        for name, value in {**plain, **secrets}.items():
            text = str(value)
            if self.campaign.encoding == "strip_diacritics":
                text = strip_diacritics(text)
            bad = unencodable_gsm7(text)
            if bad:
                return name, bad
        return None

    def _insert(self, chunk: list[dict[str, Any]]) -> None:
        inserted = insert_ignoring_duplicates(self.session, chunk)
        statuses = {r["to"]: r["status"] for r in chunk}
        dupes = len(chunk) - len(inserted)
        self.result.duplicates += dupes
        suppressed = sum(1 for to in inserted if statuses[to] == MessageStatus.SUPPRESSED.value)
        self.result.suppressed += suppressed
        self.result.accepted += len(inserted) - suppressed


def insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> list[str]:
    """Bulk insert; rows whose (campaign_id, to) already exists are skipped. Returns inserted `to`s."""
    dialect = session.get_bind().dialect.name
    table = table_of(Message)
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["campaign_id", "to"])
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["campaign_id", "to"])
    result = session.execute(stmt.returning(table.c.to), rows)
    return [r[0] for r in result]


def _normalise_email(raw: str) -> str:
    info = validate_email(raw.strip(), check_deliverability=False)
    return str(info.normalized)


def _suppression_lookup(session: Session, org_id: str) -> _Suppressed:
    return _Suppressed(session, org_id)


class _Suppressed:
    """Membership test against the organisation's suppression list, loaded once if small."""

    LOAD_LIMIT = 200_000

    def __init__(self, session: Session, org_id: str) -> None:
        self.session, self.org_id = session, org_id
        count = session.scalar(select(func.count()).where(col(Suppression.org_id) == org_id)) or 0
        self._all: set[str] | None = None
        if count <= self.LOAD_LIMIT:
            self._all = set(session.scalars(select(col(Suppression.address)).where(col(Suppression.org_id) == org_id)))

    def __contains__(self, address: object) -> bool:
        if self._all is not None:
            return address in self._all
        return (
            self.session.scalar(
                select(col(Suppression.id)).where(
                    col(Suppression.org_id) == self.org_id, col(Suppression.address) == address
                )
            )
            is not None
        )


def copy_messages(session: Session, source: Campaign, target: Campaign, rows: Select[Any]) -> int:
    """Copy recipients (selected columns of `rows`) into a cloned draft as fresh queued messages."""
    now = utcnow()
    batch: list[dict[str, Any]] = []
    copied = 0
    for to, carrier, fields, secrets, row, segments in session.execute(rows):
        batch.append(
            {
                "campaign_id": target.id,
                "row": row,
                "to": to,
                "carrier": carrier,
                "fields": fields,
                "secrets": secrets,
                "segments": segments,
                "status": MessageStatus.QUEUED.value,
                "attempts": 0,
                "ambiguous_resends": 0,
                "no_receipt": False,
                "created_at": now,
                "updated_at": now,
            }
        )
        if len(batch) >= CHUNK:
            copied += len(insert_ignoring_duplicates(session, batch))
            batch = []
    if batch:
        copied += len(insert_ignoring_duplicates(session, batch))
    return copied


def mark_suppressed(session: Session, org_id: str, address: str, reason: str) -> None:
    """Put an address on the suppression list (idempotent) and suppress its queued messages."""
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        ins(table_of(Suppression))
        .values(org_id=org_id, address=address, reason=reason[:200], created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["org_id", "address"])
    )
    session.execute(
        update(Message)
        .where(
            col(Message.to) == address,
            col(Message.status) == MessageStatus.QUEUED.value,
            col(Message.campaign_id).in_(select(col(Campaign.id)).where(col(Campaign.org_id) == org_id)),
        )
        .values(status=MessageStatus.SUPPRESSED.value, secrets=None, updated_at=utcnow())
    )


__all__ = ["ImportResult", "RecipientImporter", "Row", "rows_from_json", "rows_from_table", "secret_aad"]
