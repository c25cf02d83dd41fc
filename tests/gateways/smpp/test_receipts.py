"""Tests for delivery receipt parsing, id normalisation and final-outcome ordering."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import smpp

from gateways.smpp.receipts import (
    STATUS_RANK,
    ReceiptParseError,
    ReceiptState,
    _fields,
    _scan_fields,
    is_final,
    message_status_for,
    normalise_id,
    parse_receipt,
    receipt_id_candidates,
    worst_outcome,
)

STANDARD = (
    b"id:0123456789 sub:001 dlvrd:001 submit date:2401151230 done date:2401151231 "
    b"stat:DELIVRD err:000 text:Tong dieu tra dan so"
)


def test_standard_receipt_text() -> None:
    info = parse_receipt(STANDARD)
    assert info.message_id == "0123456789"
    assert info.state is ReceiptState.DELIVERED
    assert info.raw_stat == "DELIVRD"
    assert info.err == "000"
    assert info.submitted == 1
    assert info.delivered == 1
    assert info.submit_date == datetime(2024, 1, 15, 12, 30, tzinfo=UTC)
    assert info.done_date == datetime(2024, 1, 15, 12, 31, tzinfo=UTC)


def test_dates_with_seconds_and_century() -> None:
    info = parse_receipt("id:7 submit date:240115123045 done date:20240115123159 stat:DELIVRD")
    assert info.submit_date == datetime(2024, 1, 15, 12, 30, 45, tzinfo=UTC)
    assert info.done_date == datetime(2024, 1, 15, 12, 31, 59, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["2413991299", "24011512", "240115123", "abcdefghij", ""])
def test_bad_dates_do_not_reject_the_receipt(bad: str) -> None:
    info = parse_receipt(f"id:7 submit date:{bad} done date:{bad} stat:EXPIRED")
    assert info.submit_date is None
    assert info.done_date is None
    assert info.state is ReceiptState.EXPIRED


def test_field_names_in_other_case_and_spelling() -> None:
    info = parse_receipt("ID:AbC12 Sub:1 DLVRD:0 Submit_Date:2401151230 DONE DATE:2401151240 Stat:undeliv Err:012")
    assert info.message_id == "AbC12"
    assert info.state is ReceiptState.UNDELIVERABLE
    assert info.raw_stat == "undeliv"
    assert info.err == "012"
    assert (info.submitted, info.delivered) == (1, 0)
    assert info.done_date == datetime(2024, 1, 15, 12, 40, tzinfo=UTC)


def test_field_values_keep_their_case_when_other_characters_change_length_lower_cased() -> None:
    # "İ".lower() is two characters: the fields are then found in an ASCII-only lower-cased copy.
    info = parse_receipt("İİ ID:AbC12 Stat:DELIVRD Err:0İ0 text:İSTANBUL id:9")
    assert (info.message_id, info.raw_stat, info.err) == ("AbC12", "DELIVRD", "0İ0")


def test_missing_fields_are_none() -> None:
    info = parse_receipt("id:99 stat:REJECTD")
    assert info.state is ReceiptState.REJECTED
    assert (info.err, info.submit_date, info.done_date, info.submitted, info.delivered) == (None,) * 5


def test_free_text_after_text_field_is_not_parsed() -> None:
    info = parse_receipt("id:1 stat:DELIVRD text:stat:REJECTD id:2 err:999 sub:5")
    assert (info.message_id, info.state) == ("1", ReceiptState.DELIVERED)
    assert (info.err, info.submitted) == (None, None)


def test_field_name_inside_another_word_is_not_a_field() -> None:
    info = parse_receipt("msgid:5 id:6 stat:DELIVRD")
    assert info.message_id == "6"


def test_nul_padding_and_non_ascii_bytes() -> None:
    info = parse_receipt(b"id:00AB\x00 stat:DELIVRD text:\xe9\xff\x00")
    assert info.message_id == "00AB"
    assert info.state is ReceiptState.DELIVERED


@pytest.mark.parametrize(
    ("stat", "state"),
    [
        ("ENROUTE", ReceiptState.ENROUTE),
        ("DELIVRD", ReceiptState.DELIVERED),
        ("EXPIRED", ReceiptState.EXPIRED),
        ("DELETED", ReceiptState.DELETED),
        ("UNDELIV", ReceiptState.UNDELIVERABLE),
        ("ACCEPTD", ReceiptState.ACCEPTED),
        ("UNKNOWN", ReceiptState.UNKNOWN),
        ("REJECTD", ReceiptState.REJECTED),
        ("DELIVERED", ReceiptState.DELIVERED),
        ("rejected", ReceiptState.REJECTED),
        ("FOOBAR", ReceiptState.UNKNOWN),
    ],
)
def test_text_stat_words(stat: str, state: ReceiptState) -> None:
    info = parse_receipt(f"id:1 stat:{stat}")
    assert info.state is state
    assert info.raw_stat == stat


def test_no_stat_at_all_is_unknown() -> None:
    info = parse_receipt("id:1 err:000")
    assert (info.state, info.raw_stat) == (ReceiptState.UNKNOWN, "")


@pytest.mark.parametrize(
    ("value", "state", "name"),
    [
        (0, ReceiptState.ENROUTE, "SCHEDULED"),
        (1, ReceiptState.ENROUTE, "ENROUTE"),
        (2, ReceiptState.DELIVERED, "DELIVRD"),
        (3, ReceiptState.EXPIRED, "EXPIRED"),
        (4, ReceiptState.DELETED, "DELETED"),
        (5, ReceiptState.UNDELIVERABLE, "UNDELIV"),
        (6, ReceiptState.ACCEPTED, "ACCEPTD"),
        (7, ReceiptState.UNKNOWN, "UNKNOWN"),
        (8, ReceiptState.REJECTED, "REJECTD"),
        (9, ReceiptState.UNDELIVERABLE, "SKIPPED"),
    ],
)
def test_message_state_tlv_alone(value: int, state: ReceiptState, name: str) -> None:
    info = parse_receipt(b"", receipted_message_id="1A2B", message_state=value)
    assert (info.message_id, info.state, info.raw_stat) == ("1A2B", state, name)


def test_tlvs_win_over_text() -> None:
    info = parse_receipt(STANDARD, receipted_message_id=b"1A2B\x00", message_state=5)
    assert info.message_id == "1A2B"
    assert info.state is ReceiptState.UNDELIVERABLE
    assert info.raw_stat == "DELIVRD"  # what the text said, kept for the timeline
    assert info.err == "000"


def test_out_of_range_message_state_falls_back_to_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateways.smpp.receipts"):
        info = parse_receipt(STANDARD, message_state=42)
    assert info.state is ReceiptState.DELIVERED
    assert "42" in caplog.text


def test_empty_tlv_id_falls_back_to_text() -> None:
    assert parse_receipt(STANDARD, receipted_message_id=b"\x00").message_id == "0123456789"


@pytest.mark.parametrize("pdu_text", [b"", b"Hello, opt me out", b"id: sub:001 stat:DELIVRD", "stat:DELIVRD"])
def test_no_id_anywhere_raises(pdu_text: bytes | str) -> None:
    with pytest.raises(ReceiptParseError, match="no message id") as caught:
        parse_receipt(pdu_text)
    assert "opt me out" not in str(caught.value)  # the body may be a credential: never echoed


class _Client:
    """The two things smpplib's PDU factory asks of its client; no session is involved."""

    allow_unknown_opt_params = True

    def next_sequence(self) -> int:
        return 1


