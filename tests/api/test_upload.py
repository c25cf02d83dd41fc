"""Recipient uploads through the HTTP API: CSV as Excel writes it (UTF-8 with and without BOM,
comma or semicolon), XLSX (first sheet, merged cells, cached formula values, numbers Excel
mangled), JSON; the contract's response shape, spreadsheet row numbers, appending uploads."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from accounts.models import Role
from api.app import create_app
from loa.settings import Settings
from tests.factories import email_campaign, make_key, sms_campaign

RESPONSE_KEYS = {
    "upload",
    "total_rows",
    "accepted",
    "rejected",
    "duplicates",
    "suppressed",
    "errors",
    "errors_truncated",
}


@contextmanager
def api_client(settings: Settings, key: str, *, raise_server_exceptions: bool = True) -> Iterator[TestClient]:
    """A TestClient on a fresh app whose connection pool is closed afterwards (the test database
    server is shared: leaked pools add up)."""
    app = create_app(settings)
    try:
        with TestClient(
            app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=raise_server_exceptions
        ) as client:
            yield client
    finally:
        app.state.loa.engine.dispose()


@pytest.fixture
def client(settings: Settings, db: Engine) -> Iterator[TestClient]:
    with api_client(settings, make_key(db, Role.SENDER)) as c:
        yield c


def new_campaign(client: TestClient, body: dict[str, Any] | None = None) -> str:
    response = client.post("/v1/campaigns", json=body or sms_campaign())
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def post_file(client: TestClient, campaign: str, name: str, data: bytes, ctype: str = "text/csv") -> Any:
    return client.post(f"/v1/campaigns/{campaign}/recipients", files={"file": (name, data, ctype)})


def csv_bytes(rows: list[list[Any]], delimiter: str = ",", bom: bool = False) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return ("\ufeff" if bom else "").encode() + out.getvalue().encode()


def stored(db: Engine, campaign: str) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        rows = conn.execute(
            text('SELECT "row", "to", carrier, status, fields FROM message WHERE campaign_id = :c ORDER BY "row"'),
            {"c": campaign},
        ).all()
    return [(r[0], r[1], r[2], r[3], _json(r[4])) for r in rows]


def _json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def check_shape(body: dict[str, Any]) -> None:
    """The contract: exactly these keys, four disjoint counts adding up to total_rows."""
    assert set(body) == RESPONSE_KEYS
    assert body["accepted"] + body["rejected"] + body["duplicates"] + body["suppressed"] == body["total_rows"]
    assert len(body["errors"]) == min(body["rejected"], 1000)
    for error in body["errors"]:
        assert set(error) == {"row", "column", "reason"}


# ---------------------------------------------------------------- CSV


def test_csv_counts_errors_and_stored_rows(client: TestClient, db: Engine) -> None:
    campaign = new_campaign(client)
    data = csv_bytes(
        [
            ["phone", "ten"],
            ["0912 345 678", "Nguyễn Văn An"],  # row 2
            ["84912345678", "again"],  # row 3: the same number in another form
            ["12345", "short"],  # row 4
            [],  # row 5: blank, skipped but still counted in the numbering
            ["09123abc45", "letters"],  # row 6
            ["+84 98-765.4321", "Trần Bình"],  # row 7
            ["8.4987654322E10", "Excel sci"],  # row 8: Excel's scientific notation, all digits kept
            ["987654323", "Excel lost the zero"],  # row 9
            ["02438123456", "landline"],  # row 10: Hà Nội fixed line
        ]
    )
    response = post_file(client, campaign, "danh-sach.csv", data)
    assert response.status_code == 200, response.text
    body = response.json()
    check_shape(body)
    assert body["upload"].startswith("upl_")
    assert (body["total_rows"], body["accepted"], body["rejected"], body["duplicates"]) == (8, 4, 3, 1)
    assert body["suppressed"] == 0
    assert body["errors_truncated"] is False
    assert body["errors"] == [
        {"row": 4, "column": "phone", "reason": "too short"},
        {"row": 6, "column": "phone", "reason": "contains letters"},
        {"row": 10, "column": "phone", "reason": "not a mobile number"},
    ]
    assert stored(db, campaign) == [
        (2, "+84912345678", "Vinaphone", "queued", {"ten": "Nguyễn Văn An"}),
        (7, "+84987654321", "Viettel", "queued", {"ten": "Trần Bình"}),
        (8, "+84987654322", "Viettel", "queued", {"ten": "Excel sci"}),
        (9, "+84987654323", "Viettel", "queued", {"ten": "Excel lost the zero"}),
    ]


@pytest.mark.parametrize(
    ("delimiter", "bom"),
    [(",", False), (",", True), (";", True), (";", False)],
    ids=["comma", "comma-bom", "semicolon-bom (Excel, Vietnamese locale)", "semicolon"],
)
def test_csv_as_excel_writes_it(client: TestClient, db: Engine, delimiter: str, bom: bool) -> None:
    campaign = new_campaign(client)
    # Vietnamese-locale Excel writes "Họ, tên" unquoted in a semicolon file.
    rows = [["phone", "ten"], ["0912345678", "Nguyễn, An" if delimiter == ";" else "An"], ["0987654321", "Bình"]]
    response = post_file(client, campaign, "list.csv", csv_bytes(rows, delimiter, bom))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    assert [s[4] for s in stored(db, campaign)] == [{"ten": rows[1][1]}, {"ten": "Bình"}]


def test_decomposed_vietnamese_is_stored_as_nfc(client: TestClient, db: Engine) -> None:
    campaign = new_campaign(client)
    decomposed = "Nguye\u0302\u0303n"  # "Nguyễn" typed with combining marks
    response = post_file(client, campaign, "nfd.csv", csv_bytes([["phone", "ten"], ["0912345678", decomposed]]))
    assert response.status_code == 200, response.text
    assert stored(db, campaign)[0][4] == {"ten": "Nguyễn"}


def test_errors_stop_at_1000_and_say_so(client: TestClient) -> None:
    campaign = new_campaign(client)
    rows = [["phone", "ten"]] + [["12345", f"x{i}"] for i in range(1200)] + [["0912345678", "ok"]]
    body = post_file(client, campaign, "bad.csv", csv_bytes(rows)).json()
    check_shape(body)
    assert (body["rejected"], body["accepted"], len(body["errors"]), body["errors_truncated"]) == (1200, 1, 1000, True)
    assert body["errors"][0]["row"] == 2
    assert body["errors"][-1]["row"] == 1001


def test_a_second_upload_appends_and_counts_duplicates(client: TestClient, db: Engine) -> None:
    campaign = new_campaign(client)
    first = post_file(
        client, campaign, "a.csv", csv_bytes([["phone", "ten"], ["0912345678", "An"], ["0987654321", "B"]])
    )
    assert first.json()["accepted"] == 2
    before = stored(db, campaign)
    second = post_file(
        client, campaign, "b.csv", csv_bytes([["phone", "ten"], ["0987654321", "changed"], ["0911111111", "C"]])
    ).json()
    check_shape(second)
    assert (second["accepted"], second["duplicates"]) == (1, 1)
    after = stored(db, campaign)
    assert after[:2] == before  # the earlier row keeps its fields
    assert after[2][1:] == ("+84911111111", "Vinaphone", "queued", {"ten": "C"})
    view = client.get(f"/v1/campaigns/{campaign}").json()
    assert view["counts"]["total"] == 3


# ---------------------------------------------------------------- XLSX


def workbook(path: Path) -> bytes:
    """Several sheets (the first is read), merged cells, a formula, numbers as Excel stores them."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Hộ gia đình"
    sheet.append(["phone", "ten", "xa", "so_nguoi"])
    sheet.append([912345678, "Nguyễn An", "Xã Tân Lập", "=1+2"])  # number without its zero; formula
    sheet.append([84987654321.0, "Trần Bình", None, 4])  # float; commune merged from the row above
    sheet.append(["0911111111", "Lê Chi", None, 2.0])
    sheet.append(["0922222222", "Phạm Dũng", "Xã Mỹ Hòa", 5])
    sheet.merge_cells("C2:C4")
    other = book.create_sheet("Ghi chú")
    other.append(["phone", "ten"])
    other.append(["0933333333", "must not be read"])
    book.active = 1
    path = path / "list.xlsx"
    book.save(path)
    # openpyxl does not calculate: store the cached value Excel would have written.
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            if info.filename == "xl/worksheets/sheet1.xml":
                assert b"<f>1+2</f><v />" in data
                data = data.replace(b"<f>1+2</f><v />", b"<f>1+2</f><v>3</v>")
            archive.writestr(info, data)
    return path.read_bytes()


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def test_xlsx_first_sheet_merged_cells_and_formula_values(client: TestClient, db: Engine, tmp_path: Path) -> None:
    campaign = new_campaign(client, sms_campaign(template={"body": "{{ ten }} ({{ xa }}): {{ so_nguoi }} người"}))
    response = post_file(client, campaign, "list.xlsx", workbook(tmp_path), XLSX)
    assert response.status_code == 200, response.text
    body = response.json()
    check_shape(body)
    assert (body["total_rows"], body["accepted"]) == (4, 4)
    assert stored(db, campaign) == [
        (2, "+84912345678", "Vinaphone", "queued", {"ten": "Nguyễn An", "xa": "Xã Tân Lập", "so_nguoi": "3"}),
        (3, "+84987654321", "Viettel", "queued", {"ten": "Trần Bình", "xa": "Xã Tân Lập", "so_nguoi": "4"}),
        (4, "+84911111111", "Vinaphone", "queued", {"ten": "Lê Chi", "xa": "Xã Tân Lập", "so_nguoi": "2"}),
        (5, "+84922222222", "Vietnamobile", "queued", {"ten": "Phạm Dũng", "xa": "Xã Mỹ Hòa", "so_nguoi": "5"}),
    ]


