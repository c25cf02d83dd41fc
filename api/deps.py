"""FastAPI dependencies: the request's database session (owns commit/rollback), the API key
behind the bearer token, and role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from accounts.models import ApiKey, Organisation, Role
from accounts.service import authenticate
from api.state import AppState
from loa.errors import Forbidden, LoaError
from loa.timeutil import utcnow


class Unauthorized(LoaError):
    status_code = 401
    code = "unauthorized"


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.loa
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with Session(state.engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# scope="function": commit (or roll back) when the route returns, before the response is sent, so
# a client that reads right after a 2xx sees what it wrote.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    org: Organisation

    @property
    def role(self) -> Role:
        return self.key.role


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <key>)")
    return token.strip()


def get_caller(request: Request, session: SessionDep) -> Caller:
    key = authenticate(session, bearer(request))
    if key is None:
        raise Unauthorized("invalid or revoked API key")
    org = session.get(Organisation, key.org_id)
    assert org is not None
    now = utcnow()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        key.last_used_at = now  # at most once a minute: no hot row per request
    return Caller(key=key, org=org)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require(*roles: Role) -> Callable[[Caller], Caller]:
    def check(caller: CallerDep) -> Caller:
        if caller.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"this needs the role {allowed}; the key is {caller.role.value}")
        return caller

    return check


AnyRole = Annotated[Caller, Depends(require(Role.ADMIN, Role.SENDER, Role.OPERATOR))]
Sender = Annotated[Caller, Depends(require(Role.ADMIN, Role.SENDER))]
Admin = Annotated[Caller, Depends(require(Role.ADMIN))]
