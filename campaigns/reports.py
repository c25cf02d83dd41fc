"""Delivery reports: one row per recipient with the contract's columns, then the campaign's
non-secret fields (secret fields never appear). User-supplied cells that a spreadsheet would run
as a formula are escaped; the E.164 `to` is ours and stays as it is.

Rows are read page by page (keyset pagination), so an export of any size keeps memory flat. XLSX
files are written by openpyxl's write-only mode, split into sheets past Excel's row limit; large
ones are background export jobs (`ExportJob`) whose file is kept in 1 MiB database chunks for a
day, so the API and the workers need no shared disk."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, String, cast, delete, func, select, update
from sqlmodel import Session, col

from campaigns.models import Campaign, Message
from campaigns.report_models import ExportChunk, ExportJob
from loa.db import table_of, transaction
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

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
E164 = re.compile(r"\+[0-9]{6,15}")
PAGE = 5000
XLSX_MAX_ROWS = 1_048_576  # Excel's limit per sheet, header included
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CHUNK_BYTES = 1024 * 1024
PROGRESS_EVERY = 10_000
EXPORT_KEEP = timedelta(hours=24)


def escape_cell(value: Any) -> Any:
    """CSV/formula injection: a leading = + - @ (or tab, CR) makes a spreadsheet evaluate the
    cell; a leading quote makes it text."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def header(campaign: Campaign) -> tuple[list[str], list[str]]:
    """Column names, and the campaign fields they show (secret fields are left out)."""
    fields = [f for f in campaign.fields if f not in campaign.secret_fields]
    names = [f"field_{f}" if f in BASE_COLUMNS else f for f in fields]
    return BASE_COLUMNS + names, fields


def _iso_sql(engine: Engine, column: Any) -> Any:
    """A timestamp as `iso_z` writes it, formatted by the database (no datetime objects per row)."""
    if engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    return func.strftime("%Y-%m-%dT%H:%M:%SZ", column)


def report_rows(engine: Engine, campaign: Campaign) -> Iterator[list[Any]]:
    """Rows in id order, read page by page with keyset pagination (each page its own short read,
    no snapshot held for the whole export): memory stays flat. Timestamps are formatted and the
    campaign's fields extracted by the database, which does that far faster than Python."""
    _names, fields = header(campaign)
    t = table_of(Message)
    columns = [
        t.c.id,
        t.c.upload_id,
        t.c.row,
        t.c.to,
        cast(t.c.status, String),
        t.c.gateway,
        t.c.carrier,
        t.c.segments,
        t.c.provider_ids,
        t.c.error_code,
        t.c.error_text,
        _iso_sql(engine, t.c.submitted_at),
        _iso_sql(engine, t.c.delivered_at),
        *(t.c.fields[f].as_string() for f in fields),
    ]
    last = 0
    while True:
        with engine.connect() as conn:
            page = conn.execute(
                select(*columns).where(t.c.campaign_id == campaign.id, t.c.id > last).order_by(t.c.id).limit(PAGE)
            ).all()
        if not page:
            return
        for r in page:
            code, text = r[9], r[10]
            error = f"{code}: {text}" if code and text else (code or "")
            yield [
                r[1] or "",
                r[2] if r[2] is not None else "",
                r[3] if E164.fullmatch(r[3]) else escape_cell(r[3]),  # an email local part may start with =
                r[4],
                r[5] or "",
                r[6] or "",
                r[7],
                r[8] or "",
                escape_cell(error),
                r[11] or "",
                r[12] or "",
                *(escape_cell(v) if v is not None else "" for v in r[13:]),
            ]
        last = page[-1][0]


def count_rows(session: Session, campaign_id: str) -> int:
    return int(session.scalar(select(func.count()).where(col(Message.campaign_id) == campaign_id)) or 0)