def test_fields_as_smpplib_decodes_them_from_a_deliver_sm() -> None:
    client: Any = _Client()
    wire = smpp.make_pdu(
        "deliver_sm",
        client=client,
        source_addr="84912345678",
        destination_addr="TCTK",
        esm_class=0x04,
        short_message=STANDARD,
        receipted_message_id="1A2B",
        message_state=3,
    ).generate()
    pdu = smpp.parse_pdu(wire, client=client, allow_unknown_opt_params=True)
    info = parse_receipt(
        pdu.short_message, receipted_message_id=pdu.receipted_message_id, message_state=pdu.message_state
    )
    assert (info.message_id, info.state) == ("1A2B", ReceiptState.EXPIRED)


def test_final_states_and_their_message_status() -> None:
    expected = {
        ReceiptState.DELIVERED: "delivered",
        ReceiptState.UNDELIVERABLE: "undeliverable",
        ReceiptState.EXPIRED: "expired",
        ReceiptState.REJECTED: "rejected",
        ReceiptState.DELETED: "undeliverable",
        ReceiptState.UNKNOWN: "undeliverable",
    }
    for state in ReceiptState:
        assert is_final(state) == (state in expected)
        if state in expected:
            assert message_status_for(state) == expected[state]
        else:
            with pytest.raises(ValueError, match="not final"):
                message_status_for(state)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [(" 000abc\x00", "ABC"), ("0000", "0"), ("0", "0"), (b"00ff\x00\x00", "FF"), ("12 ", "12"), ("a0", "A0")],
)
def test_normalise_id(raw: str | bytes, normal: str) -> None:
    assert normalise_id(raw) == normal


