"""What a worker process needs, built once per process: settings, engine, gateways, Redis,
the secret box and the shared rate limiter. Tasks receive ids and look the rest up here."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import redis
from sqlalchemy import Engine

from gateways.config import GatewaysConfig, builtin_gateways, load_gateways
from gateways.ratelimit import RateLimiter
from loa.crypto import SecretBox
from loa.db import make_engine
from loa.settings import Settings, SettingsError, load_settings


def gateways_for(settings: Settings) -> GatewaysConfig:
    path: Path | None = settings.effective_gateways_file
    return load_gateways(path) if path is not None else builtin_gateways()


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.effective_database_url, pool_size=10)

    @cached_property
    def gateways(self) -> GatewaysConfig:
        return gateways_for(self.settings)

    @cached_property
    def redis(self) -> redis.Redis[bytes]:
        if not self.settings.redis_url:
            raise SettingsError("LOA_REDIS_URL: not set (start `loa run`, or set it)")
        return redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10
        )

    @cached_property
    def box(self) -> SecretBox:
        current, old = self.settings.secret_keys()
        return SecretBox(current, old)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis)


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The runtime of this process (workers are long-lived; tests call `reset_runtime`)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(load_settings())
        return _runtime


def reset_runtime(runtime: Runtime | None = None) -> None:
    global _runtime
    with _lock:
        _runtime = runtime
