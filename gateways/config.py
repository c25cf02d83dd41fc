"""The gateways file (TOML): SMPP carrier binds and SMTP relays, validated once at start.

Unknown keys, duplicate names and missing required keys give one `GatewaysFileError` that names
the file, the gateway and the key. Passwords may come from the environment (`password_env`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from gateways.smpp.errors import ErrorClass, parse_overrides

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

# Replies that put the sender on the suppression list (matched ignoring case and Vietnamese
# diacritics, alone or followed by more words); a gateway may list its own (`opt_out_keywords`).
DEFAULT_OPT_OUT = ("TU CHOI", "TUCHOI", "HUY", "STOP", "UNSUBSCRIBE")

# The built-in simulators' addresses when no gateways file is given (`loa run`, `loa demo`).
SIM_HOST = "127.0.0.1"
SIM_SMPP_PORT = 2775
SIM_SMTP_PORT = 2525


class GatewaysFileError(Exception):
    """The gateways file is unreadable or invalid; the message says where and what."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Failover(_Strict):
    after_s: float = Field(60.0, gt=0)
    error_rate: float = Field(0.5, gt=0, le=1)


class _WithPassword(_Strict):
    password: SecretStr | None = None
    password_env: str | None = None

    def resolved_password(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_env:
            return os.environ.get(self.password_env, "")
        return ""

    @model_validator(mode="after")
    def _password_env_set(self) -> _WithPassword:
        if self.password is None and self.password_env and self.password_env not in os.environ:
            raise ValueError(f"password_env names {self.password_env!r}, which is not set in the environment")
        return self


class SmppGateway(_WithPassword):
    name: str = Field(pattern=NAME_PATTERN)
    host: str
    port: int = Field(ge=1, le=65535)
    system_id: str = Field(min_length=1, max_length=16)
    system_type: str = Field("", max_length=13)
    bind_mode: Literal["transceiver", "transmitter_receiver"] = "transceiver"
    binds: int = Field(1, ge=1, le=64)
    tps: float = Field(50.0, gt=0)
    window: int = Field(10, ge=1, le=1000)
    enquire_link_s: float = Field(30.0, gt=0)
    carriers: list[str] = Field(default_factory=list)
    default: bool = False
    fallback: str | None = None
    failover: Failover | None = None
    source_addr: str | None = Field(None, max_length=20)
    receipt_id_base: Literal["hex", "decimal", "auto"] = "auto"
    errors: dict[str, Literal["transient", "permanent"]] = Field(default_factory=dict)
    opt_out_keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_OPT_OUT))

    @model_validator(mode="after")
    def _password_given(self) -> SmppGateway:
        if self.password is None and not self.password_env:
            raise ValueError("password (or password_env) is required")
        if self.fallback == self.name:
            raise ValueError("fallback names the gateway itself")
        return self

    @field_validator("errors")
    @classmethod
    def _valid_error_codes(cls, value: dict[str, str]) -> dict[str, str]:
        parse_overrides(value)  # raises ValueError naming the bad code
        return value

    def error_overrides(self) -> dict[int, ErrorClass]:
        return parse_overrides(self.errors)


class SmtpRelay(_WithPassword):
    name: str = Field(pattern=NAME_PATTERN)
    host: str
    port: int = Field(ge=1, le=65535)
    tls: Literal["none", "starttls", "tls"] = "none"
    username: str = ""
    connections: int = Field(4, ge=1, le=100)
    rate: float = Field(200.0, gt=0)
    domain_rates: dict[str, float] = Field(default_factory=dict)
    dkim: Dkim | None = None
    local_hostname: str | None = None
    validate_certs: bool = True
    ca_file: Path | None = None  # CA bundle to trust for the relay's certificate (private relays)
    # First retry after a 4xx (greylisting wants minutes), doubled per attempt up to an hour.
    retry_after_s: float = Field(300.0, gt=0, le=86400)
    default: bool = True

    @model_validator(mode="after")
    def _password_with_username(self) -> SmtpRelay:
        if self.username and self.password is None and not self.password_env:
            raise ValueError("password (or password_env) is required when username is set")
        return self


