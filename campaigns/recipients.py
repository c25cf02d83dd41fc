"""Recipient import: rows from CSV/XLSX/JSON validated, normalised and stored in bulk, with a
row-level error list. One upload is one transaction: it is stored whole or not at all.

Rows stream through in chunks and nothing per recipient is kept between chunks: duplicates
(within the file and against earlier uploads, so a second upload appends) and suppressed
addresses are found by the database when each chunk is moved in (:mod:`campaigns.staging`).
Parsing and validating the next chunk runs on a helper thread while this one waits for the
database to take the previous chunk, so Python and Postgres work at the same time.

Counting: every data row of the file is exactly one of accepted, rejected (listed in ``errors``
with its spreadsheet row number; the first :data:`MAX_ERRORS`), duplicate or suppressed.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Select, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from campaigns import counters
from campaigns.models import Campaign, Channel, Message, MessageStatus, Suppression, Upload
from campaigns.phones import PhoneError, normalise_with_carrier
from campaigns.staging import StagedRow, open_writer, run_pipelined
from campaigns.tabular import TableReader, clean_text
from campaigns.templates import TemplateError, check_template, placeholders
from gateways.smpp.codec import strip_diacritics, unencodable_gsm7
from loa.crypto import SecretBox
from loa.db import table_of
from loa.errors import Invalid, TooLarge
from loa.timeutil import utcnow

__all__ = [
    "ImportResult",
    "RecipientImporter",
    "address_column",
    "copy_messages",
    "mark_suppressed",
    "normalise_email",
    "secret_aad",
    "suppress_many",
]

log = logging.getLogger(__name__)

MAX_ERRORS = 1000
# Rows per chunk: a million-row upload (the default limit) is 50 chunks, all moved without looking
# (campaigns.staging._SAVEPOINTS); a chunk takes a few MB in the API and in Postgres's sort.
CHUNK = 20_000
_encode_json_string: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def secret_aad(org_id: str, to: str) -> str:
    """Associated data binding a secret token to its organisation and recipient: a token copied
    onto another row or organisation does not decrypt."""
    return f"{org_id}:{to}"


def address_column(channel: Channel) -> str:
    return "phone" if channel is Channel.SMS else "email"


def normalise_email(raw: str) -> str:
    """The address checked by email-validator (syntax only, no DNS), in lower case: mailbox names
    are case-insensitive in practice, and the same person must not count twice nor escape the
    suppression list by a capital letter."""
    info = validate_email(raw.strip(), check_deliverability=False)
    return str(info.normalized).lower()


@dataclass
class ImportResult:
    """The answer to an upload, in the contract's shape (:meth:`as_dict`)."""

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


