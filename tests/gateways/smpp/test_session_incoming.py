"""Decoding incoming PDUs tolerantly, and batching deliver_sm for the caller (session_incoming).

deliver_sm bodies come from the simulator's own encoder (gateways.smpp.pdu), an implementation
independent of the decoder under test, plus hand-made TLVs for the cases smpplib gets wrong.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

import pytest

from gateways.smpp.pdu import encode_deliver_sm_body, encode_tlv
from gateways.smpp.session_incoming import (
    MAX_PDU_LENGTH,
    DeliverBatcher,
    Header,
    Incoming,
    PduError,
    parse_deliver_sm,
    parse_header,
    parse_message_id,
)
from gateways.smpp.session_util import Deliver, SessionCounters

RECEIPT_TEXT = b"id:0A1B2C sub:001 dlvrd:001 submit date:2904301500 done date:2904301501 stat:DELIVRD err:000 text:"


def deliver_body(short_message: bytes = RECEIPT_TEXT, tlvs: bytes = b"", esm_class: int = 0x04) -> bytes:
    return encode_deliver_sm_body(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="84912345678",
        dest_addr_ton=5,
        dest_addr_npi=0,
        destination_addr="TCTK",
        esm_class=esm_class,
        data_coding=0,
        short_message=short_message,
        tlvs=tlvs,
    )


def test_a_receipt_with_its_tlvs() -> None:
    body = deliver_body(tlvs=encode_tlv(0x001E, b"0A1B2C\0") + encode_tlv(0x0427, b"\x02"))

    deliver = parse_deliver_sm(body)

    assert deliver == Deliver(
        source_addr="84912345678",
        destination_addr="TCTK",
        esm_class=0x04,
        data_coding=0,
        short_message=RECEIPT_TEXT,
        receipted_message_id="0A1B2C",
        message_state=2,
    )
    assert deliver.is_receipt


def test_tlvs_smpplib_chokes_on_are_skipped_and_a_missing_nul_keeps_the_whole_id() -> None:
    # 0x0425 delivery_failure_reason makes smpplib raise KeyError in a deliver_sm; a vendor TLV
    # too; and smpplib would drop the last character of an id sent without its NUL.
    tlvs = encode_tlv(0x0425, b"\x01") + encode_tlv(0x1401, b"vendor") + encode_tlv(0x001E, b"0A1B2C")

    deliver = parse_deliver_sm(deliver_body(tlvs=tlvs))

    assert deliver.receipted_message_id == "0A1B2C"
    assert deliver.message_state is None


def test_an_mo_message_in_message_payload() -> None:
    text = ("Tôi muốn hủy đăng ký " * 10).encode("utf-16-be")  # > 254 octets: goes in message_payload

    deliver = parse_deliver_sm(deliver_body(short_message=text, esm_class=0))

    assert deliver.short_message == text
    assert not deliver.is_receipt
    assert deliver.receipted_message_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"\0\x01\x01849",  # ends inside source_addr
        deliver_body()[:-10],  # short_message runs past the end
        deliver_body(tlvs=struct.pack(">HH", 0x001E, 40) + b"short"),  # TLV runs past the end
    ],
)
def test_a_truncated_deliver_sm_is_a_pdu_error(body: bytes) -> None:
    with pytest.raises(PduError):
        parse_deliver_sm(body)


def test_submit_sm_resp_message_id_with_or_without_nul() -> None:
    assert parse_message_id(b"5395055dfd\0") == "5395055dfd"
    assert parse_message_id(b"5395055dfd") == "5395055dfd"
    assert parse_message_id(b"") is None
    assert parse_message_id(b"\0") is None


def test_header_lengths_out_of_range_are_refused() -> None:
    assert parse_header(struct.pack(">LLLL", 16, 0x80000015, 0, 7)) == Header(16, 0x80000015, 0, 7)
    for length in (15, MAX_PDU_LENGTH + 1):
        with pytest.raises(PduError):
            parse_header(struct.pack(">LLLL", length, 0x15, 0, 1))


class RecordingSource:
    """Stands in for a Link: records the acknowledgements it was asked to send."""

    def __init__(self) -> None:
        self.acks: list[tuple[list[int], int]] = []

    def ack_delivers(self, sequences: Sequence[int], status: int) -> None:
        self.acks.append((list(sequences), status))


def receipt(n: int) -> Deliver:
    return Deliver("84912345678", "TCTK", 0x04, 0, b"", f"id{n}", 2)


def test_batches_hold_at_most_200_and_are_acked_after_the_handler() -> None:
    source = RecordingSource()
    batches: list[int] = []
    acks_seen_by_handler: list[int] = []

    def handler(batch: Sequence[Deliver]) -> None:
        acks_seen_by_handler.append(len(source.acks))
        batches.append(len(batch))

    counters = SessionCounters()
    batcher = DeliverBatcher("unit", handler, counters)
    for n in range(450):  # all queued before the thread starts: full batches
        batcher.put(Incoming(source, n, receipt(n)))
    batcher.thread.start()
    batcher.stop(timeout=5)

    assert batches == [200, 200, 50]
    assert acks_seen_by_handler == [0, 1, 2]  # each batch acked only after its handler call
    assert [seqs for seqs, _ in source.acks] == [list(range(200)), list(range(200, 400)), list(range(400, 450))]
    assert {status for _, status in source.acks} == {0}
    assert counters.snapshot()["delivers"] == 450


def test_a_failing_handler_answers_the_batch_with_a_temporary_error() -> None:
    source = RecordingSource()
    done = threading.Event()

    def handler(batch: Sequence[Deliver]) -> None:
        done.set()
        raise RuntimeError("database down")

    counters = SessionCounters()
    batcher = DeliverBatcher("unit", handler, counters)
    batcher.thread.start()
    batcher.put(Incoming(source, 9, receipt(9)))
    assert done.wait(5)
    batcher.stop(timeout=5)

    assert source.acks == [([9], 0x64)]
    assert counters.snapshot()["deliver_failures"] == 1
