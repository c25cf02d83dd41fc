"""The issue's "bad input" list, each through the HTTP API: the answer names the problem, and
nothing the campaign held before (messages, uploads, column names) is lost or changed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from accounts.models import Role
from loa.settings import Settings
from tests.api.test_upload import api_client, check_shape, csv_bytes, new_campaign, post_file
from tests.campaigns.test_tabular import SAMPLE, as_cp1258, as_tcvn3, as_vni
from tests.factories import make_key, sms_campaign


@pytest.fixture
def client(settings: Settings, db: Engine) -> Iterator[TestClient]:
    with api_client(settings, make_key(db, Role.SENDER)) as c:
        yield c


@pytest.fixture
def campaign(client: TestClient) -> str:
    """A campaign that already holds an upload, whose state every bad upload must leave alone."""
    cid = new_campaign(client, sms_campaign(template={"body": "Kính gửi {{ ten }}"}))
    data = csv_bytes([["phone", "ten", "tinh"], ["0912345678", "An", "Huế"], ["0987654321", "Bình", "Huế"]])
    assert post_file(client, cid, "first.csv", data).json()["accepted"] == 2
    return cid


def snapshot(db: Engine, campaign: str) -> dict[str, Any]:
    with db.connect() as conn:
        return {
            "messages": conn.execute(
                text(
                    'SELECT id, "row", "to", carrier, status, CAST(fields AS TEXT), secrets, upload_id, updated_at '
                    "FROM message WHERE campaign_id = :c ORDER BY id"
                ),
                {"c": campaign},
            ).all(),
            "uploads": conn.execute(
                text("SELECT * FROM upload WHERE campaign_id = :c ORDER BY id"), {"c": campaign}
            ).all(),
            "campaign": conn.execute(
                text("SELECT status, CAST(fields AS TEXT), updated_at FROM campaign WHERE id = :c"), {"c": campaign}
            ).one(),
        }


def refused(client: TestClient, db: Engine, campaign: str, name: str, data: bytes, ctype: str = "text/csv") -> Any:
    """Post a bad file; return the error, after checking the campaign is exactly as before."""
    before = snapshot(db, campaign)
    response = post_file(client, campaign, name, data, ctype)
    assert 400 <= response.status_code < 500, response.text
    assert snapshot(db, campaign) == before
    error = response.json()["error"]
    assert set(error) >= {"code", "message"}
    return response.status_code, error


def test_empty_file(client: TestClient, db: Engine, campaign: str) -> None:
    status, error = refused(client, db, campaign, "empty.csv", b"")
    assert (status, error["code"]) == (422, "empty_file")
    assert "empty" in error["message"]


def test_header_only(client: TestClient, db: Engine, campaign: str) -> None:
    status, error = refused(client, db, campaign, "header.csv", b"phone,ten\r\n\r\n")
    assert (status, error["code"]) == (422, "no_rows")
    assert error["message"] == "The file has a header but no data rows."


def test_no_address_column(client: TestClient, db: Engine, campaign: str) -> None:
    data = csv_bytes([["so_dien_thoai", "ten"], ["0912345678", "An"]])
    status, error = refused(client, db, campaign, "list.csv", data)
    assert (status, error["code"]) == (422, "missing_column")
    assert "No 'phone' column" in error["message"]
    assert "so_dien_thoai" in error["message"]
    assert error["details"] == {"row": 1, "column": "phone"}


def test_unknown_placeholder(client: TestClient, db: Engine, campaign: str) -> None:
    data = csv_bytes([["phone", "ho_ten"], ["0912345678", "An"]])  # the template needs `ten`
    status, error = refused(client, db, campaign, "list.csv", data)
    assert (status, error["code"]) == (422, "unknown_placeholder")
    assert "{{ ten }}" in error["message"]


def test_latin1_csv(client: TestClient, db: Engine, campaign: str) -> None:
    data = "phone,ten\n0912345678,François Müller\n0987654322,José Peña\n".encode("latin-1")
    status, error = refused(client, db, campaign, "export.csv", data)
    assert (status, error["code"]) == (422, "legacy_encoding")
    assert "Windows-1252 (Western European)" in error["message"]
    assert "CSV UTF-8" in error["message"]


@pytest.mark.parametrize(
    ("encode", "name"),
    [(as_cp1258, "Windows-1258 (Vietnamese)"), (as_tcvn3, "TCVN3 (ABC)"), (as_vni, "VNI")],
    ids=["cp1258", "tcvn3", "vni"],
)
def test_legacy_vietnamese_encodings_are_named(
    client: TestClient, db: Engine, campaign: str, encode: Any, name: str
) -> None:
    data = encode(SAMPLE.replace("Họ tên", "ten"))
    status, error = refused(client, db, campaign, "danh-sach.csv", data)
    assert (status, error["code"]) == (422, "legacy_encoding")
    assert f"it looks like {name}" in error["message"]


def test_legacy_bytes_deep_in_the_file_name_their_row(client: TestClient, db: Engine, campaign: str) -> None:
    # Past the first chunk the importer writes: the rows before it reached the database, and
    # the refusal still takes them back.
    good = "phone,ten\n" + "".join(f"09{n:08d},Nguyễn Văn An\n" for n in range(12_000))
    data = good.encode() + as_tcvn3("0912345679,Lê Thị Hồng\n")
    status, error = refused(client, db, campaign, "late.csv", data)
    assert (status, error["code"]) == (422, "legacy_encoding")
    assert error["details"]["row"] == 12_002
    assert "Row 12002" in error["message"]
    assert "TCVN3" in error["message"]


def test_binary_garbage_named_csv(client: TestClient, db: Engine, campaign: str) -> None:
    garbage = random.Random(3).randbytes(50_000)
    status, error = refused(client, db, campaign, "list.csv", garbage)
    assert (status, error["code"]) == (422, "binary_file")
    assert "not a CSV text file or an Excel workbook" in error["message"]


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("list.xlsx", b"PK\x03\x04 this is not a zip archive at all", "bad_xlsx"),
        ("list.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "unsupported_format"),
        ("list.pdf", b"%PDF-1.4\n", "unsupported_format"),
        ("list.csv", b'phone,ten\n0912345678,"An\n0987654321,Binh\n', "bad_csv"),
        ("list.csv", "phone,ten\n0912345678,An\n".encode("utf-16"), "not_utf8"),
    ],
    ids=["broken-xlsx", "xls-97", "pdf", "unclosed-quote", "utf-16"],
)
def test_other_unreadable_files(
    client: TestClient, db: Engine, campaign: str, name: str, data: bytes, code: str
) -> None:
    status, error = refused(client, db, campaign, name, data)
    assert (status, error["code"]) == (422, code)


def test_rows_longer_than_the_header_are_rejected_by_row(client: TestClient, db: Engine, campaign: str) -> None:
    # An unquoted comma in a name shifts the cells: storing the row would send the wrong text.
    data = b"phone,ten\r\n0911111111,Lan\r\n0922222222,Nguyen, Van B\r\n0933333333,Hoa,,\r\n"
    body = post_file(client, campaign, "longer.csv", data).json()
    check_shape(body)
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["errors"] == [
        {"row": 3, "column": None, "reason": "the row has more cells than the 2 named in the header"}
    ]


def test_json_that_is_not_a_recipient_list(client: TestClient, db: Engine, campaign: str) -> None:
    before = snapshot(db, campaign)
    for body in (b"{not json", b'{"recipients": [{"fields": {}}]}', b"[]"):
        response = client.post(
            f"/v1/campaigns/{campaign}/recipients", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
    response = client.post(f"/v1/campaigns/{campaign}/recipients", json={"recipients": []})
    assert response.json()["error"]["code"] == "no_rows"
    assert snapshot(db, campaign) == before


@pytest.mark.slow
def test_ten_thousand_bad_numbers_in_a_hundred_thousand_rows(client: TestClient, db: Engine, campaign: str) -> None:
    rows = [["phone", "ten"]]
    for n in range(100_000):
        phone = f"0{n:06d}" if n % 10 == 0 else f"09{n:08d}"  # every tenth is too short
        rows.append([phone, f"Người {n}"])
    body = post_file(client, campaign, "big.csv", csv_bytes(rows)).json()
    check_shape(body)
    assert (body["total_rows"], body["rejected"], body["accepted"], body["duplicates"]) == (100_000, 10_000, 90_000, 0)
    assert len(body["errors"]) == 1000
    assert body["errors_truncated"] is True
    assert [(e["row"], e["column"]) for e in body["errors"]] == [(2 + 10 * k, "phone") for k in range(1000)]
    assert all(e["reason"] for e in body["errors"])
    # The campaign is still usable: counted, previewed, launched.
    view = client.get(f"/v1/campaigns/{campaign}").json()
    assert view["counts"]["queued"] == view["counts"]["total"] == 90_002
    assert client.get(f"/v1/campaigns/{campaign}/preview").status_code == 200
    launched = client.post(f"/v1/campaigns/{campaign}/launch")
    assert launched.status_code == 200, launched.text
    assert launched.json()["status"] == "running"
