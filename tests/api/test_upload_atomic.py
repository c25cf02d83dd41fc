"""Each upload is atomic: one that fails halfway — too many rows, too many bytes, a database
error — leaves nothing behind, even after chunks of it were already written; concurrent uploads
to one campaign queue up instead of colliding."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from accounts.models import Role
from api.routes import recipients as recipients_routes
from campaigns import recipients
from campaigns.staging import open_writer
from loa.settings import Settings
from tests.api.test_upload import api_client, csv_bytes, new_campaign, post_file
from tests.api.test_upload_bad_input import snapshot
from tests.factories import make_key


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small chunks, and a record of how many rows each chunk inserted before the end."""
    monkeypatch.setattr(recipients, "CHUNK", 100)
    inserted: list[int] = []

    def spying_open(*args: Any) -> Any:
        writer = open_writer(*args)
        real_write = writer.write

        def write(rows: Any) -> int:
            count = real_write(rows)
            inserted.append(count)
            return count

        writer.write = write  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(recipients, "open_writer", spying_open)
    return inserted


def make_client(settings: Settings, db: Engine) -> AbstractContextManager[TestClient]:
    return api_client(settings, make_key(db, Role.SENDER), raise_server_exceptions=False)


@pytest.fixture
def small_limits(make_settings: Callable[..., Settings], db: Engine) -> Iterator[TestClient]:
    with make_client(make_settings(max_upload_rows=1000, max_upload_bytes=64_000), db) as client:
        yield client


def baseline(client: TestClient) -> str:
    campaign = new_campaign(client)
    data = csv_bytes([["phone", "ten"], ["0912345678", "An"], ["0987654321", "Bình"]])
    assert post_file(client, campaign, "first.csv", data).json()["accepted"] == 2
    return campaign


def numbers(count: int, start: int = 0) -> list[list[str]]:
    return [[f"09{n:08d}", f"Người {n}"] for n in range(start, start + count)]


def test_default_limits_are_a_million_rows_and_200_mb() -> None:
    defaults = Settings()
    assert (defaults.max_upload_rows, defaults.max_upload_bytes) == (1_000_000, 200 * 1024 * 1024)


def test_too_many_rows_is_413_and_takes_back_what_was_written(
    small_limits: TestClient, db: Engine, written: list[int]
) -> None:
    campaign = baseline(small_limits)
    written.clear()
    before = snapshot(db, campaign)
    data = csv_bytes([["phone", "ten"], *numbers(1001)])
    assert len(data) < 64_000
    response = post_file(small_limits, campaign, "big.csv", data)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert "more than 1,000 data rows" in error["message"]
    assert sum(written) >= 900  # chunks had reached the database before the limit was hit
    assert snapshot(db, campaign) == before
    # The limit itself is allowed.
    ok = post_file(small_limits, campaign, "ok.csv", csv_bytes([["phone", "ten"], *numbers(1000)]))
    assert ok.status_code == 200
    assert ok.json()["accepted"] == 1000


def test_too_many_bytes_is_413_before_anything_is_read(small_limits: TestClient, db: Engine) -> None:
    campaign = baseline(small_limits)
    before = snapshot(db, campaign)
    data = csv_bytes([["phone", "ten"], *numbers(3000)])
    assert len(data) > 64_000
    response = post_file(small_limits, campaign, "big.csv", data)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert snapshot(db, campaign) == before


