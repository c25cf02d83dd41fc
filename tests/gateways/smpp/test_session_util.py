"""The SMPP adapter's value types and pure helpers (session_util)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateways.smpp.session_util import (
    BindConfig,
    SessionCounters,
    Submit,
    describe_status,
    smpp_absolute_time,
    source_ton_npi,
    submit_sm_fields,
)

HANOI = timezone(timedelta(hours=7))


def bind_config(**overrides: Any) -> BindConfig:
    settings: dict[str, Any] = {"name": "viettel", "host": "127.0.0.1", "port": 2775, "system_id": "gso"}
    settings.update(overrides)
    settings.setdefault("password", "s3cr3t")
    return BindConfig(**settings)


def submit(**overrides: Any) -> Submit:
    settings: dict[str, Any] = {
        "ref": 1,
        "source_addr": "TCTK",
        "destination": "+84912345678",
        "short_message": b"Ma dang nhap: 771903",
        "data_coding": 0,
    }
    settings.update(overrides)
    return Submit(**settings)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("TCTK", (5, 0)), ("Loa 2029", (5, 0)), ("+84912345678", (1, 1)), ("84912345678", (1, 1)), ("", (0, 0))],
)
def test_source_ton_npi(addr: str, expected: tuple[int, int]) -> None:
    assert source_ton_npi(addr) == expected


def test_smpp_absolute_time_is_utc() -> None:
    assert smpp_absolute_time(datetime(2029, 4, 30, 22, 0, 5, tzinfo=HANOI)) == "290430150005000+"
    assert smpp_absolute_time(datetime(2029, 1, 2, 3, 4, 5, tzinfo=UTC)) == "290102030405000+"
    with pytest.raises(ValueError, match="aware"):
        smpp_absolute_time(datetime(2029, 1, 2, 3, 4, 5))


def test_submit_sm_fields_strip_the_plus_and_set_ton_npi() -> None:
    fields = submit_sm_fields(submit(source_addr="+8488", validity_period=datetime(2029, 5, 1, 7, tzinfo=HANOI)))

    assert fields["source_addr"] == "8488"
    assert (fields["source_addr_ton"], fields["source_addr_npi"]) == (1, 1)
    assert fields["destination_addr"] == "84912345678"
    assert (fields["dest_addr_ton"], fields["dest_addr_npi"]) == (1, 1)
    assert fields["validity_period"] == "290501000000000+"
    assert fields["registered_delivery"] == 1
    assert submit_sm_fields(submit())["validity_period"] is None


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"destination": "+84 912 345 678"}, "destination"),
        ({"destination": "1" * 21}, "destination"),
        ({"source_addr": "TONGCUCTHONGKE"}, "at most 11"),  # alphanumeric senders hold 11
        ({"source_addr": "Tổng cục"}, "ASCII"),
        ({"short_message": b"x" * 255}, "254"),
        ({"data_coding": 256}, "data_coding"),
        ({"validity_period": datetime(2029, 5, 1)}, "aware"),
    ],
)
def test_submits_smpplib_would_mangle_are_refused(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        submit(**overrides)


def test_secrets_stay_out_of_reprs() -> None:
    assert "s3cr3t" not in repr(bind_config())
    assert "771903" not in repr(submit())


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"system_id": "x" * 16}, "system_id"),
        ({"system_type": "x" * 13}, "system_type"),
        ({"window": 0}, "window"),
        ({"enquire_link_s": 0}, "enquire_link_s"),
        ({"reconnect_initial_s": 5, "reconnect_max_s": 1}, "reconnect_max_s"),
        ({"bind_mode": "receiver"}, "bind_mode"),
        ({"port": 0}, "port"),
    ],
)
def test_invalid_bind_configs_are_refused(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=f"viettel: .*{complaint}"):
        bind_config(**overrides)


def test_long_passwords_are_flagged_not_refused() -> None:
    # The demo simulator's accounts use 10-12 character passwords; SMPP 3.4 carries 8.
    assert bind_config(password="viettel-pw").password_truncated
    assert not bind_config(password="12345678").password_truncated


def test_counters_snapshot() -> None:
    counters = SessionCounters()
    for status in (0, 0, 0x58, 0x14, 0x0B):
        counters.response(status)
    counters.add("submits", 5)
    counters.outstanding(3)
    counters.outstanding(2)
    counters.error("connection closed by the SMSC")

    stats = counters.snapshot()

    assert stats["responses"] == {0: 2, 0x58: 1, 0x14: 1, 0x0B: 1}
    assert stats["throttles"] == 2
    assert stats["submits"] == 5
    assert stats["max_outstanding"] == 3
    assert stats["last_error"] == "connection closed by the SMSC"


def test_describe_status() -> None:
    assert describe_status(0x0E) == "0x0000000E ESME_RINVPASWD"