class Dkim(_Strict):
    domain: str
    selector: str
    key_file: Path


SmtpRelay.model_rebuild()


class GatewaysConfig(_Strict):
    smpp: list[SmppGateway] = Field(default_factory=list)
    smtp: list[SmtpRelay] = Field(default_factory=list)
    source: str = "built-in simulators"

    @model_validator(mode="after")
    def _consistent(self) -> GatewaysConfig:
        names = [g.name for g in self.smpp] + [r.name for r in self.smtp]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate gateway name {dupes[0]!r}")
        smpp_names = {g.name for g in self.smpp}
        for g in self.smpp:
            if g.fallback is not None and g.fallback not in smpp_names:
                raise ValueError(f"[{g.name}] fallback {g.fallback!r} is not an SMPP gateway in this file")
        if sum(g.default for g in self.smpp) > 1:
            raise ValueError("more than one SMPP gateway has default = true")
        return self

    def smpp_by_name(self) -> dict[str, SmppGateway]:
        return {g.name: g for g in self.smpp}

    def relay_by_name(self) -> dict[str, SmtpRelay]:
        return {r.name: r for r in self.smtp}

    def route_table(self) -> tuple[dict[str, str], str | None]:
        """Carrier name (lower case) → gateway, and the default gateway."""
        table: dict[str, str] = {}
        for g in self.smpp:
            for carrier in g.carriers:
                table.setdefault(carrier.strip().lower(), g.name)
        default = next((g.name for g in self.smpp if g.default), None)
        return table, default

    def default_relay(self) -> str | None:
        return next((r.name for r in self.smtp if r.default), None)


def load_gateways(path: Path) -> GatewaysConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GatewaysFileError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GatewaysFileError(f"{path}: not valid TOML: {exc}") from None
    return parse_gateways(raw, source=str(path))


def parse_gateways(raw: Mapping[str, Any], source: str) -> GatewaysConfig:
    try:
        return GatewaysConfig.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise GatewaysFileError(f"{source}: {_describe(exc, raw)}") from None


def _describe(exc: ValidationError, raw: Mapping[str, Any]) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] in ("smpp", "smtp") and isinstance(loc[1], int):
        section, index = str(loc[0]), loc[1]
        entries = raw.get(section) or []
        name = entries[index].get("name", f"#{index + 1}") if index < len(entries) else f"#{index + 1}"
        where = f"[[{section}]] {name!r}"
        loc = loc[2:]
    key = ".".join(str(part) for part in loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    parts = [p for p in (where, f"key {key!r}" if key else "") if p]
    return (", ".join(parts) + ": " if parts else "") + msg


def builtin_gateways(
    host: str = SIM_HOST, smpp_port: int = SIM_SMPP_PORT, smtp_port: int = SIM_SMTP_PORT
) -> GatewaysConfig:
    """Gateways for the built-in SMSC simulator (Viettel, Vinaphone, everything else) and SMTP sink."""
    common: dict[str, Any] = {"host": host, "port": smpp_port, "binds": 2, "tps": 500, "window": 10}
    return GatewaysConfig(
        smpp=[
            SmppGateway(
                name="viettel",
                system_id="viettel",
                password=SecretStr("viettel-pw"),
                carriers=["Viettel"],
                source_addr="TCTK",
                **common,
            ),
            SmppGateway(
                name="vinaphone",
                system_id="vinaphone",
                password=SecretStr("vinaphone-pw"),
                carriers=["Vinaphone"],
                source_addr="TCTK",
                **common,
            ),
            SmppGateway(
                name="default",
                system_id="default",
                password=SecretStr("default-pw"),
                default=True,
                source_addr="TCTK",
                **common,
            ),
        ],
        smtp=[SmtpRelay(name="sink", host=host, port=smtp_port, connections=4, rate=2000)],
        source="built-in simulators",
    )