def test_too_many_bytes_without_content_length_is_413(small_limits: TestClient, db: Engine) -> None:
    campaign = baseline(small_limits)
    before = snapshot(db, campaign)
    boundary = "loa-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    body = csv_bytes([["phone", "ten"], *numbers(3000)])
    sent: list[int] = []

    def chunked() -> Iterator[bytes]:  # a generator body goes out with Transfer-Encoding: chunked
        for piece in (
            head,
            *(body[i : i + 8192] for i in range(0, len(body), 8192)),
            f"\r\n--{boundary}--\r\n".encode(),
        ):
            sent.append(len(piece))
            yield piece

    response = small_limits.post(
        f"/v1/campaigns/{campaign}/recipients",
        content=chunked(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert snapshot(db, campaign) == before


def test_a_database_error_halfway_changes_nothing(
    make_settings: Callable[..., Settings], db: Engine, written: list[int]
) -> None:
    with make_client(make_settings(), db) as client:
        campaign = baseline(client)
        written.clear()
        before = snapshot(db, campaign)
        # A real error raised by the database itself, on a row of the fourth chunk.
        poison = "+84900000350"
        with db.begin() as conn:
            if db.dialect.name == "postgresql":
                conn.execute(
                    text(
                        "CREATE FUNCTION loa_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN RAISE EXCEPTION 'refused by test trigger'; END $$"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER loa_test_refuse BEFORE INSERT ON message FOR EACH ROW "
                        f"WHEN (NEW.\"to\" = '{poison}') EXECUTE FUNCTION loa_test_refuse()"
                    )
                )
            else:
                conn.execute(
                    text(
                        "CREATE TRIGGER loa_test_refuse BEFORE INSERT ON message "
                        f"WHEN NEW.\"to\" = '{poison}' BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
                    )
                )
        try:
            response = post_file(client, campaign, "poisoned.csv", csv_bytes([["phone", "ten"], *numbers(600)]))
        finally:
            with db.begin() as conn:
                conn.execute(
                    text("DROP TRIGGER loa_test_refuse" + (" ON message" if db.dialect.name == "postgresql" else ""))
                )
                if db.dialect.name == "postgresql":
                    conn.execute(text("DROP FUNCTION loa_test_refuse"))
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert sum(written) == 300  # three chunks were in before the fourth failed
        assert snapshot(db, campaign) == before
        # Nothing is left half-done: the same file goes in whole now.
        again = post_file(client, campaign, "poisoned.csv", csv_bytes([["phone", "ten"], *numbers(600)]))
        assert again.status_code == 200
        assert again.json()["accepted"] == 600


def test_concurrent_uploads_to_one_campaign_queue_up(make_settings: Callable[..., Settings], db: Engine) -> None:
    with make_client(make_settings(), db) as client:
        campaign = new_campaign(client)
        answers: list[dict[str, Any]] = []
        # Two files overlapping in 500 numbers, posted at the same time.
        files = [
            csv_bytes([["phone", "ten"], *numbers(2000)]),
            csv_bytes([["phone", "ten"], *numbers(2000, start=1500)]),
        ]

        def send(data: bytes) -> None:
            response = post_file(client, campaign, "part.csv", data)
            assert response.status_code == 200, response.text
            answers.append(response.json())

        threads = [threading.Thread(target=send, args=(data,)) for data in files]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 2
        assert sum(a["accepted"] for a in answers) == 3500
        assert sum(a["duplicates"] for a in answers) == 500
        assert client.get(f"/v1/campaigns/{campaign}").json()["counts"]["total"] == 3500


def test_json_uploads_have_their_own_smaller_limit(small_limits: TestClient, db: Engine) -> None:
    campaign = baseline(small_limits)
    before = snapshot(db, campaign)
    big = {"recipients": [{"to": f"09{n:08d}", "fields": {"ten": "x" * 50}} for n in range(1000)]}
    response = small_limits.post(f"/v1/campaigns/{campaign}/recipients", json=big)
    assert response.status_code == 413
    assert "send larger lists as a CSV or XLSX file" in response.json()["error"]["message"]
    assert snapshot(db, campaign) == before
    assert recipients_routes.MAX_JSON_BYTES == 32 * 1024 * 1024


def test_a_repeat_in_a_later_chunk_of_a_new_campaign_is_a_duplicate(
    make_settings: Callable[..., Settings], db: Engine, written: list[int]
) -> None:
    # A new campaign's chunks go in without looking on Postgres: the repeats in the third and
    # fifth chunks trip the unique constraint, and the chunks are moved again looking.
    rows = numbers(500)
    rows[250] = ["0900000007", "again, later"]
    rows[260] = ["0900000255", "same chunk"]
    rows[420] = ["0900000120", "again, two chunks on"]
    with make_client(make_settings(), db) as client:
        campaign = new_campaign(client)
        response = post_file(client, campaign, "repeats.csv", csv_bytes([["phone", "ten"], *rows]))
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["total_rows"], body["accepted"], body["duplicates"]) == (500, 497, 3)
        assert written == [100, 100, 98, 100, 99]
        with db.connect() as conn:
            kept = dict(
                conn.execute(
                    text('SELECT "to", "row" FROM message WHERE campaign_id = :c AND "to" IN (:a, :b, :d)'),
                    {"c": campaign, "a": "+84900000007", "b": "+84900000255", "d": "+84900000120"},
                ).all()
            )
        # The first occurrence in the file is the one kept (spreadsheet rows: data row n is row n + 2).
        assert kept == {"+84900000007": 9, "+84900000255": 257, "+84900000120": 122}
        assert client.get(f"/v1/campaigns/{campaign}").json()["counts"]["total"] == 497
