"""`Idempotency-Key` on POSTs: the first answer (status and JSON body) is stored per organisation
and key; a retry with the same key gets the same answer without doing the work again. A reuse of
the key for a different request is refused with 422."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from accounts.models import IdempotencyRecord
from accounts.service import authenticate
from loa.timeutil import utcnow

HEADER = "idempotency-key"
KEEP = timedelta(hours=24)
MAX_BODY = 1_000_000


class IdempotencyMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        key = request.headers.get(HEADER)
        if request.method != "POST" or not key:
            return await call_next(request)
        if len(key) > 200:
            return JSONResponse(
                {"error": {"code": "validation_error", "message": "Idempotency-Key is longer than 200"}},
                status_code=422,
            )
        engine = request.app.state.loa.engine
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        with Session(engine) as session:
            caller = authenticate(session, token) if token else None
        if caller is None:
            return await call_next(request)  # the route answers 401 itself
        fingerprint = hashlib.sha256(
            f"{request.method} {request.url.path} {request.headers.get('content-length', '')}".encode()
        ).hexdigest()
        with Session(engine) as session:
            session.execute(delete(IdempotencyRecord).where(col(IdempotencyRecord.created_at) < utcnow() - KEEP))
            session.commit()
            found = session.scalars(
                select(IdempotencyRecord).where(
                    col(IdempotencyRecord.org_id) == caller.org_id, col(IdempotencyRecord.key) == key
                )
            ).first()  # type: ignore[arg-type]
        if found is not None:
            if found.request_hash != fingerprint:
                return JSONResponse(
                    {
                        "error": {
                            "code": "idempotency_key_reused",
                            "message": "this Idempotency-Key was used for a different request",
                        }
                    },
                    status_code=422,
                )
            return Response(
                found.body,
                status_code=found.status_code,
                media_type="application/json",
                headers={"Idempotent-Replay": "true"},
            )
        response = await call_next(request)
        if response.status_code >= 500 or "json" not in response.headers.get("content-type", ""):
            return response
        chunks = [chunk async for chunk in response.body_iterator]  # type: ignore[attr-defined]
        body = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks)
        if len(body) <= MAX_BODY:
            with Session(engine) as session:
                session.add(
                    IdempotencyRecord(
                        org_id=caller.org_id,
                        key=key,
                        request_hash=fingerprint,
                        status_code=response.status_code,
                        body=body.decode(),
                    )
                )
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()  # a concurrent twin stored it first
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return Response(body, status_code=response.status_code, headers=headers)
