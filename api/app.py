"""The FastAPI application: routers, the JSON error shape, idempotent POSTs, health and metrics."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import Unauthorized
from api.idempotency import IdempotencyMiddleware
from api.openapi import install_openapi
from api.routes import admin, campaigns, dashboard, messages, recipients, replies, reports, webhooks
from api.state import AppState
from loa.crypto import SecretBox
from loa.db import make_engine
from loa.errors import LoaError
from loa.settings import Settings
from workers.celery_app import configure as configure_celery
from workers.runtime import gateways_for

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def build_state(settings: Settings) -> AppState:
    current, old = settings.secret_keys()
    client = None
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
        configure_celery(settings.redis_url)
    return AppState(
        settings=settings,
        engine=make_engine(settings.effective_database_url),
        gateways=gateways_for(settings),
        box=SecretBox(current, old),
        redis=client,
    )


def create_app(settings: Settings, state: AppState | None = None) -> FastAPI:
    app = FastAPI(
        title="Loa",
        version="0.1.0",
        description="Bulk SMS (SMPP) and email (SMTP) campaigns: waves, credentials, delivery reports. "
        "Authenticate with `Authorization: Bearer <key>`.",
    )
    app.state.loa = state or build_state(settings)
    app.add_middleware(IdempotencyMiddleware)
    for module in (campaigns, recipients, reports, messages, replies, admin, webhooks):
        app.include_router(module.router)
    dashboard.install(app)  # `/`, /static, /v1/me, /metrics
    _install_error_handlers(app)
    install_openapi(app)

    @app.get("/healthz", tags=["health"], summary="Liveness and database reachability (no auth)")
    def healthz() -> dict[str, Any]:
        st: AppState = app.state.loa
        db_ok = True
        try:
            with st.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            db_ok = False
        redis_ok = None
        if st.redis is not None:
            try:
                redis_ok = bool(st.redis.ping())
            except redis.RedisError:
                redis_ok = False
        return {"status": "ok" if db_ok else "degraded", "database": db_ok, "redis": redis_ok}

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoaError)
    async def loa_error(_request: Request, exc: LoaError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(DataError)
    async def data_error(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the client sent (Postgres: a NUL character, a number out of
        # range). The value is not logged: it may be anything, a secret included.
        log.warning("database refused a request value (%s)", type(exc.orig).__name__)
        message = "a value in the request cannot be stored or compared (for example a NUL character)"
        return JSONResponse(error_body("invalid_value", message), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "reason": _reason(e)}
            for e in exc.errors()[:50]
        ]
        first = details[0] if details else {"field": "", "reason": "invalid request"}
        message = f"{first['field']}: {first['reason']}" if first["field"] else first["reason"]
        return JSONResponse(error_body("validation_error", message, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", "internal error; see the server log"), status_code=500)


def _reason(error: dict[str, Any]) -> str:
    """Pydantic's message without its "Value error, " prefix (our validators say it all)."""
    message = str(error.get("msg", ""))
    return message.removeprefix("Value error, ")
