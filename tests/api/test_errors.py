"""The API's error shape for the foundation's bad input: unknown ids, malformed JSON, no key."""

from __future__ import annotations

from fastapi.testclient import TestClient

from accounts.models import Role
from api.app import create_app
from loa.settings import Settings
from tests.factories import make_key, sms_campaign


def client_for(settings: Settings, role: Role = Role.SENDER) -> TestClient:
    key = make_key(create_app(settings).state.loa.engine, role)
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"})


def test_unknown_campaign_is_404_with_the_json_error_body(settings: Settings) -> None:
    resp = client_for(settings).get("/v1/campaigns/cmp_doesnotexist")
    assert resp.status_code == 404
    assert resp.json() == {"error": {"code": "not_found", "message": "campaign cmp_doesnotexist not found"}}


def test_malformed_json_is_422_naming_the_field(settings: Settings) -> None:
    client = client_for(settings)
    resp = client.post("/v1/campaigns", json={**sms_campaign(), "channel": "fax"})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "channel"
    raw = client.post("/v1/campaigns", content=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 422
    assert raw.json()["error"]["code"] == "validation_error"


def test_missing_or_wrong_key_is_401(settings: Settings) -> None:
    app = create_app(settings)
    assert TestClient(app).get("/v1/campaigns").json()["error"]["code"] == "unauthorized"
    wrong = TestClient(app, headers={"Authorization": "Bearer loa_nope"}).get("/v1/campaigns")
    assert wrong.status_code == 401


def test_operator_cannot_create_campaigns(settings: Settings) -> None:
    resp = client_for(settings, Role.OPERATOR).post("/v1/campaigns", json=sms_campaign())
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "forbidden"
