"""Fixtures for API tests: the real app (real database, real Redis) and clients holding keys of a
given role in a given organisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from accounts.models import Role
from api.app import create_app
from loa.settings import Settings
from tests.factories import make_key


@dataclass
class Api:
    """Builds clients on one app: `api.client(Role.SENDER, org="b")`."""

    app: FastAPI
    engine: Engine
    keys: dict[tuple[Role, str, str], str] = field(default_factory=dict)

    def key(self, role: Role = Role.ADMIN, org: str = "org-a", name: str = "test") -> str:
        if (role, org, name) not in self.keys:
            self.keys[(role, org, name)] = make_key(self.engine, role, org=org, name=name)
        return self.keys[(role, org, name)]

    def client(self, role: Role = Role.ADMIN, org: str = "org-a", name: str = "test") -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {self.key(role, org, name)}"})

    def anonymous(self) -> TestClient:
        return TestClient(self.app)


@pytest.fixture
def make_app() -> Iterator[Callable[[Settings], FastAPI]]:
    """Apps built for one test; their engines and Redis clients are closed after it (an app
    left open keeps its pooled Postgres connections until garbage collection)."""
    apps: list[FastAPI] = []

    def build(settings: Settings) -> FastAPI:
        apps.append(create_app(settings))
        return apps[-1]

    yield build
    for app in apps:
        app.state.loa.engine.dispose()
        if app.state.loa.redis is not None:
            app.state.loa.redis.close()


@pytest.fixture
def api(settings: Settings, db: Engine, redis_client: Any, make_app: Callable[[Settings], FastAPI]) -> Api:
    return Api(app=make_app(settings), engine=db)


def ok(response: Any, status: int = 200) -> Any:
    """The JSON body, after checking the status (the body is in the failure message)."""
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    return response.json() if response.content else None


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The `error` object of an error answer, after checking status and shape."""
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str), body
    assert isinstance(body["error"]["message"], str), body
    error: dict[str, Any] = body["error"]
    return error


def recipients(n: int, start: int = 0, **fields: str) -> dict[str, Any]:
    """A JSON upload of `n` Viettel numbers with a `ten` field (and any others given)."""
    return {
        "recipients": [
            {"to": f"0961{i:06d}", "fields": {"ten": f"Người {i}", **fields}} for i in range(start, start + n)
        ]
    }
