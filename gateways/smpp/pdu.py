"""A small SMPP 3.4 PDU codec for the server side: what the SMSC simulator reads and writes.

The project rule is that smpplib lives in exactly one client adapter module, so the simulator
speaks the wire format through this module instead. It covers only what an SMSC needs: the
16-byte header, decoding ``bind_*`` and ``submit_sm`` bodies, TLVs, and encoding the responses,
``deliver_sm`` and ``unbind``. Decoders read only the fields the simulator uses and skip the rest,
because ``submit_sm`` decoding sits on the simulator's hot path.

Layout (SMPP 3.4 §3.2): every PDU is ``command_length, command_id, command_status,
sequence_number`` (four big-endian uint32, the length counting the header itself) followed by the
mandatory body fields (C-octet strings end with NUL; integers are one byte) and then optional
TLVs (``tag:uint16, length:uint16, value``).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final, NamedTuple

__all__ = [
    "HEADER",
    "HEADER_LEN",
    "MAX_PDU_LEN",
    "RESPONSE_BIT",
    "BindRequest",
    "CommandId",
    "CommandStatus",
    "DataCoding",
    "EsmClass",
    "PduError",
    "SubmitSm",
    "Tag",
    "decode_bind",
    "decode_submit_sm",
    "decode_tlvs",
    "encode_bind_resp",
    "encode_deliver_sm_body",
    "encode_pdu",
    "encode_submit_sm_resp",
    "encode_tlv",
]

HEADER: Final = struct.Struct(">IIII")
HEADER_LEN: Final = HEADER.size
# short_message is at most 254 octets, but message_payload may carry up to 64 KiB; anything larger
# is not SMPP and means the stream lost its framing.
MAX_PDU_LEN: Final = 0x10000 + 1024


class CommandId(IntEnum):
    """SMPP 3.4 command ids (§5.1.2.1); responses set the top bit."""

    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    QUERY_SM = 0x00000003
    QUERY_SM_RESP = 0x80000003
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    REPLACE_SM = 0x00000007
    REPLACE_SM_RESP = 0x80000007
    CANCEL_SM = 0x00000008
    CANCEL_SM_RESP = 0x80000008
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    OUTBIND = 0x0000000B
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015
    SUBMIT_MULTI = 0x00000021
    SUBMIT_MULTI_RESP = 0x80000021
    ALERT_NOTIFICATION = 0x00000102
    DATA_SM = 0x00000103
    DATA_SM_RESP = 0x80000103


RESPONSE_BIT: Final = 0x80000000


class CommandStatus(IntEnum):
    """The command_status values the simulator answers with (SMPP 3.4 §5.1.3)."""

    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RMSGQFUL = 0x14
    ESME_RSUBMITFAIL = 0x45
    ESME_RTHROTTLED = 0x58
    ESME_RINVOPTPARSTREAM = 0xC0


class Tag(IntEnum):
    """Optional parameter (TLV) tags the simulator reads or writes."""

    RECEIPTED_MESSAGE_ID = 0x001E
    SC_INTERFACE_VERSION = 0x0210
    MESSAGE_PAYLOAD = 0x0424
    MESSAGE_STATE = 0x0427


class EsmClass:
    """Bits of esm_class that matter here."""

    DELIVERY_RECEIPT: Final = 0x04
    UDHI: Final = 0x40


class DataCoding:
    """data_coding values the simulator writes."""

    DEFAULT: Final = 0x00
    IA5: Final = 0x01
    UCS2: Final = 0x08


class PduError(ValueError):
    """A PDU body could not be decoded; ``status`` is the command_status to answer with."""

    def __init__(self, message: str, status: CommandStatus = CommandStatus.ESME_RINVMSGLEN) -> None:
        super().__init__(message)
        self.status = status


class BindRequest(NamedTuple):
    """The fields of bind_transmitter / bind_receiver / bind_transceiver the simulator checks."""

    system_id: str
    password: str
    system_type: str
    interface_version: int


class SubmitSm(NamedTuple):
    """The submit_sm fields the simulator uses; protocol_id, priority and the schedule are skipped.

    ``short_message`` holds ``message_payload`` instead when the SMSC got the text in that TLV;
    ``validity_period`` is the raw SMPP time string ("" when absent).
    """

    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    registered_delivery: int
    data_coding: int
    short_message: bytes
    validity_period: str = ""


def _cstring_end(body: bytes, pos: int, max_len: int, what: str, status: CommandStatus) -> int:
    """Index of the NUL ending the C-octet string at ``pos``; ``max_len`` counts the NUL."""
    end = body.find(b"\x00", pos, pos + max_len)
    if end < 0:
        raise PduError(f"{what}: missing NUL within {max_len} octets", status)
    return end


def decode_bind(body: bytes) -> BindRequest:
    """Decode a bind_* body; raises :class:`PduError` when a field is unterminated or too long."""
    end = _cstring_end(body, 0, 16, "system_id", CommandStatus.ESME_RINVSYSID)
    system_id = body[:end].decode("latin-1")
    pos = end + 1
    # SMPP 3.4 allows 8 characters; longer passwords are read anyway so the account check, not the
    # codec, decides (smpplib cuts them to 8, other ESMEs send them whole).
    end = _cstring_end(body, pos, 65, "password", CommandStatus.ESME_RINVPASWD)
    password = body[pos:end].decode("latin-1")
    pos = end + 1
    end = _cstring_end(body, pos, 13, "system_type", CommandStatus.ESME_RINVMSGLEN)
    system_type = body[pos:end].decode("latin-1")
    pos = end + 1
    # interface_version, addr_ton, addr_npi and address_range follow; only the version is kept,
    # and an ESME that stops after system_type is tolerated as real SMSCs do.
    interface_version = body[pos] if pos < len(body) else 0
    return BindRequest(system_id, password, system_type, interface_version)


def decode_submit_sm(body: bytes) -> SubmitSm:
    """Decode a submit_sm body (SMPP 3.4 §4.4.1), reading only what the simulator needs.

    Raises :class:`PduError` with the status to answer: ESME_RINVSRCADR / ESME_RINVDSTADR for
    unterminated addresses, ESME_RINVMSGLEN for a truncated body or an sm_length past its end.
    """
    try:
        # service_type (max 6 with NUL)
        pos = _cstring_end(body, 0, 6, "service_type", CommandStatus.ESME_RINVMSGLEN) + 1
        source_ton = body[pos]
        source_npi = body[pos + 1]
        pos += 2
        end = _cstring_end(body, pos, 21, "source_addr", CommandStatus.ESME_RINVSRCADR)
        source_addr = body[pos:end].decode("latin-1")
        pos = end + 1
        dest_ton = body[pos]
        dest_npi = body[pos + 1]
        pos += 2
        end = _cstring_end(body, pos, 21, "destination_addr", CommandStatus.ESME_RINVDSTADR)
        destination_addr = body[pos:end].decode("latin-1")
        # esm_class, protocol_id, priority_flag
        esm_class = body[end + 1]
        pos = end + 4
        # schedule_delivery_time and validity_period: empty or 16 characters, NUL-terminated.
        pos = _cstring_end(body, pos, 17, "schedule_delivery_time", CommandStatus.ESME_RINVMSGLEN) + 1
        end = _cstring_end(body, pos, 17, "validity_period", CommandStatus.ESME_RINVMSGLEN)
        validity_period = body[pos:end].decode("latin-1")
        pos = end + 1
        registered_delivery = body[pos]
        # replace_if_present_flag at pos + 1, sm_default_msg_id at pos + 3
        data_coding = body[pos + 2]
        sm_length = body[pos + 4]
    except IndexError:
        raise PduError("submit_sm body truncated") from None
    pos += 5
    if pos + sm_length > len(body):
        raise PduError(f"sm_length {sm_length} runs past the end of the PDU")
    short_message = body[pos : pos + sm_length]
    pos += sm_length
    if sm_length == 0 and pos < len(body):
        # Long texts may come in message_payload instead; TLVs are parsed only in that case so the
        # common path stays cheap.
        short_message = decode_tlvs(body, pos).get(Tag.MESSAGE_PAYLOAD, b"")
    return SubmitSm(
        source_ton,
        source_npi,
        source_addr,
        dest_ton,
        dest_npi,
        destination_addr,
        esm_class,
        registered_delivery,
        data_coding,
        short_message,
        validity_period,
    )


def decode_tlvs(body: bytes, pos: int) -> dict[int, bytes]:
    """Read the TLVs from ``pos`` to the end of ``body``; the first occurrence of a tag wins."""
    tlvs: dict[int, bytes] = {}
    size = len(body)
    while pos < size:
        if pos + 4 > size:
            raise PduError("truncated TLV header", CommandStatus.ESME_RINVOPTPARSTREAM)
        tag, length = struct.unpack_from(">HH", body, pos)
        pos += 4
        if pos + length > size:
            raise PduError(f"TLV 0x{tag:04X} runs past the end", CommandStatus.ESME_RINVOPTPARSTREAM)
        tlvs.setdefault(tag, body[pos : pos + length])
        pos += length
    return tlvs


def encode_tlv(tag: int, value: bytes) -> bytes:
    """One TLV: tag, length, value."""
    return struct.pack(">HH", tag, len(value)) + value


def encode_pdu(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    """A whole PDU: header plus ``body``."""
    return HEADER.pack(HEADER_LEN + len(body), command_id, status, sequence) + body


def encode_bind_resp(command_id: int, status: int, sequence: int, system_id: str) -> bytes:
    """bind_*_resp for the bind ``command_id``; an error response carries no body (§4.1.2)."""
    resp_id = command_id | RESPONSE_BIT
    if status != CommandStatus.ESME_ROK:
        return encode_pdu(resp_id, status, sequence)
    body = system_id.encode("latin-1") + b"\x00" + encode_tlv(Tag.SC_INTERFACE_VERSION, b"\x34")
    return encode_pdu(resp_id, status, sequence, body)


def encode_submit_sm_resp(status: int, sequence: int, message_id: str) -> bytes:
    """submit_sm_resp; with an error status the body is omitted, as SMPP 3.4 §4.4.2 allows."""
    if status != CommandStatus.ESME_ROK:
        return HEADER.pack(HEADER_LEN, CommandId.SUBMIT_SM_RESP, status, sequence)
    body = message_id.encode("ascii") + b"\x00"
    return HEADER.pack(HEADER_LEN + len(body), CommandId.SUBMIT_SM_RESP, status, sequence) + body


def encode_deliver_sm_body(
    *,
    source_addr_ton: int,
    source_addr_npi: int,
    source_addr: str,
    dest_addr_ton: int,
    dest_addr_npi: int,
    destination_addr: str,
    esm_class: int,
    data_coding: int,
    short_message: bytes,
    tlvs: bytes = b"",
) -> bytes:
    """The body of a deliver_sm (§4.6.1); the header is added when a session sends it.

    A ``short_message`` longer than 254 octets goes into ``message_payload`` instead, as SMPP
    requires. ``tlvs`` is already-encoded optional parameters (see :func:`encode_tlv`).
    """
    if len(short_message) > 254:
        tlvs = encode_tlv(Tag.MESSAGE_PAYLOAD, short_message) + tlvs
        short_message = b""
    return b"".join(
        (
            b"\x00",  # service_type
            bytes((source_addr_ton, source_addr_npi)),
            source_addr.encode("latin-1"),
            b"\x00",
            bytes((dest_addr_ton, dest_addr_npi)),
            destination_addr.encode("latin-1"),
            b"\x00",
            # esm_class, protocol_id, priority_flag, empty schedule and validity times,
            # registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id
            bytes((esm_class, 0, 0, 0, 0, 0, 0, data_coding, 0, len(short_message))),
            short_message,
            tlvs,
        )
    )
