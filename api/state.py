"""What the API process holds for its lifetime: engine, settings, gateways, secret box, Redis."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from sqlalchemy import Engine

from gateways.config import GatewaysConfig
from loa.crypto import SecretBox
from loa.settings import Settings


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    gateways: GatewaysConfig
    box: SecretBox
    redis: redis.Redis[bytes] | None
