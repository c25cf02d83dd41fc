"""The OpenAPI document served at `/openapi.json` (and `/docs`): FastAPI's, plus what it cannot
know: our error shape on every error response (FastAPI would document its own `{"detail"}` for
422), an example answer per route, and the bodies that routes read themselves."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.openapi_examples import ERROR_EXAMPLES, REQUEST_BODIES, REQUEST_EXAMPLES, RESPONSES

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "snake_case, e.g. not_found, invalid_transition"},
                "message": {"type": "string", "description": "one sentence for people"},
                "details": {"description": "what is at fault: fields, current status, characters, ..."},
            },
        }
    },
}
_LIFECYCLE = re.compile(r"/(launch|pause|resume|cancel|approve|recipients|test)$")
_METHODS = ("get", "post", "put", "patch", "delete")


def _errors_for(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    codes = ["401", "403"] if path.startswith("/v1/") else []
    if "{" in path:
        codes.append("404")
    if _LIFECYCLE.search(path) or (method in ("patch", "delete") and path.startswith("/v1/campaigns/")):
        codes.append("409")
    if path.endswith("/recipients"):
        codes.append("413")
    if operation.get("parameters") or operation.get("requestBody") or method in ("post", "patch"):
        codes.append("422")
    return codes


def _request_example(schema: dict[str, Any], body: dict[str, Any]) -> None:
    """Copy the first `examples` entry of a request body's schema to the media type's `example`,
    where Swagger UI and client generators look for it."""
    for media in body.get("content", {}).values():
        if "example" in media or "examples" in media:
            continue
        ref = media.get("schema", {}).get("$ref", "")
        if not ref:
            for option in media.get("schema", {}).get("anyOf", []):
                ref = option.get("$ref", ref)
        component = schema["components"]["schemas"].get(ref.rpartition("/")[2], {})
        if component.get("examples"):
            media["example"] = component["examples"][0]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    # The JSON form of an upload is read by the route itself; its model still documents it.
    from campaigns.schemas import RecipientsIn

    recipients = RecipientsIn.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in recipients.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault("RecipientsIn", recipients)
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            if (method, path) in REQUEST_BODIES and "requestBody" not in operation:
                operation["requestBody"] = REQUEST_BODIES[(method, path)]
            if "requestBody" in operation:
                for media_type, example in REQUEST_EXAMPLES.get((method, path), {}).items():
                    media = operation["requestBody"]["content"].get(media_type)
                    if media is not None:
                        media.setdefault("example", example)
                _request_example(schema, operation["requestBody"])
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if (method, path) in RESPONSES:
                status, media_type, example = RESPONSES[(method, path)]
                answer = responses.setdefault(status, {"description": "OK"})
                content = answer.setdefault("content", {})
                if media_type != "application/json":
                    content.pop("application/json", None)
                if example is None:  # a binary download: the schema says what it is
                    content[media_type] = {"schema": {"type": "string", "format": "binary"}}
                else:
                    content.setdefault(media_type, {"schema": {"type": "string"}})["example"] = example
            for code in _errors_for(path, method, operation):
                description, body = ERROR_EXAMPLES[code]
                responses[code] = {
                    "description": description,
                    "content": {"application/json": {"schema": ERROR_REF, "example": {"error": body}}},
                }
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
