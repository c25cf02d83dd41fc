"""`Idempotency-Key` on POSTs: a replay gets the first answer and does nothing again; the same key
with another request answers 422; failed requests are not kept; uploads are hashed without
their multipart boundary; a created API key is never stored in a replay record."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlmodel import Session

from accounts.models import IdempotencyRecord, Role
from campaigns.models import Campaign
from tests.api.conftest import Api, error_of, ok, recipients
from tests.factories import sms_campaign


def _campaigns(api: Api) -> int:
    with Session(api.engine) as session:
        return int(session.scalar(select(func.count()).select_from(Campaign)) or 0)


def test_a_replay_gets_the_same_answer_and_creates_nothing(api: Api) -> None:
    client = api.client(Role.SENDER)
    headers = {"Idempotency-Key": "create-wave-1"}
    first = client.post("/v1/campaigns", json=sms_campaign(), headers=headers)
    second = client.post("/v1/campaigns", json=sms_campaign(), headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert _campaigns(api) == 1
    third = client.post("/v1/campaigns", json=sms_campaign(), headers={"Idempotency-Key": "create-wave-2"})
    assert third.json()["id"] != first.json()["id"]
    assert _campaigns(api) == 2


def test_the_same_key_with_another_body_or_path_answers_422(api: Api) -> None:
    client = api.client(Role.SENDER)
    headers = {"Idempotency-Key": "k-1"}
    ok(client.post("/v1/campaigns", json=sms_campaign(name="Wave A"), headers=headers), 201)
    # Same length, other content: a length-only fingerprint would wrongly replay this.
    error = error_of(client.post("/v1/campaigns", json=sms_campaign(name="Wave B"), headers=headers), 422)
    assert error["code"] == "idempotency_key_reused"
    cid = ok(client.get("/v1/campaigns"))["items"][0]["id"]
    error = error_of(client.post(f"/v1/campaigns/{cid}/cancel", headers=headers), 422)
    assert error["code"] == "idempotency_key_reused"
    assert _campaigns(api) == 1
    assert ok(client.get(f"/v1/campaigns/{cid}"))["status"] == "draft"


def test_keys_belong_to_the_organisation(api: Api) -> None:
    headers = {"Idempotency-Key": "shared-name"}
    a = ok(api.client(Role.SENDER, org="a").post("/v1/campaigns", json=sms_campaign(), headers=headers), 201)
    b = ok(api.client(Role.SENDER, org="b").post("/v1/campaigns", json=sms_campaign(), headers=headers), 201)
    assert a["id"] != b["id"]


def test_a_failed_request_is_not_kept_so_its_retry_runs(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    headers = {"Idempotency-Key": "launch-wave-1"}
    assert error_of(client.post(f"/v1/campaigns/{cid}/launch", headers=headers), 409)["code"] == "no_recipients"
    ok(client.post(f"/v1/campaigns/{cid}/recipients", json=recipients(2)))
    launched = client.post(f"/v1/campaigns/{cid}/launch", headers=headers)
    assert ok(launched)["status"] == "running"
    replay = client.post(f"/v1/campaigns/{cid}/launch", headers=headers)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert client.post(f"/v1/campaigns/{cid}/launch").status_code == 409  # without the key: the real answer


def test_an_upload_replay_ignores_the_multipart_boundary(api: Api) -> None:
    client = api.client(Role.SENDER)
    cid = ok(client.post("/v1/campaigns", json=sms_campaign()), 201)["id"]
    csv = "phone,ten\n0961000001,An\n0961000002,Bình\n".encode()
    path = f"/v1/campaigns/{cid}/recipients"
    answers = []
    for boundary in ("boundary-one-1111", "other-boundary-22"):
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="r.csv"\r\n'
                f"Content-Type: text/csv\r\n\r\n"
            ).encode()
            + csv
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Idempotency-Key": "upload-1", "Content-Type": f"multipart/form-data; boundary={boundary}"}
        answers.append(client.post(path, content=body, headers=headers))
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[1].json() == answers[0].json()
    assert answers[1].headers["idempotent-replayed"] == "true"
    assert ok(client.get(f"/v1/campaigns/{cid}"))["counts"]["total"] == 2


def test_a_created_api_key_is_never_kept_for_replay(api: Api) -> None:
    admin = api.client(Role.ADMIN)
    headers = {"Idempotency-Key": "new-operator"}
    first = ok(admin.post("/v1/keys", json={"role": "operator"}, headers=headers), 201)
    replay = ok(admin.post("/v1/keys", json={"role": "operator"}, headers=headers), 201)
    assert replay["id"] == first["id"]
    assert replay["key"] is None
    assert "shown only in the first answer" in replay["key_note"]
    with Session(api.engine) as session:
        stored = " ".join(str(row) for row in session.execute(text("SELECT * FROM idempotency_record")))
    assert first["key"] not in stored
    assert len(ok(admin.get("/v1/keys"))["items"]) == 2  # the admin's own key and this one


def test_a_concurrent_twin_is_told_to_wait(api: Api) -> None:
    client = api.client(Role.SENDER)
    org_id = ok(client.get("/v1/org"))["id"]
    with Session(api.engine) as session:  # the first request is still running: its pending record
        session.add(IdempotencyRecord(org_id=org_id, key="busy", request_hash="", status_code=0, body=""))
        session.commit()
    error = error_of(client.post("/v1/campaigns", json=sms_campaign(), headers={"Idempotency-Key": "busy"}), 409)
    assert error["code"] == "idempotency_in_progress"
    assert _campaigns(api) == 0


def test_parallel_retries_create_one_campaign(api: Api) -> None:
    results: list[int] = []
    clients = [api.client(Role.SENDER) for _ in range(4)]  # one key, one client per thread

    def post(client: TestClient) -> None:
        response = client.post("/v1/campaigns", json=sms_campaign(), headers={"Idempotency-Key": "race"})
        results.append(response.status_code)

    threads = [threading.Thread(target=post, args=(client,)) for client in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _campaigns(api) == 1
    assert set(results) <= {201, 409}
    assert 201 in results


def test_malformed_keys_answer_422(api: Api) -> None:
    client = api.client(Role.SENDER)
    error = error_of(client.post("/v1/campaigns", json=sms_campaign(), headers={"Idempotency-Key": "x" * 201}), 422)
    assert error["code"] == "validation_error"
    assert _campaigns(api) == 0
