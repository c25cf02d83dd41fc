"""Halt flags in Redis: a pause or cancel reaches send workers mid-batch within a second.

The database status stays the truth (send tasks re-check it when they load a batch); the flag
only shortens the time until submits stop. Losing Redis loses flags, never correctness."""

from __future__ import annotations

import redis

HALT_KEY = "loa:halt:{}"
HALT_TTL_S = 3600


def set_halt(client: redis.Redis[bytes], campaign_id: str, halted: bool) -> None:
    key = HALT_KEY.format(campaign_id)
    if halted:
        client.set(key, "1", ex=HALT_TTL_S)
    else:
        client.delete(key)


def is_halted(client: redis.Redis[bytes], campaign_id: str) -> bool:
    try:
        return bool(client.exists(HALT_KEY.format(campaign_id)))
    except redis.RedisError:
        return False
