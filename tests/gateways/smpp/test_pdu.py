"""The simulator's PDU codec against smpplib, an independent SMPP implementation.

What smpplib encodes must decode here, and what is encoded here must parse in smpplib with the
same field values; malformed bodies must fail with the status the simulator will answer.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import smpplib.smpp

from gateways.smpp.pdu import (
    HEADER,
    CommandId,
    CommandStatus,
    PduError,
    Tag,
    decode_bind,
    decode_submit_sm,
    decode_tlvs,
    encode_bind_resp,
    encode_deliver_sm_body,
    encode_pdu,
    encode_submit_sm_resp,
    encode_tlv,
)


class _Sequences:
    """Stands in for smpplib's client, which PDUs ask for sequence numbers."""

    sequence = 0

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


def _smpplib_pdu(command: str, **fields: Any) -> bytes:
    pdu = smpplib.smpp.make_pdu(command, client=_Sequences(), **fields)
    raw: bytes = pdu.generate()
    return raw


def _body(raw: bytes) -> bytes:
    length = HEADER.unpack_from(raw)[0]
    assert length == len(raw)
    return raw[HEADER.size :]


def _parse(raw: bytes) -> Any:
    return smpplib.smpp.parse_pdu(raw, client=_Sequences(), allow_unknown_opt_params=True)


def test_decode_submit_sm_reads_what_smpplib_wrote() -> None:
    raw = _smpplib_pdu(
        "submit_sm",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="TCTK",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="84912345678",
        esm_class=0x40,
        registered_delivery=1,
        data_coding=8,
        validity_period="000001000000000R",
        short_message=b"\x05\x00\x03\x2a\x02\x01" + "Điều tra".encode("utf-16-be"),
    )

    submit = decode_submit_sm(_body(raw))

    assert (submit.source_addr_ton, submit.source_addr_npi, submit.source_addr) == (5, 0, "TCTK")
    assert (submit.dest_addr_ton, submit.dest_addr_npi, submit.destination_addr) == (1, 1, "84912345678")
    assert (submit.esm_class, submit.registered_delivery, submit.data_coding) == (0x40, 1, 8)
    assert submit.short_message == b"\x05\x00\x03\x2a\x02\x01" + "Điều tra".encode("utf-16-be")


def test_decode_submit_sm_takes_message_payload_when_short_message_is_empty() -> None:
    text = b"x" * 300
    raw = _smpplib_pdu("submit_sm", source_addr="1", destination_addr="84912345678", message_payload=text)

    assert decode_submit_sm(_body(raw)).short_message == text


@pytest.mark.parametrize(
    ("cut", "status"),
    [
        (lambda b: b[:2], CommandStatus.ESME_RINVMSGLEN),  # ends between source_addr_ton and _npi
        (lambda b: b[:-4], CommandStatus.ESME_RINVMSGLEN),  # sm_length says more than is there
        (lambda b: b"\x00\x01\x01" + b"9" * 30, CommandStatus.ESME_RINVSRCADR),  # no NUL in 21
        (lambda b: b"\x00\x01\x01\x00\x01\x01" + b"9" * 30, CommandStatus.ESME_RINVDSTADR),
        (lambda b: b"CMTXXXX", CommandStatus.ESME_RINVMSGLEN),  # service_type too long
    ],
)
def test_decode_submit_sm_rejects_malformed_bodies(cut: Any, status: CommandStatus) -> None:
    raw = _smpplib_pdu("submit_sm", source_addr="1", destination_addr="84912345678", short_message=b"hello")

    with pytest.raises(PduError) as caught:
        decode_submit_sm(cut(_body(raw)))

    assert caught.value.status == status


def test_decode_bind_reads_credentials() -> None:
    raw = _smpplib_pdu("bind_transceiver", system_id="viettel", password="secret", system_type="SMPP")

    request = decode_bind(_body(raw))

    assert (request.system_id, request.password, request.system_type) == ("viettel", "secret", "SMPP")
    assert request.interface_version == 0x34