# ---------------------------------------------------------------- JSON


def test_json_rows_are_numbered_from_one(client: TestClient, db: Engine) -> None:
    campaign = new_campaign(client)
    recipients = [
        {"to": "0912345678", "fields": {"ten": "An"}},
        {"to": "not a number", "fields": {"ten": "B"}},
        {"to": "0987654321", "fields": {}},  # the template needs ten
        {"to": "+84912345678", "fields": {"ten": "dup"}},
        {"to": "0911111111", "fields": {"ten": 42}},
    ]
    response = client.post(f"/v1/campaigns/{campaign}/recipients", json={"recipients": recipients})
    assert response.status_code == 200, response.text
    body = response.json()
    check_shape(body)
    assert (body["total_rows"], body["accepted"], body["rejected"], body["duplicates"]) == (5, 2, 2, 1)
    assert body["errors"] == [
        {"row": 2, "column": "phone", "reason": "contains letters"},
        {"row": 3, "column": "ten", "reason": "missing: the template uses this field"},
    ]
    assert [s[:2] + (s[4],) for s in stored(db, campaign)] == [
        (1, "+84912345678", {"ten": "An"}),
        (5, "+84911111111", {"ten": "42"}),
    ]


def test_email_addresses_are_checked_and_compared_without_case(client: TestClient, db: Engine) -> None:
    campaign = new_campaign(client, email_campaign())
    rows = [
        ["email", "don_vi", "username", "password"],
        ["Unit1@Example.VN", "Đơn vị 1", "u1", "pw1"],
        ["unit1@example.vn", "again", "u1b", "pw1b"],
        ["no-at-sign.example.vn", "bad", "u2", "pw2"],
        ["unit3@example.vn", "Đơn vị 3", "u3", "pw3"],
    ]
    body = post_file(client, campaign, "units.csv", csv_bytes(rows)).json()
    check_shape(body)
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 1)
    assert body["errors"][0]["row"] == 4
    assert body["errors"][0]["column"] == "email"
    assert [s[1] for s in stored(db, campaign)] == ["unit1@example.vn", "unit3@example.vn"]


