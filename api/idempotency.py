"""`Idempotency-Key` on POSTs: a retry with the same key and the same request gets the first
answer again (status and JSON body, with `Idempotent-Replayed: true`) without doing the work again;
the same key with a different request (another path or body) answers 422.

How it holds under retries and races:
- Before the request runs, a pending record (organisation, key) is inserted and committed. Its
  unique constraint makes a concurrent twin answer 409 `idempotency_in_progress` instead of
  running twice. A pending record older than `STALE` (its process died) is taken over.
- The body is hashed as it streams into the route (uploads are never held in memory). For
  multipart bodies the boundary is left out of the hash: a client library picks a new random
  boundary on every retry of the same file.
- Only a successful (2xx) JSON answer is kept, for `KEEP`. A failed request changed nothing (its
  transaction rolled back), so its retry runs again: a launch refused for a missing approval can
  be retried with the same key once approved.
- A plain API key is never stored: the `key` of a created key is replaced by null in the stored
  copy (it is shown once; a replay says so).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accounts.models import IdempotencyRecord
from accounts.service import authenticate
from loa.timeutil import utcnow

log = logging.getLogger(__name__)

HEADER = "idempotency-key"
REPLAY_HEADER = "Idempotent-Replayed"
KEEP = timedelta(hours=24)
STALE = timedelta(minutes=15)
MAX_KEY = 200
MAX_STORED_BODY = 1_000_000
PREREAD = 1_000_000  # bodies up to this size are read before the route runs
PENDING = 0  # status_code of a record whose request is still running
# Paths whose answer carries a secret shown once: stored with these JSON fields set to null.
SHOWN_ONCE = {"/v1/keys": ("key",)}


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class _BodyHash:
    """SHA-256 of a request: method, path, query and the body with the multipart boundary removed."""

    def __init__(self, scope: Scope, content_type: str) -> None:
        self._hash = hashlib.sha256()
        for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1")):
            self._hash.update(part.encode() + b"\n")
        boundary = ""
        if content_type.lower().startswith("multipart/"):
            for param in content_type.split(";")[1:]:
                name, _, value = param.strip().partition("=")
                if name.lower() == "boundary":
                    boundary = value.strip('"')
        self._boundary = boundary.encode("latin-1")
        self._tail = b""
        self.complete = False

    def feed(self, chunk: bytes, more: bool) -> None:
        data = self._tail + chunk
        if self._boundary:
            data = data.replace(self._boundary, b"")
            # Keep what could be the start of a boundary split across two chunks.
            keep = 0 if not more else min(len(data), len(self._boundary) - 1)
            self._tail, data = data[len(data) - keep :], data[: len(data) - keep]
        self._hash.update(data)
        if not more:
            self._hash.update(self._tail)
            self._tail = b""
            self.complete = True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass
class _Captured:
    status: int = 0
    json: bool = False
    body: list[bytes] = field(default_factory=list)
    size: int = 0


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = headers.get(HEADER)
        if key is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY or not key.isprintable():
            await _error(422, "validation_error", f"Idempotency-Key must be 1-{MAX_KEY} printable characters")(
                scope, receive, send
            )
            return
        engine: Engine = scope["app"].state.loa.engine
        scheme, _, token = headers.get("authorization", "").partition(" ")
        org_id = await run_in_threadpool(_org_of, engine, token.strip()) if scheme.lower() == "bearer" else None
        if org_id is None:
            await self.app(scope, receive, send)  # the route answers 401 itself
            return
        fingerprint = _BodyHash(scope, headers.get("content-type", ""))
        receive = await _preread(headers, fingerprint, receive)
        found = await run_in_threadpool(_claim, engine, org_id, key)
        if found is not None:
            await self._answer_existing(found, fingerprint, scope, receive, send)
            return
        await self._run_first(engine, org_id, key, fingerprint, scope, receive, send)

    async def _answer_existing(
        self, found: IdempotencyRecord, fingerprint: _BodyHash, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if found.status_code == PENDING:
            response = _error(
                409, "idempotency_in_progress", "a request with this Idempotency-Key is still running; retry later"
            )
            await response(scope, receive, send)
            return
        while not fingerprint.complete:  # hash the retry's body without keeping it
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            fingerprint.feed(message.get("body", b""), message.get("more_body", False))
        if fingerprint.hexdigest() != found.request_hash:
            response = _error(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request (path or body); use a new key",
            )
        else:
            response = Response(
                found.body,
                status_code=found.status_code,
                media_type="application/json",
                headers={REPLAY_HEADER: "true"},
            )
        await response(scope, receive, send)

    async def _run_first(
        self,
        engine: Engine,
        org_id: str,
        key: str,
        fingerprint: _BodyHash,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        captured = _Captured()

        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not fingerprint.complete:
                fingerprint.feed(message.get("body", b""), message.get("more_body", False))
            return message

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured.status = message["status"]
                ctype = Headers(raw=message.get("headers", [])).get("content-type", "")
                captured.json = ctype.startswith("application/json")
            elif message["type"] == "http.response.body" and captured.size <= MAX_STORED_BODY:
                chunk = message.get("body", b"")
                captured.body.append(chunk)
                captured.size += len(chunk)
            await send(message)

        keep = False
        try:
            await self.app(scope, hashing_receive, capturing_send)
            # A large body the route did not read to the end cannot be compared later: not kept.
            keep = (
                fingerprint.complete
                and 200 <= captured.status < 300
                and captured.json
                and captured.size <= MAX_STORED_BODY
            )
        finally:
            body = b"".join(captured.body) if keep else b""
            await run_in_threadpool(
                _finish, engine, org_id, key, fingerprint.hexdigest(), captured.status, body, scope["path"], keep
            )


async def _preread(headers: Headers, fingerprint: _BodyHash, receive: Receive) -> Receive:
    """Hash an empty or small body now (a route without a body parameter never reads it); larger
    ones are hashed as the route streams them."""
    length = headers.get("content-length")
    if length is None and "chunked" not in headers.get("transfer-encoding", "").lower():
        fingerprint.feed(b"", False)
        return receive
    if length is None or not length.isdigit() or int(length) > PREREAD:
        return receive
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break  # disconnected: the route will see it too
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    fingerprint.feed(body, False)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _org_of(engine: Engine, token: str) -> str | None:
    if not token:
        return None
    with Session(engine) as session:
        record = authenticate(session, token)
        return record.org_id if record is not None else None


def _claim(engine: Engine, org_id: str, key: str) -> IdempotencyRecord | None:
    """Insert a pending record for (org, key); return the existing one if there is one."""
    now = utcnow()
    with Session(engine, expire_on_commit=False) as session:
        session.execute(delete(IdempotencyRecord).where(col(IdempotencyRecord.created_at) < now - KEEP))
        session.execute(
            delete(IdempotencyRecord).where(
                col(IdempotencyRecord.org_id) == org_id,
                col(IdempotencyRecord.key) == key,
                col(IdempotencyRecord.status_code) == PENDING,
                col(IdempotencyRecord.created_at) < now - STALE,
            )
        )
        session.add(IdempotencyRecord(org_id=org_id, key=key, request_hash="", status_code=PENDING, body=""))
        try:
            session.commit()
            return None
        except IntegrityError:
            session.rollback()
        found = session.scalars(
            select(IdempotencyRecord).where(col(IdempotencyRecord.org_id) == org_id, col(IdempotencyRecord.key) == key)
        ).first()
        if found is None:  # it expired between our insert and this read: treat as in progress
            return IdempotencyRecord(org_id=org_id, key=key, request_hash="", status_code=PENDING, body="")
        return found


def _finish(
    engine: Engine, org_id: str, key: str, request_hash: str, status: int, body: bytes, path: str, keep: bool
) -> None:
    where = (
        col(IdempotencyRecord.org_id) == org_id,
        col(IdempotencyRecord.key) == key,
        col(IdempotencyRecord.status_code) == PENDING,
    )
    with Session(engine) as session:
        if keep:
            session.execute(
                update(IdempotencyRecord)
                .where(*where)
                .values(request_hash=request_hash, status_code=status, body=_storable(path, body))
            )
        else:
            session.execute(delete(IdempotencyRecord).where(*where))
        session.commit()


def _storable(path: str, body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    hidden = SHOWN_ONCE.get(path)
    if not hidden:
        return text
    try:
        data: Any = json.loads(text)
    except ValueError:
        return ""
    if isinstance(data, dict):
        for name in hidden:
            if name in data:
                data[name] = None
        data["key_note"] = "the key is shown only in the first answer; revoke this one and create another if lost"
    return json.dumps(data)