def test_decode_bind_rejects_an_unterminated_system_id() -> None:
    with pytest.raises(PduError) as caught:
        decode_bind(b"x" * 40)

    assert caught.value.status == CommandStatus.ESME_RINVSYSID


def test_decode_tlvs_keeps_the_first_occurrence_and_rejects_truncation() -> None:
    body = b"\xff" + encode_tlv(0x0427, b"\x02") + encode_tlv(0x0427, b"\x05") + encode_tlv(0x1E, b"ab\x00")

    assert decode_tlvs(body, 1) == {0x0427: b"\x02", 0x1E: b"ab\x00"}
    with pytest.raises(PduError) as caught:
        decode_tlvs(body[:-1], 1)
    assert caught.value.status == CommandStatus.ESME_RINVOPTPARSTREAM


def test_submit_sm_resp_parses_in_smpplib() -> None:
    ok = _parse(encode_submit_sm_resp(0, 7, "1a2b3c"))
    throttled = _parse(encode_submit_sm_resp(CommandStatus.ESME_RTHROTTLED, 8, "ignored"))

    assert (ok.command, ok.status, ok.sequence, ok.message_id) == ("submit_sm_resp", 0, 7, b"1a2b3c")
    assert (throttled.status, throttled.sequence, throttled.message_id) == (0x58, 8, None)


def test_bind_resp_parses_in_smpplib() -> None:
    ok = _parse(encode_bind_resp(CommandId.BIND_RECEIVER, 0, 1, "LoaSMSC"))
    refused = _parse(encode_bind_resp(CommandId.BIND_TRANSMITTER, CommandStatus.ESME_RINVPASWD, 2, "LoaSMSC"))

    assert (ok.command, ok.system_id, ok.sc_interface_version) == ("bind_receiver_resp", b"LoaSMSC", 0x34)
    assert (refused.command, refused.status, refused.system_id) == ("bind_transmitter_resp", 0x0E, None)


def test_deliver_sm_parses_in_smpplib_with_tlvs() -> None:
    body = encode_deliver_sm_body(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="84912345678",
        dest_addr_ton=5,
        dest_addr_npi=0,
        destination_addr="TCTK",
        esm_class=0x04,
        data_coding=0,
        short_message=b"id:1a2b stat:DELIVRD",
        tlvs=encode_tlv(Tag.RECEIPTED_MESSAGE_ID, b"1a2b\x00") + encode_tlv(Tag.MESSAGE_STATE, b"\x02"),
    )

    pdu = _parse(encode_pdu(CommandId.DELIVER_SM, 0, 42, body))

    assert (pdu.command, pdu.sequence, pdu.esm_class) == ("deliver_sm", 42, 4)
    assert (pdu.source_addr_ton, pdu.source_addr, pdu.dest_addr_ton, pdu.destination_addr) == (
        1,
        b"84912345678",
        5,
        b"TCTK",
    )
    assert pdu.short_message == b"id:1a2b stat:DELIVRD"
    assert (pdu.receipted_message_id, pdu.message_state) == (b"1a2b", 2)


def test_deliver_sm_moves_long_text_to_message_payload() -> None:
    text = "Trả lời".encode("utf-16-be") * 30  # 420 octets, over the 254 short_message limit
    body = encode_deliver_sm_body(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="84912345678",
        dest_addr_ton=2,
        dest_addr_npi=1,
        destination_addr="8088",
        esm_class=0,
        data_coding=8,
        short_message=text,
    )

    pdu = _parse(encode_pdu(CommandId.DELIVER_SM, 0, 1, body))

    assert (pdu.sm_length, pdu.short_message, pdu.message_payload) == (0, b"", text)


def test_encode_pdu_header_counts_itself() -> None:
    raw = encode_pdu(CommandId.ENQUIRE_LINK_RESP, 0, 99)

    assert raw == struct.pack(">IIII", 16, 0x80000015, 0, 99)
