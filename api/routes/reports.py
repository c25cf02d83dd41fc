"""Report exports: CSV streamed (UTF-8 with BOM so Excel shows Vietnamese), XLSX written to a
temporary file with openpyxl's write-only mode (split into sheets past Excel's row limit)."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from accounts.service import audit
from api.deps import AnyRole, SessionDep, StateDep
from campaigns import repository
from campaigns.reports import header, report_rows

router = APIRouter(prefix="/v1/campaigns", tags=["reports"])

XLSX_MAX_ROWS = 1_048_576


@router.get("/{campaign_id}/report.csv", summary="Delivery report as CSV (streamed)")
def report_csv(campaign_id: str, caller: AnyRole, session: SessionDep, state: StateDep) -> StreamingResponse:
    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    audit(session, caller.org.id, caller.key.id, "report.export", campaign_id, format="csv")
    session.commit()
    names, _ = header(campaign)
    engine = state.engine

    def stream() -> Iterator[bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(names)
        yield b"\xef\xbb\xbf" + buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
        for i, row in enumerate(report_rows(engine, campaign), start=1):
            writer.writerow(row)
            if i % 1000 == 0:
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue().encode()

    filename = f"{campaign.id}-report.csv"
    return StreamingResponse(
        stream(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/{campaign_id}/report.xlsx", summary="Delivery report as XLSX")
def report_xlsx(campaign_id: str, caller: AnyRole, session: SessionDep, state: StateDep) -> FileResponse:
    from openpyxl import Workbook

    campaign = repository.get_campaign(session, caller.org.id, campaign_id)
    audit(session, caller.org.id, caller.key.id, "report.export", campaign_id, format="xlsx")
    session.commit()
    names, _ = header(campaign)
    wb = Workbook(write_only=True)
    sheet: Any = None
    rows_in_sheet = XLSX_MAX_ROWS
    for row in report_rows(state.engine, campaign):
        if rows_in_sheet >= XLSX_MAX_ROWS:
            sheet = wb.create_sheet(f"report{'' if sheet is None else len(wb.worksheets)}")
            sheet.append(names)
            rows_in_sheet = 1
        sheet.append(row)
        rows_in_sheet += 1
    if sheet is None:
        wb.create_sheet("report").append(names)
    fd, path = tempfile.mkstemp(suffix=".xlsx")
    os.close(fd)
    wb.save(path)

    return FileResponse(
        path,
        filename=f"{campaign.id}-report.xlsx",
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        background=BackgroundTask(os.unlink, path),
    )
