"""One settings object for the whole service, read from `LOA_*` environment variables and `.env`.

The embedded default (no database URL, no Redis URL, no secret key) lives under `./.loa/`; the
paths are derived here so every part of the program agrees on them.
"""

from __future__ import annotations

import os
import secrets
import sys
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STATE_DIR_NAME = ".loa"


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Settings(BaseSettings):
    """Every knob of Loa. Grouped by subsystem; secrets are `SecretStr`."""

    model_config = SettingsConfigDict(env_prefix="LOA_", env_file=".env", extra="ignore")

    # --- storage and broker
    database_url: str | None = None
    redis_url: str | None = None
    state_dir: Path = Path(STATE_DIR_NAME)

    # --- gateways
    gateways_file: Path | None = None

    # --- secrets
    secret_key: SecretStr | None = None
    old_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # --- API
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    bootstrap_admin_key: SecretStr | None = None
    metrics_token: SecretStr | None = None
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_upload_rows: int = Field(1_000_000, ge=1)

    # --- message life
    retention_days: int = Field(30, ge=1)
    receipt_timeout_hours: float = Field(48, gt=0)
    max_attempts: int = Field(5, ge=1, le=100)
    # Messages per send task: each task costs two transactions, a journal and a Celery message,
    # which at 200 a batch took 4-24 % more CPU per message on a fast bind (bench/RESULTS.md).
    dispatch_batch: int = Field(500, ge=1, le=5000)
    lease_seconds: int = Field(120, ge=10)
    scheduler_interval_s: float = Field(2.0, gt=0)

    @field_validator("old_secret_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("secret_key")
    @classmethod
    def _key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    # ---- derived values -------------------------------------------------------------------------
    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'loa.db').resolve()}"

    @property
    def redis_socket(self) -> Path:
        return (self.state_dir / "redis.sock").resolve()

    @property
    def effective_gateways_file(self) -> Path | None:
        if self.gateways_file is not None:
            return self.gateways_file
        default = Path("gateways.toml")
        return default if default.exists() else None

    def secret_keys(self) -> tuple[str, list[str]]:
        """The current key and the old ones, generating the embedded key file on first use."""
        if self.secret_key is not None:
            current = self.secret_key.get_secret_value()
        elif self.embedded_database:
            current = _embedded_secret_key(self.state_dir)
        else:
            raise SettingsError("LOA_SECRET_KEY: required when LOA_DATABASE_URL is set (16+ characters)")
        return current, [k.get_secret_value() for k in self.old_secret_keys]


def _embedded_secret_key(state_dir: Path) -> str:
    path = state_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    print(
        f"warning: LOA_SECRET_KEY is not set; generated {path} (keep it: it decrypts stored secrets)",
        file=sys.stderr,
    )
    return key


def load_settings() -> Settings:
    """Read the settings, turning a validation error into one line naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LOA_" + str(first["loc"][0]).upper() if first["loc"] else "LOA_*"
        raise SettingsError(f"{name}: {first['msg']}") from None
