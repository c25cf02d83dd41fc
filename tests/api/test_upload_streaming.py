"""Uploads over a real HTTP server (uvicorn on loopback): the file is imported while it arrives,
a refused file is answered without breaking the connection, and a client that goes away halfway
leaves nothing behind."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from accounts.models import Role
from api.app import create_app
from campaigns import recipients
from campaigns.staging import open_writer
from loa.settings import Settings
from tests.api.test_upload import csv_bytes
from tests.api.test_upload_bad_input import snapshot
from tests.conftest import wait_for
from tests.factories import make_key, sms_campaign

BOUNDARY = "loa-stream-test"


@pytest.fixture
def server(settings: Settings, db: Engine) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: instance.started, timeout=20, what="uvicorn started")
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(20)
    app.state.loa.engine.dispose()


@pytest.fixture
def client(server: str, db: Engine) -> Iterator[httpx.Client]:
    key = make_key(db, Role.SENDER)
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        yield c


@pytest.fixture
def chunks_written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setattr(recipients, "CHUNK", 100)
    written: list[int] = []

    def spying_open(*args: Any) -> Any:
        writer = open_writer(*args)
        real = writer.write

        def write(rows: Any) -> int:
            written.append(len(rows))
            return real(rows)

        writer.write = write  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(recipients, "open_writer", spying_open)
    return written


def multipart(parts: Iterator[bytes], name: str = "list.csv") -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    yield from parts
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def post_stream(client: httpx.Client, campaign: str, body: Iterator[bytes]) -> httpx.Response:
    return client.post(
        f"/v1/campaigns/{campaign}/recipients",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


def new_campaign(client: httpx.Client) -> str:
    return str(client.post("/v1/campaigns", json=sms_campaign()).json()["id"])


def rows(start: int, count: int) -> bytes:
    return csv_bytes([[f"09{n:08d}", f"Người {n}"] for n in range(start, start + count)])


def test_rows_are_stored_while_the_file_is_still_arriving(client: httpx.Client, chunks_written: list[int]) -> None:
    campaign = new_campaign(client)
    overlap: list[bool] = []

    def body() -> Iterator[bytes]:
        first = csv_bytes([["phone", "ten"]]) + rows(0, 5000)
        assert len(first) > 64 * 1024  # more than the part the server looks at before reading rows
        yield first
        # Hold the rest back until the server has stored a chunk of what it already has.
        deadline = time.monotonic() + 20
        while not chunks_written and time.monotonic() < deadline:
            time.sleep(0.02)
        overlap.append(bool(chunks_written))
        yield rows(5000, 1000)

    response = post_stream(client, campaign, multipart(body()))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 6000
    assert overlap == [True]


def test_a_refused_file_is_answered_while_the_client_is_still_sending(client: httpx.Client, db: Engine) -> None:
    campaign = new_campaign(client)
    sent: list[int] = []

    def body() -> Iterator[bytes]:
        yield b"so_dien_thoai,ten\r\n"  # no phone column: refused at once
        for n in range(50):
            sent.append(n)
            yield rows(n * 2000, 2000)

    response = post_stream(client, campaign, multipart(body()))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "missing_column"
    assert len(sent) == 50  # the body was read to its end, not cut off


def test_a_client_that_goes_away_halfway_leaves_nothing(
    client: httpx.Client, db: Engine, chunks_written: list[int], server: str
) -> None:
    campaign = new_campaign(client)
    assert post_stream(client, campaign, multipart(iter([csv_bytes([["phone", "ten"], ["0912345678", "An"]])])))
    before = snapshot(db, campaign)

    def body() -> Iterator[bytes]:
        yield csv_bytes([["phone", "ten"]]) + rows(0, 5000)
        wait_for(lambda: chunks_written, timeout=20, what="a chunk stored")
        raise ConnectionAbortedError("the client gives up")

    with pytest.raises(ConnectionAbortedError):
        post_stream(client, campaign, multipart(body()))
    # The server notices, rolls back, and goes on serving.
    wait_for(lambda: snapshot(db, campaign) == before, timeout=20, what="the half upload rolled back")
    again = post_stream(client, campaign, multipart(iter([csv_bytes([["phone", "ten"]]) + rows(0, 10)])))
    assert again.json()["accepted"] == 10


def test_malformed_multipart_is_refused(client: httpx.Client, make_settings: Callable[..., Settings]) -> None:
    campaign = new_campaign(client)
    response = client.post(
        f"/v1/campaigns/{campaign}/recipients",
        content=b"--other\r\nnot a part\r\n",
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 422
    no_file = client.post(
        f"/v1/campaigns/{campaign}/recipients",
        content=f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--{BOUNDARY}--\r\n',
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert no_file.status_code == 422
    assert "'file' part" in no_file.json()["error"]["message"]