class RecipientImporter:
    """Imports one upload into one campaign inside the caller's transaction (never commits)."""

    def __init__(self, session: Session, campaign: Campaign, box: SecretBox, filename: str | None = None) -> None:
        self.session = session
        self.campaign = campaign
        self.box = box
        self.upload = Upload(campaign_id=campaign.id, filename=(filename or None) and filename[:255])
        session.add(self.upload)
        session.flush()
        self.result = ImportResult(upload=self.upload.id)
        self.column = address_column(campaign.channel)
        self._sms = campaign.channel is Channel.SMS
        self._aad_prefix = secret_aad(campaign.org_id, "")
        self._needed: set[str] = set()  # template placeholders, set by _check_columns
        # Fields that must fit GSM-7 under a strict encoding policy: those the SMS body uses.
        self._gsm_fields: frozenset[str] = frozenset()
        if self._sms and campaign.encoding in ("gsm7", "strip_diacritics"):
            with contextlib.suppress(TemplateError):  # a broken template is reported by _check_columns
                self._gsm_fields = frozenset(placeholders("body", campaign.template.get("body") or ""))

    # ---- entry points ---------------------------------------------------------------------------
    def import_table(self, table: TableReader, max_rows: int) -> ImportResult:
        """A CSV/XLSX upload: the header names the address column and the template fields."""
        header = table.header
        lowered = [name.lower() for name in header]
        if self.column not in lowered:
            table.close()
            raise Invalid(
                f"No '{self.column}' column in the header (row 1 has: {', '.join(header)}). "
                f"Name the column that holds the {'phone numbers' if self._sms else 'email addresses'} "
                f"'{self.column}'.",
                {"row": 1, "column": self.column},
                code="missing_column",
            )
        index = lowered.index(self.column)
        columns = [name for i, name in enumerate(header) if i != index]
        self._check_columns(columns)
        return self._run(self._table_chunks(table, index, max_rows))

    def import_json(self, recipients: Sequence[Mapping[str, Any]]) -> ImportResult:
        """A JSON list of ``{to, fields}``; rows are numbered from 1 in list order."""
        if not recipients:
            raise Invalid("The list of recipients is empty.", {"field": "recipients"}, code="no_rows")
        columns = list(dict.fromkeys(name for item in recipients for name in item.get("fields") or {}))
        self._check_columns(columns)
        return self._run(self._json_chunks(recipients))

    # ---- shared steps ---------------------------------------------------------------------------
    def _check_columns(self, columns: list[str]) -> None:
        """Every template placeholder must be a column of this upload, or its rows could not be
        rendered; the campaign learns the (non-secret) column names for reports."""
        try:
            check_template(self.campaign.template, columns)
        except TemplateError as exc:
            raise Invalid(str(exc), {"part": exc.part, "line": exc.line}, code="unknown_placeholder") from None
        self._needed = check_template(self.campaign.template)
        secret = set(self.campaign.secret_fields)
        plain = [name for name in columns if name not in secret]
        self.campaign.fields = list(dict.fromkeys([*self.campaign.fields, *plain]))

    def _run(self, chunks: Iterator[list[StagedRow]]) -> ImportResult:
        now = utcnow()
        writer = open_writer(self.session, self.campaign.id, self.upload.id, self.campaign.org_id, now)
        staged = inserted = 0

        def write(rows: list[StagedRow]) -> None:
            nonlocal staged, inserted
            staged += len(rows)
            inserted += writer.write(rows)

        run_pipelined(chunks, write)
        result = self.result
        if result.total_rows == 0:
            raise Invalid("The file has a header but no data rows.", {"row": 2}, code="no_rows")
        result.suppressed = writer.suppressed()
        writer.close()
        result.accepted = inserted - result.suppressed
        result.duplicates = staged - inserted
        counters.reconcile(self.session, self.campaign.id)  # live counters: one exact count per upload
        for name in ("total_rows", "accepted", "rejected", "duplicates", "suppressed"):
            setattr(self.upload, name, getattr(result, name))
        self.campaign.updated_at = now
        log.info(
            "upload %s: %s rows, %s accepted, %s rejected, %s duplicates, %s suppressed",
            result.upload,
            result.total_rows,
            result.accepted,
            result.rejected,
            result.duplicates,
            result.suppressed,
            extra={"campaign_id": self.campaign.id},
        )
        return result

    def _address(self, number: int, raw: Any) -> tuple[str, str | None] | None:
        """The normalised address and carrier, or None after recording why the row is rejected."""
        try:
            if self._sms:
                return normalise_with_carrier(raw)
            return normalise_email(str(raw)), None
        except PhoneError as exc:
            self.result.error(number, self.column, exc.reason)
        except EmailNotValidError as exc:
            self.result.error(number, self.column, str(exc))
        return None

    def _misfit(self, number: int, values: Iterable[tuple[str, str]]) -> bool:
        """Under gsm7/strip_diacritics, a field the SMS body uses that cannot be sent as GSM-7
        rejects its row (the error lists the characters, never the value)."""
        for name, value in values:
            if name not in self._gsm_fields:
                continue
            text = strip_diacritics(value) if self.campaign.encoding == "strip_diacritics" else value
            bad = unencodable_gsm7(text)
            if bad:
                self.result.error(number, name, f"characters that do not fit GSM-7: {' '.join(bad)}")
                return True
        return False

    def _seal(self, to: str, secrets: Mapping[str, str]) -> str:
        return self.box.encrypt_fields(secrets, self._aad_prefix + to)

    # ---- producers ------------------------------------------------------------------------------
    def _table_chunks(self, table: TableReader, index: int, max_rows: int) -> Iterator[list[StagedRow]]:
        header = table.header
        secret_names = set(self.campaign.secret_fields)
        plain = [(i, name) for i, name in enumerate(header) if i != index and name not in secret_names]
        secret = [(i, name) for i, name in enumerate(header) if i != index and name in secret_names]
        # The fields JSON is assembled from pre-encoded keys: several times faster than json.dumps.
        keys = [("{" if n == 0 else ",") + _encode_json_string(name) + ":" for n, (_, name) in enumerate(plain)]
        pairs = [(key, i) for key, (i, _) in zip(keys, plain, strict=True)]
        checked = [(i, name) for i, name in enumerate(header) if name in self._gsm_fields]
        encode, result, address = _encode_json_string, self.result, self._address
        width = len(header)
        chunk: list[StagedRow] = []
        total = 0
        try:
            for row in table:
                total += 1
                result.total_rows = total
                if total > max_rows:
                    raise TooLarge(f"The file has more than {max_rows:,} data rows; split it into several uploads.")
                number = row.number
                if row.extra:
                    result.error(number, None, f"the row has more cells than the {width} named in the header")
                    continue
                values = row.values
                found = address(number, values[index])
                if found is None:
                    continue
                if checked and self._misfit(number, ((name, values[i]) for i, name in checked)):
                    continue
                fields = "".join([key + encode(values[i]) for key, i in pairs]) + "}" if pairs else "{}"
                token = self._seal(found[0], {name: values[i] for i, name in secret}) if secret else None
                chunk.append((number, found[0], found[1], fields, token))
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        finally:
            table.close()

    def _json_chunks(self, recipients: Sequence[Mapping[str, Any]]) -> Iterator[list[StagedRow]]:
        secret_names = set(self.campaign.secret_fields)
        result = self.result
        chunk: list[StagedRow] = []
        for number, item in enumerate(recipients, start=1):
            result.total_rows = number
            values = {str(name): _cell(value) for name, value in (item.get("fields") or {}).items()}
            missing = next((name for name in sorted(self._needed) if name not in values), None)
            if missing is not None:
                result.error(number, missing, "missing: the template uses this field")
                continue
            found = self._address(number, item.get("to", ""))
            if found is None or self._misfit(number, values.items()):
                continue
            plain = {name: value for name, value in values.items() if name not in secret_names}
            secrets = {name: value for name, value in values.items() if name in secret_names}
            token = self._seal(found[0], secrets) if secrets else None
            fields = json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
            chunk.append((number, found[0], found[1], fields, token))
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _cell(value: Any) -> str:
    """A JSON field value as the text a template renders (like a spreadsheet cell)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ---- copying, suppressing -----------------------------------------------------------------------
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
    counters.reconcile(session, target.id)  # the clone's live counters start from an exact count
    return copied


def mark_suppressed(session: Session, org_id: str, address: str, reason: str) -> None:
    """Put an address on the suppression list (idempotent) and suppress its queued messages."""
    suppress_many(session, org_id, [(address, reason)])


def suppress_many(session: Session, org_id: str, entries: Sequence[tuple[str, str]]) -> int:
    """Put normalised addresses on the suppression list (idempotent; the first reason stays) and
    suppress their queued messages in every campaign of the organisation, dropping their secrets.
    Returns how many addresses were new to the list."""
    if not entries:
        return 0
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utcnow()
    added = 0
    campaigns = select(col(Campaign.id)).where(col(Campaign.org_id) == org_id)
    for start in range(0, len(entries), 1000):
        part = list(dict(entries[start : start + 1000]).items())
        result = session.execute(
            ins(table_of(Suppression))
            .on_conflict_do_nothing(index_elements=["org_id", "address"])
            .returning(table_of(Suppression).c.id),
            [{"org_id": org_id, "address": a, "reason": r[:200], "created_at": now} for a, r in part],
        )
        added += len(result.all())
        queued = (
            col(Message.to).in_([a for a, _ in part]),
            col(Message.status) == MessageStatus.QUEUED.value,
            col(Message.campaign_id).in_(campaigns),
        )
        before = counters.snapshot_where(session, *queued)
        session.execute(
            update(Message).where(*queued).values(status=MessageStatus.SUPPRESSED.value, secrets=None, updated_at=now),
            execution_options={"synchronize_session": False},
        )
        counters.apply_changes(session, before)
    return added