def write_xlsx(
    path: Path,
    names: list[str],
    rows: Iterable[list[Any]],
    *,
    max_rows: int = XLSX_MAX_ROWS,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Write a workbook (write-only mode: rows go to disk as they come); a sheet holds at most
    `max_rows` rows with its header. Returns (data rows, sheets)."""
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    sheet: Any = None
    in_sheet = max_rows
    written = 0
    for row in rows:
        if in_sheet >= max_rows:
            sheet = wb.create_sheet("report" if sheet is None else f"report{len(wb.worksheets) + 1}")
            sheet.append(names)
            in_sheet = 1
        sheet.append(row)
        in_sheet += 1
        written += 1
        if progress is not None and written % PROGRESS_EVERY == 0:
            progress(written)
    if sheet is None:
        wb.create_sheet("report").append(names)
    wb.save(str(path))
    return written, max(1, len(wb.worksheets))


# --- background export jobs -----------------------------------------------------------------------
def create_export(session: Session, campaign: Campaign, fmt: str, key_id: str | None) -> ExportJob:
    job = ExportJob(
        org_id=campaign.org_id,
        campaign_id=campaign.id,
        format=fmt,
        rows_total=count_rows(session, campaign.id),
        created_by=key_id,
    )
    session.add(job)
    session.flush()
    return job


def run_export(engine: Engine, job_id: str, *, max_rows: int = XLSX_MAX_ROWS) -> ExportJob | None:
    """Do one export job: write the file to a temporary path, store it in chunks, mark it done.
    Only a pending job is taken (one worker wins; the others get None); the upkeep makes a
    stalled one pending again."""
    with transaction(engine) as session:
        taken = session.execute(
            update(ExportJob)
            .where(col(ExportJob.id) == job_id, col(ExportJob.status) == "pending")
            .values(status="running", started_at=utcnow(), rows_done=0)
        )
        job = session.get(ExportJob, job_id)
        if job is None or not taken.rowcount:  # type: ignore[attr-defined]
            return None  # unknown, or another worker has it, or it is finished
        campaign = session.get(Campaign, job.campaign_id)
        if campaign is None:
            job.status, job.error, job.finished_at = "failed", "campaign deleted", utcnow()
            return job
        session.execute(delete(ExportChunk).where(col(ExportChunk.export_id) == job_id))

    def progress(done: int) -> None:
        with transaction(engine) as s:
            s.execute(update(ExportJob).where(col(ExportJob.id) == job_id).values(rows_done=done))

    names, _ = header(campaign)
    fd, tmp = tempfile.mkstemp(prefix="loa-export-", suffix=".xlsx")
    os.close(fd)
    path = Path(tmp)
    try:
        rows, sheets = write_xlsx(path, names, report_rows(engine, campaign), max_rows=max_rows, progress=progress)
        size = _store_chunks(engine, job_id, path)
    except Exception as exc:
        log.exception("export %s failed", job_id, extra={"campaign_id": campaign.id})
        with transaction(engine) as session:
            session.execute(
                update(ExportJob)
                .where(col(ExportJob.id) == job_id)
                .values(status="failed", error=f"{type(exc).__name__}: {exc}"[:500], finished_at=utcnow())
            )
        raise
    finally:
        path.unlink(missing_ok=True)
    with transaction(engine) as session:
        now = utcnow()
        session.execute(
            update(ExportJob)
            .where(col(ExportJob.id) == job_id)
            .values(
                status="done",
                rows_done=rows,
                rows_total=rows,
                sheets=sheets,
                size=size,
                finished_at=now,
                expires_at=now + EXPORT_KEEP,
            )
        )
        return session.get(ExportJob, job_id)


def _store_chunks(engine: Engine, job_id: str, path: Path) -> int:
    size = 0
    with path.open("rb") as fh:
        seq = 0
        while data := fh.read(CHUNK_BYTES):
            with transaction(engine) as session:  # one chunk per transaction: memory stays flat
                session.add(ExportChunk(export_id=job_id, seq=seq, data=data))
            seq += 1
            size += len(data)
    return size


def export_chunks(engine: Engine, job_id: str) -> Iterator[bytes]:
    """The stored file, chunk by chunk (each read in its own short session)."""
    seq = 0
    while True:
        with Session(engine) as session:
            data = session.scalar(
                select(col(ExportChunk.data)).where(col(ExportChunk.export_id) == job_id, col(ExportChunk.seq) == seq)
            )
        if data is None:
            return
        yield bytes(data)
        seq += 1


def purge_exports(session: Session) -> int:
    """Exports past their expiry go, file and all."""
    expired = list(
        session.scalars(
            select(col(ExportJob.id)).where(
                col(ExportJob.expires_at).is_not(None), col(ExportJob.expires_at) < utcnow()
            )
        )
    )
    if expired:
        session.execute(delete(ExportChunk).where(col(ExportChunk.export_id).in_(expired)))
        session.execute(delete(ExportJob).where(col(ExportJob.id).in_(expired)))
    return len(expired)


def requeue_stalled(session: Session, stalled_after: timedelta = timedelta(hours=1)) -> list[str]:
    """Pending jobs whose task was lost (older than a minute), and running jobs whose worker
    died, are (made) pending and returned, to be enqueued again."""
    now = utcnow()
    session.execute(
        update(ExportJob)
        .where(col(ExportJob.status) == "running", col(ExportJob.started_at) < now - stalled_after)
        .values(status="pending")
    )
    return list(
        session.scalars(
            select(col(ExportJob.id)).where(
                col(ExportJob.status) == "pending", col(ExportJob.created_at) < now - timedelta(minutes=1)
            )
        )
    )
