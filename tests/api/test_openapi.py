"""The OpenAPI document covers every route with an example answer, documents our error shape on
every error response, and declares the bearer scheme; /docs serves it. Unknown routes and
methods answer with the same error shape as everything else."""

from __future__ import annotations

from typing import Any

from accounts.models import Role
from tests.api.conftest import Api, error_of

METHODS = ("get", "post", "put", "patch", "delete")


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items() if m in METHODS]


def test_every_operation_has_an_example_answer(api: Api) -> None:
    missing = []
    for method, path, op in _operations(api.app.openapi()):
        success = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert success, (method, path)
        for code, response in success.items():
            content = response.get("content")
            if code == "204":
                continue
            if not content:
                missing.append(f"{method.upper()} {path} {code}: no content")
                continue
            described = any(
                "example" in media or "examples" in media or media.get("schema", {}).get("format") == "binary"
                for media in content.values()
            )
            if not described:
                missing.append(f"{method.upper()} {path} {code}")
    assert not missing, "routes without an example answer:\n" + "\n".join(missing)


def test_every_request_body_has_an_example(api: Api) -> None:
    missing = []
    for method, path, op in _operations(api.app.openapi()):
        body = op.get("requestBody")
        if body is None:
            continue
        for media_type, media in body["content"].items():
            if "example" not in media and "examples" not in media and media_type != "message/rfc822":
                missing.append(f"{method.upper()} {path} {media_type}")
    assert not missing, "request bodies without an example:\n" + "\n".join(missing)


def test_errors_are_documented_with_our_shape(api: Api) -> None:
    doc = api.app.openapi()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["Error"]["required"] == ["error"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path, op in _operations(doc):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        if path.startswith("/v1/"):
            assert {"401", "403"} <= set(errors), (method, path)
            assert op.get("security"), (method, path)
        for response in errors.values():
            media = response["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/Error"}
            assert set(media["example"]) == {"error"}
    launch = doc["paths"]["/v1/campaigns/{campaign_id}/launch"]["post"]["responses"]
    assert {"401", "403", "404", "409"} <= set(launch)


def test_docs_are_served(api: Api) -> None:
    client = api.anonymous()
    page = client.get("/docs")
    assert page.status_code == 200
    assert "swagger" in page.text.lower()
    assert client.get("/openapi.json").json()["info"]["title"] == "Loa"


def test_unknown_routes_and_methods_use_the_error_shape(api: Api) -> None:
    client = api.client(Role.ADMIN)
    assert error_of(client.get("/v1/nothing-here"), 404)["code"] == "not_found"
    assert error_of(client.put("/v1/campaigns"), 405)["code"] == "method_not_allowed"
    bad_json = client.post("/v1/campaigns", content=b"{not json", headers={"Content-Type": "application/json"})
    assert error_of(bad_json, 422)["code"] == "validation_error"
