"""API shapes of the accounts domain: keys and organisation settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from accounts.models import Role


class KeyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"role": "sender", "name": "telecom department"}]},
    )

    role: Role
    name: str = Field("", max_length=200, description="a label for people; not secret")

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable text")
        return value


class OrgSettingsIn(BaseModel):
    """Launch rules of the organisation. A field left out keeps its value; null switches it off."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"approval_threshold": 10000, "daily_quota": 2000000, "frequency_cap": 3}]},
    )

    approval_threshold: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000_000,
        description="campaigns with more recipients than this need a second key's approval before launch",
    )
    daily_quota: int | None = Field(
        default=None, ge=0, le=10_000_000_000, description="messages per rolling 24 hours for the organisation"
    )
    frequency_cap: int | None = Field(
        default=None, ge=1, le=1000, description="at most this many messages per recipient per 24 hours"
    )
