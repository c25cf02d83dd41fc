"""Property-based run over the whole OpenAPI document (schemathesis, in-process ASGI, real
database): no generated request may get a 5xx, and every error answer has our error shape.

Half the generated path ids are replaced by real ones (a draft SMS campaign with recipients, an
email campaign, a message, a key), so the runs reach the handlers instead of stopping at 404.
The run is derandomised (same examples every time, so a failure reproduces); raise
LOA_SCHEMATHESIS_EXAMPLES (and set LOA_SCHEMATHESIS_RANDOM=1) to explore more."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.internal.result import Ok
from schemathesis.serializers import Serializer

from accounts.models import Role
from loa.settings import Settings
from tests.factories import email_campaign, make_key, sms_campaign

EXAMPLES = int(os.environ.get("LOA_SCHEMATHESIS_EXAMPLES", "12"))


@schemathesis.serializer("message/rfc822")
class RawMessage(Serializer):  # type: ignore[misc]
    """Bounces are raw RFC 822 messages; the generated value is a string."""

    def as_requests(self, context: Any, value: Any) -> dict[str, Any]:
        return {"data": str(value).encode("utf-8", "surrogatepass")}

    def as_werkzeug(self, context: Any, value: Any) -> dict[str, Any]:
        return {"data": str(value).encode("utf-8", "surrogatepass")}


@pytest.fixture
def world(
    settings: Settings, db: Any, make_app: Callable[[Settings], FastAPI]
) -> tuple[FastAPI, str, dict[str, list[str]]]:
    app = make_app(settings)
    key = make_key(db, Role.ADMIN)
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    sms = client.post("/v1/campaigns", json=sms_campaign()).json()["id"]
    rows = [{"to": f"09123456{i:02d}", "fields": {"ten": f"Người {i}"}} for i in range(5)]
    assert client.post(f"/v1/campaigns/{sms}/recipients", json={"recipients": rows}).status_code == 200
    email = client.post("/v1/campaigns", json=email_campaign()).json()["id"]
    message = client.get(f"/v1/campaigns/{sms}/messages").json()["items"][0]["id"]
    other_key = client.post("/v1/keys", json={"role": "operator"}).json()["id"]
    ids = {
        "campaign_id": [sms, email],
        "message_id": [message],
        "key_id": [other_key],
        "address": ["0912345600"],
        "number": ["0912345601"],
    }
    return app, key, ids


def _with_real_ids(case: Any, ids: dict[str, list[str]], pick: int) -> Any:
    for name in list(case.path_parameters or {}):
        if name in ids:
            case.path_parameters[name] = ids[name][pick % len(ids[name])]
    return case


def _error_shape_problem(response: Any) -> str | None:
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return "error answer is not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), str)
        or not isinstance(error.get("message"), str)
    ):
        return f"error answer without {{error: {{code, message}}}}: {str(body)[:200]}"
    return None


def test_no_generated_request_gets_a_5xx(world: tuple[FastAPI, str, dict[str, list[str]]]) -> None:
    app, key, ids = world
    # 3.1 is what FastAPI writes; schemathesis 3 generates from it fine when told to read it as 3.0.
    schema = schemathesis.from_dict(app.openapi(), app=app, force_schema_version="30")
    headers = {"Authorization": f"Bearer {key}"}
    problems: list[str] = []
    operations = 0
    logging.disable(logging.ERROR)  # expected tracebacks would drown the report; failures list them
    try:
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                problems.append(f"the document has an operation schemathesis cannot read: {result.err()}")
                continue
            operation = result.ok()
            operations += 1
            base = operation.as_strategy()
            real = st.tuples(base, st.integers(0, 1)).map(lambda pair: _with_real_ids(pair[0], ids, pair[1]))
            strategy = st.one_of(base, real)

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=os.environ.get("LOA_SCHEMATHESIS_RANDOM") != "1",
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                try:
                    response = case.call(headers=headers)
                except httpx.InvalidURL:
                    return  # a control character in the path: no HTTP client can send it
                where = f"{case.method} {case.formatted_path} query={case.query} body={str(case.body)[:200]}"
                if response.status_code >= 500:
                    problems.append(f"{response.status_code} {where}: {response.text[:200]}")
                elif (problem := _error_shape_problem(response)) is not None:
                    problems.append(f"{problem} ({where})")

            run()
    finally:
        logging.disable(logging.NOTSET)
    assert operations >= 30, f"only {operations} operations in the OpenAPI document"
    assert not problems, "\n".join(problems[:20])
