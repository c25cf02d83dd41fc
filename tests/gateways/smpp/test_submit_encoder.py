"""The hand-written submit_sm and deliver_sm_resp encoders write exactly what smpplib writes for the
same fields."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import smpp

from gateways.smpp.client import _ENCODER, Submit
from gateways.smpp.session_util import submit_sm_fields


class _Sequence:
    def __init__(self, sequence: int) -> None:
        self.sequence = sequence

    def next_sequence(self) -> int:
        return self.sequence


def smpplib_bytes(sequence: int, fields: dict[str, object]) -> bytes:
    return bytes(smpp.make_pdu("submit_sm", client=_Sequence(sequence), **fields).generate())


# Wider than `Submit` accepts (it refuses over-long or non-ASCII addresses): the encoder must still
# cut and encode as smpplib does.
addresses = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=25)


@settings(max_examples=400, deadline=None)
@given(
    sequence=st.integers(min_value=1, max_value=0x7FFFFFFF),
    service_type=st.sampled_from(["", "CMT", "TOOLONG"]),
    source=addresses,
    destination=addresses,
    tons=st.tuples(*[st.integers(min_value=0, max_value=6)] * 4),
    short_message=st.binary(max_size=254),
    octets=st.tuples(*[st.integers(min_value=0, max_value=255)] * 3),
    validity=st.one_of(st.none(), st.just(""), st.from_regex(r"[0-9]{12}00[0-9]00\+", fullmatch=True)),
)
def test_matches_smpplib_byte_for_byte(
    sequence: int,
    service_type: str,
    source: str,
    destination: str,
    tons: tuple[int, int, int, int],
    short_message: bytes,
    octets: tuple[int, int, int],
    validity: str | None,
) -> None:
    fields: dict[str, object] = {
        "service_type": service_type,
        "source_addr_ton": tons[0],
        "source_addr_npi": tons[1],
        "source_addr": source,
        "dest_addr_ton": tons[2],
        "dest_addr_npi": tons[3],
        "destination_addr": destination,
        "esm_class": octets[0],
        "registered_delivery": octets[1],
        "data_coding": octets[2],
        "short_message": short_message,
        "validity_period": validity,
    }
    assert _ENCODER.request("submit_sm", sequence, **fields) == smpplib_bytes(sequence, fields)


def test_what_a_send_task_submits_matches_smpplib() -> None:
    item = Submit(
        ref=(1, 0),
        source_addr="TCTK",
        destination="+84961234567",
        short_message=bytes.fromhex("0500030a0201") + "Tổng điều tra".encode("utf-16-be"),
        data_coding=8,
        esm_class=0x40,
        validity_period=datetime(2026, 12, 6, 15, 0, tzinfo=UTC),
    )
    fields = submit_sm_fields(item)
    assert _ENCODER.request("submit_sm", 42, **fields) == smpplib_bytes(42, fields)


def test_other_fields_still_go_through_smpplib() -> None:
    fields = {"source_addr": "TCTK", "destination_addr": "84961234567", "short_message": b"hi", "priority_flag": 1}
    assert _ENCODER.request("submit_sm", 7, **fields) == smpplib_bytes(7, fields)


@settings(max_examples=200, deadline=None)
@given(sequence=st.integers(min_value=1, max_value=0x7FFFFFFF), status=st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_deliver_sm_resp_matches_smpplib_byte_for_byte(sequence: int, status: int) -> None:
    pdu = smpp.make_pdu("deliver_sm_resp", client=_Sequence(sequence), status=status)
    pdu.sequence = sequence
    assert _ENCODER.response("deliver_sm_resp", sequence, status) == bytes(pdu.generate())
