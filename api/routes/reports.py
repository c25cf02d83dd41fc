"""Reports: live counters of a campaign, CSV streamed (UTF-8 with BOM, so Excel shows Vietnamese),
XLSX (written at once for small campaigns, as a background export job for large ones), and the
export jobs themselves with their progress and download."""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlmodel import Session, col
from starlette.background import BackgroundTask

from accounts.service import audit
from api.deps import AnyRole, SessionDep, StateDep
from api.state import AppState
from campaigns import counters, reports, repository, tally
from campaigns.report_models import ExportJob
from loa.errors import Conflict, NotFound
from loa.timeutil import iso_z
from workers.celery_app import app as celery_app
from workers.queues import RECEIPTS_QUEUE

log = logging.getLogger(__name__)
router = APIRouter(tags=["reports"])

# Above this many rows an XLSX is a background job: writing it takes minutes, not a request.
XLSX_SYNC_ROWS = 100_000
CSV_FLUSH_ROWS = 1000


@router.get("/v1/campaigns/{campaign_id}/counts", summary="Live counters: status, gateway, carrier, error, fields")
def counts(
    campaign_id: str,
    caller: AnyRole,
    session: SessionDep,
    field: list[str] = Query(default=[], description="recipient field(s) to count by, e.g. province"),
) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    for name in field:
        tally.track_field(session, campaign, name)
    return {"id": campaign.id, "status": str(campaign.status), **tally.counts_view(tally.read(session, campaign.id))}


@router.post("/v1/campaigns/{campaign_id}/counts/reconcile", summary="Recount exactly and correct the counters")
def reconcile(campaign_id: str, caller: AnyRole, session: SessionDep) -> dict[str, Any]:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    corrected = counters.reconcile(session, campaign.id)
    view = tally.counts_view(tally.read(session, campaign.id))
    return {"id": campaign.id, "status": str(campaign.status), "corrected": corrected, **view}


@router.get("/v1/campaigns/{campaign_id}/report.csv", summary="Delivery report as CSV (streamed)")
def report_csv(campaign_id: str, caller: AnyRole, session: SessionDep, state: StateDep) -> StreamingResponse:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    audit(session, caller.org.id, caller.key.id, "report.export", campaign_id, format="csv")
    session.commit()
    names, _ = reports.header(campaign)
    engine = state.engine

    def stream() -> Iterator[bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(names)
        # The BOM and the header go out at once: the first byte never waits for a query.
        yield b"\xef\xbb\xbf" + buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
        for i, row in enumerate(reports.report_rows(engine, campaign), start=1):
            writer.writerow(row)
            if i % CSV_FLUSH_ROWS == 0:
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue().encode()

    return StreamingResponse(
        stream(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{campaign.id}-report.csv"'},
    )


@router.get(
    "/v1/campaigns/{campaign_id}/report.xlsx",
    summary="Delivery report as XLSX (202 with an export job for large campaigns)",
    response_model=None,
)
def report_xlsx(campaign_id: str, caller: AnyRole, session: SessionDep, state: StateDep) -> Response:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    if reports.count_rows(session, campaign.id) > XLSX_SYNC_ROWS:
        return _start_export(session, state, caller.org.id, caller.key.id, campaign_id)
    audit(session, caller.org.id, caller.key.id, "report.export", campaign_id, format="xlsx")
    session.commit()
    names, _ = reports.header(campaign)
    fd, tmp = tempfile.mkstemp(prefix="loa-report-", suffix=".xlsx")
    os.close(fd)
    path = Path(tmp)
    try:
        reports.write_xlsx(path, names, reports.report_rows(state.engine, campaign))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(
        path,
        filename=f"{campaign.id}-report.xlsx",
        media_type=reports.XLSX_MEDIA_TYPE,
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


class ExportIn(BaseModel):
    format: Literal["xlsx"] = "xlsx"


@router.post("/v1/campaigns/{campaign_id}/exports", status_code=202, summary="Start a background export (XLSX)")
def create_export(
    campaign_id: str, caller: AnyRole, session: SessionDep, state: StateDep, body: ExportIn | None = None
) -> Response:
    return _start_export(session, state, caller.org.id, caller.key.id, campaign_id)


def _start_export(session: Session, state: AppState, org_id: str, key_id: str, campaign_id: str) -> JSONResponse:
    campaign = repository.get_campaign(session, org_id, campaign_id)
    job = reports.create_export(session, campaign, "xlsx", key_id)
    audit(session, org_id, key_id, "report.export", campaign_id, format="xlsx", export=job.id)
    session.commit()
    enqueue_export(state, job.id)
    return JSONResponse(export_view(job), status_code=202, headers={"Location": f"/v1/exports/{job.id}"})


def enqueue_export(state: AppState, job_id: str) -> None:
    if state.redis is None:
        return
    try:
        celery_app.send_task("loa.export", args=[job_id], queue=RECEIPTS_QUEUE)
    except Exception:  # the reports upkeep re-sends pending jobs
        log.warning("could not enqueue export %s; the reports upkeep will", job_id)


def export_view(job: ExportJob) -> dict[str, Any]:
    done = job.status == "done"
    return {
        "id": job.id,
        "campaign_id": job.campaign_id,
        "format": job.format,
        "status": job.status,
        "progress": {
            "rows_done": job.rows_done,
            "rows_total": job.rows_total,
            "percent": round(100.0 * job.rows_done / job.rows_total, 1) if job.rows_total else (100.0 if done else 0.0),
        },
        "sheets": job.sheets,
        "size": job.size,
        "error": job.error,
        "created_at": iso_z(job.created_at),
        "finished_at": iso_z(job.finished_at),
        "expires_at": iso_z(job.expires_at),
        "download_url": f"/v1/exports/{job.id}/download" if done else None,
    }


def _job(session: Session, org_id: str, export_id: str) -> ExportJob:
    job = session.scalars(
        select(ExportJob).where(col(ExportJob.id) == export_id, col(ExportJob.org_id) == org_id)
    ).first()
    if job is None:
        raise NotFound(f"export {export_id} not found")
    return job


@router.get("/v1/exports/{export_id}", summary="An export job: status, progress, download link")
def get_export(export_id: str, caller: AnyRole, session: SessionDep) -> dict[str, Any]:
    return export_view(_job(session, caller.org.id, export_id))


@router.get("/v1/exports/{export_id}/download", summary="The exported file (streamed)")
def download_export(export_id: str, caller: AnyRole, session: SessionDep, state: StateDep) -> StreamingResponse:
    job = _job(session, caller.org.id, export_id)
    if job.status != "done":
        raise Conflict(f"export {export_id} is {job.status}, not done", {"status": job.status}, code="not_ready")
    audit(session, caller.org.id, caller.key.id, "report.download", job.campaign_id, export=job.id)
    session.commit()  # no transaction (nor SQLite write lock) held while the file streams
    return StreamingResponse(
        reports.export_chunks(state.engine, job.id),
        media_type=reports.XLSX_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{job.campaign_id}-report.xlsx"',
            "Content-Length": str(job.size),
        },
    )