@pytest.mark.parametrize("raw", ["", "  ", "\x00\x00", b""])
def test_empty_id_stays_empty_and_has_no_candidates(raw: str | bytes) -> None:
    assert normalise_id(raw) == ""
    assert receipt_id_candidates(raw, "auto") == []


@pytest.mark.parametrize(
    ("raw", "base", "candidates"),
    [
        # The SMSC answers submit_sm with hex 0A1B2C3D, the receipt writes 169552957.
        ("169552957", "hex", ["169552957", "A1B2C3D"]),
        ("0A1B2C3D", "hex", ["A1B2C3D"]),  # not all digits: nothing to convert
        # The SMSC answers with decimal 169552957, the receipt writes hex.
        ("0a1b2c3d", "decimal", ["A1B2C3D", "169552957"]),
        ("1234", "decimal", ["1234", "4660"]),  # all digits is valid hex too
        ("XYZ-1", "decimal", ["XYZ-1"]),
        ("1234", "auto", ["1234", "4D2", "4660"]),
        ("00ff", "auto", ["FF", "255"]),
        ("0000", "auto", ["0"]),
        ("9", "auto", ["9"]),
    ],
)
def test_receipt_id_candidates(raw: str, base: Any, candidates: list[str]) -> None:
    assert receipt_id_candidates(raw, base) == candidates


def test_candidates_meet_the_stored_form_of_the_submit_response_id() -> None:
    for value, (resp_base, receipt_base) in itertools.product(
        [1, 9, 10, 255, 4660, 169552957, 2**63 + 5], [("hex", "decimal"), ("decimal", "hex")]
    ):
        in_resp = f"{value:010X}" if resp_base == "hex" else f"{value:010d}"
        in_receipt = f"{value:x}" if receipt_base == "hex" else str(value)
        stored = normalise_id(in_resp)
        assert stored in receipt_id_candidates(in_receipt, resp_base)  # type: ignore[arg-type]
        assert stored in receipt_id_candidates(in_receipt, "auto")


def test_receipt_id_candidates_refuses_unknown_base() -> None:
    with pytest.raises(ValueError, match="octal"):
        receipt_id_candidates("12", "octal")  # type: ignore[arg-type]


def test_status_rank_orders_outcomes_from_best_to_worst() -> None:
    assert sorted(STATUS_RANK, key=STATUS_RANK.__getitem__) == [
        "delivered",
        "expired",
        "undeliverable",
        "rejected",
    ]


@pytest.mark.parametrize(
    ("statuses", "worst"),
    [
        (["delivered"], "delivered"),
        (["delivered", "delivered", "delivered"], "delivered"),
        (["delivered", "expired", "delivered"], "expired"),
        (["expired", "undeliverable"], "undeliverable"),
        (["rejected", "delivered", "undeliverable"], "rejected"),
    ],
)
def test_worst_outcome(statuses: list[str], worst: str) -> None:
    assert worst_outcome(statuses) == worst
    assert worst_outcome(reversed(statuses)) == worst


def test_worst_outcome_refuses_nothing_and_non_final_statuses() -> None:
    with pytest.raises(ValueError, match="no segment"):
        worst_outcome([])
    with pytest.raises(ValueError, match="'sent'"):
        worst_outcome(["delivered", "sent"])


# Values as carriers write them and as they should not: blanks, colons and field names inside.
_PIECES = ["0", "9", "a", "F", ":", "-", "_", ".", " ", "id", "sub", "stat", "err", "text", "done date"]
_VALUES = st.lists(st.sampled_from(_PIECES), max_size=5).map("".join)


@settings(max_examples=500, deadline=None)
@given(values=st.lists(_VALUES, min_size=7, max_size=7), tail=st.sampled_from(["", " ", " text:", " text:x:y err:1"]))
def test_the_standard_layout_reads_as_the_field_scan_reads_it(values: list[str], tail: str) -> None:
    names = ("id", "sub", "dlvrd", "submit date", "done date", "stat", "err")
    text = " ".join(f"{name}:{value}" for name, value in zip(names, values, strict=True)) + tail
    assert _fields(text) == _scan_fields(text)
