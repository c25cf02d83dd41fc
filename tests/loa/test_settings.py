"""Settings: the embedded defaults, and bad values named in one line."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from loa.settings import Settings, SettingsError, load_settings


def test_embedded_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(state_dir=tmp_path / ".loa")
    assert settings.effective_database_url == f"sqlite:///{(tmp_path / '.loa' / 'loa.db').resolve()}"
    assert settings.redis_socket == (tmp_path / ".loa" / "redis.sock").resolve()
    current, old = settings.secret_keys()
    key_file = tmp_path / ".loa" / "secret.key"
    assert key_file.read_text().strip() == current
    assert len(current) >= 32
    assert old == []
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "LOA_SECRET_KEY is not set" in capsys.readouterr().err
    assert Settings(state_dir=tmp_path / ".loa").secret_keys()[0] == current  # generated once


def test_secret_key_required_with_a_real_database() -> None:
    settings = Settings(database_url="postgresql+psycopg://x@localhost/y")
    with pytest.raises(SettingsError, match="LOA_SECRET_KEY"):
        settings.secret_keys()


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("LOA_API_PORT", "eighty", "LOA_API_PORT"),
        ("LOA_SECRET_KEY", "short", "LOA_SECRET_KEY: Value error, must be at least 16 characters"),
        ("LOA_DATABASE_URL", "mysql://x", "LOA_DATABASE_URL"),
        ("LOA_MAX_ATTEMPTS", "0", "LOA_MAX_ATTEMPTS"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(fragment)
    assert "\n" not in str(info.value)


def test_old_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_OLD_SECRET_KEYS", "first-old-key-0001, second-old-key-02")
    keys = [k.get_secret_value() for k in load_settings().old_secret_keys]
    assert keys == ["first-old-key-0001", "second-old-key-02"]