# ---------------------------------------------------------------- access


def test_uploads_need_a_campaign_of_ones_own_that_still_takes_recipients(
    client: TestClient, settings: Settings, db: Engine
) -> None:
    campaign = new_campaign(client)
    data = csv_bytes([["phone", "ten"], ["0912345678", "An"]])
    other = make_key(db, Role.SENDER, org="another-org")
    response = client.post(
        f"/v1/campaigns/{campaign}/recipients",
        files={"file": ("a.csv", data, "text/csv")},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert response.status_code == 404
    operator = make_key(db, Role.OPERATOR)
    response = client.post(
        f"/v1/campaigns/{campaign}/recipients",
        files={"file": ("a.csv", data, "text/csv")},
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert response.status_code == 403
    assert post_file(client, campaign, "a.csv", data).status_code == 200
    assert client.post(f"/v1/campaigns/{campaign}/cancel").status_code == 200
    response = post_file(client, campaign, "a.csv", data)
    assert response.status_code == 409
    assert "cancelled" in response.json()["error"]["message"]


def test_field_text_is_stored_exactly(client: TestClient, db: Engine) -> None:
    """Backslashes, tabs, quotes, line breaks (a quoted multi-line cell) and, from JSON, NUL survive
    the bulk path (COPY text format on Postgres) unchanged."""
    tricky = ["C:\\dữ liệu\\n", "tab\there", 'say "hi"', "line one\nline two", "\\N", "{}[]"]
    from_csv = new_campaign(client)
    rows = [["phone", "ten"]] + [[f"09{n:08d}", value] for n, value in enumerate(tricky)]
    assert post_file(client, from_csv, "tricky.csv", csv_bytes(rows)).json()["accepted"] == len(tricky)
    assert [s[4]["ten"] for s in stored(db, from_csv)] == tricky

    from_json = new_campaign(client)
    tricky.append("nul\x00byte")
    recipients = [{"to": f"09{n:08d}", "fields": {"ten": value}} for n, value in enumerate(tricky)]
    response = client.post(f"/v1/campaigns/{from_json}/recipients", json={"recipients": recipients})
    assert response.json()["accepted"] == len(tricky)
    assert [s[4]["ten"] for s in stored(db, from_json)] == tricky
