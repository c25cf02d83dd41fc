"""FastAPI dependencies: the request's database session (owns commit/rollback), the API key
behind the bearer token, and role checks.

Roles: `admin` does everything (keys, organisation settings, gateways, audit); `sender` creates,
uploads, launches, pauses, resumes and cancels; `operator` only reads (campaigns, messages,
reports). Secret fields are never returned to anyone, so no role check is needed for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from accounts.models import ApiKey, Organisation, Role
from accounts.service import authenticate
from api.state import AppState
from loa.errors import Forbidden, LoaError
from loa.timeutil import utcnow

LAST_USED_GRANULARITY_S = 60


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


# scope="function": commit (or roll back) when the route returns, before the response is sent. With
# the default ("request") the commit would run after the client already has its 200, which could
# then read stale data or never learn that the commit failed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    org: Organisation

    @property
    def role(self) -> Role:
        return self.key.role


# Declares the scheme in the OpenAPI document (the "Authorize" button of /docs); the check itself
# is ours, so a missing or malformed header answers our 401, not FastAPI's 403.
_bearer_scheme = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer loa_…`")


def bearer(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]) -> str:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <key>)")
    return credentials.credentials.strip()


def get_caller(token: Annotated[str, Depends(bearer)], session: SessionDep) -> Caller:
    key = authenticate(session, token)
    if key is None:
        raise Unauthorized("invalid or revoked API key")
    org = session.get(Organisation, key.org_id)
    if org is None:  # the foreign key makes this impossible; never let it become a 500
        raise Unauthorized("the key's organisation does not exist")
    now = utcnow()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > LAST_USED_GRANULARITY_S:
        key.last_used_at = now  # at most once a minute: no hot row per request
    return Caller(key=key, org=org)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require(*roles: Role) -> Callable[[Caller], Caller]:
    def check(caller: CallerDep) -> Caller:
        if caller.role not in roles:
            allowed = " or ".join(r.value for r in roles)
            raise Forbidden(
                f"this needs the role {allowed}; the key is {caller.role.value}",
                {"role": caller.role.value, "allowed": [r.value for r in roles]},
            )
        return caller

    return check


AnyRole = Annotated[Caller, Depends(require(Role.ADMIN, Role.SENDER, Role.OPERATOR))]
Sender = Annotated[Caller, Depends(require(Role.ADMIN, Role.SENDER))]
Admin = Annotated[Caller, Depends(require(Role.ADMIN))]
