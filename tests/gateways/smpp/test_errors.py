"""Tests for the SMPP command_status names and the per-gateway error table."""

from __future__ import annotations

import pytest
from smpplib import consts

from gateways.smpp.errors import (
    DEFAULT_ERROR_TABLE,
    ERROR_NAMES,
    ErrorClass,
    ErrorTable,
    is_throttle,
    parse_overrides,
)

TRANSIENT, PERMANENT = ErrorClass.TRANSIENT, ErrorClass.PERMANENT


def test_names_are_the_full_smpp_34_table() -> None:
    # smpplib carries the same table as SMPP_ESME_* constants; ours must match it name for name.
    smpplib_names = {
        value: name.removeprefix("SMPP_")
        for name, value in vars(consts).items()
        if name.startswith("SMPP_ESME_R") and isinstance(value, int)
    }
    assert dict(ERROR_NAMES) == smpplib_names
    assert len(ERROR_NAMES) == 48


def test_default_table_classifies_every_named_error_and_not_success() -> None:
    assert set(DEFAULT_ERROR_TABLE) == set(ERROR_NAMES) - {0}


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x58, TRANSIENT),  # ESME_RTHROTTLED
        (0x14, TRANSIENT),  # ESME_RMSGQFUL
        (0x08, TRANSIENT),  # ESME_RSYSERR
        (0x64, TRANSIENT),  # ESME_RX_T_APPN
        (0x04, TRANSIENT),  # ESME_RINVBNDSTS: the session, not the message
        (0x0B, PERMANENT),  # ESME_RINVDSTADR
        (0x0A, PERMANENT),  # ESME_RINVSRCADR
        (0x0C, PERMANENT),
        (0x45, PERMANENT),  # ESME_RSUBMITFAIL
        (0x01, PERMANENT),
        (0x61, PERMANENT),
        (0x62, PERMANENT),
        (0x66, PERMANENT),
        (0xFF, PERMANENT),
        (0x400, PERMANENT),  # vendor-specific, unknown to us
        (0x12345, PERMANENT),
    ],
)
def test_default_classification(code: int, expected: ErrorClass) -> None:
    assert ErrorTable().classify(code) is expected


def test_rejections_0x01_to_0x0f_are_permanent_except_the_session_and_system_ones() -> None:
    rejections = {code for code in range(0x01, 0x10) if code in ERROR_NAMES}
    assert {code for code in rejections if ErrorTable().classify(code) is TRANSIENT} == {0x04, 0x08}


def test_overrides_win_and_leave_the_rest_alone() -> None:
    table = ErrorTable({0x45: TRANSIENT, 0x58: PERMANENT, 0x401: TRANSIENT})
    assert table.classify(0x45) is TRANSIENT
    assert table.classify(0x58) is PERMANENT
    assert table.classify(0x401) is TRANSIENT
    assert table.classify(0x0B) is PERMANENT
    assert table.classify(0x14) is TRANSIENT


def test_table_copies_its_overrides() -> None:
    overrides = {0x45: TRANSIENT}
    table = ErrorTable(overrides)
    overrides[0x45] = PERMANENT
    assert table.classify(0x45) is TRANSIENT
    with pytest.raises(TypeError):
        table.overrides[0x0B] = TRANSIENT  # type: ignore[index]


def test_tables_compare_by_content_and_can_be_cache_keys() -> None:
    assert ErrorTable({0x45: TRANSIENT}) == ErrorTable.from_config({"69": "transient"})
    assert ErrorTable({0x45: TRANSIENT}) != ErrorTable()
    assert len({ErrorTable(), ErrorTable({}), ErrorTable({0x45: TRANSIENT})}) == 2


@pytest.mark.parametrize("code", [0, -1, 2**32])
def test_classify_refuses_success_and_impossible_codes(code: int) -> None:
    with pytest.raises(ValueError, match=str(code)):
        ErrorTable().classify(code)
    with pytest.raises(ValueError, match=str(code)):
        ErrorTable({code: TRANSIENT})


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x58, "0x00000058 ESME_RTHROTTLED"),
        (0x45, "0x00000045 ESME_RSUBMITFAIL"),
        (0x00, "0x00000000 ESME_ROK"),
        (0x401, "0x00000401 vendor-specific"),
        (0x99, "0x00000099 unknown"),
    ],
)
def test_describe(code: int, text: str) -> None:
    assert ErrorTable().describe(code) == text


def test_parse_overrides_accepts_hex_and_decimal_keys() -> None:
    parsed = parse_overrides({"0x45": "transient", "88": "permanent", " 0X0b ": " Transient "})
    assert parsed == {0x45: TRANSIENT, 0x58: PERMANENT, 0x0B: TRANSIENT}


def test_from_config_builds_a_working_table() -> None:
    table = ErrorTable.from_config({"0x45": "transient"})
    assert table.classify(0x45) is TRANSIENT
    assert ErrorTable.from_config(None).classify(0x45) is PERMANENT


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"0x45": "retry"}, "'0x45'.*'retry'"),
        ({"ESME_RSUBMITFAIL": "transient"}, "'ESME_RSUBMITFAIL'.*hex"),
        ({"0x": "transient"}, "'0x'"),
        ({"-5": "transient"}, "'-5'"),
        ({"6_9": "transient"}, "'6_9'"),
        ({"0": "transient"}, "'0'.*ESME_ROK"),
        ({"0x100000000": "transient"}, "'0x100000000'.*32-bit"),
        ({"0x45": "transient", "69": "permanent"}, "'69'.*twice"),
    ],
)
def test_parse_overrides_names_the_bad_entry(raw: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_overrides(raw)


def test_only_throttling_and_queue_full_slow_the_gateway() -> None:
    assert is_throttle(0x58)
    assert is_throttle(0x14)
    assert {code for code in range(0x500) if is_throttle(code)} == {0x14, 0x58}
