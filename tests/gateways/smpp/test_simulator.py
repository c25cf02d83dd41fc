"""The SMSC simulator driven by a real SMPP client (smpplib) over loopback TCP.

Each test starts its own simulator on an ephemeral port. Responses come back in request order on
one session, so "nothing was answered" is proven by sending enquire_link afterwards and seeing
its response arrive first, never by waiting for a timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from gateways.smpp import sim_session
from gateways.smpp.simulator import Account, SimulatorConfig, Smsc, demo_config, run_in_thread

_ROOT = Path(__file__).resolve().parents[3]
_HANDSET = "84912345678"
_FAST = (0.0, 0.0)  # receipts on the next 10 ms tick


def _config(**overrides: Any) -> SimulatorConfig:
    fields: dict[str, Any] = {"port": 0, "receipt_delay_s": _FAST}
    fields.update(overrides)
    return SimulatorConfig(**fields)


@pytest.fixture
def smsc_factory() -> Iterator[Callable[..., Smsc]]:
    """Start simulators with ``_config(**overrides)``; all are stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> Smsc:
            return stack.enter_context(run_in_thread(_config(**overrides)))

        yield start


def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s")
        time.sleep(0.005)


class Esme:
    """A thin synchronous ESME on smpplib: explicit reads, explicit deliver_sm_resp."""

    def __init__(self, port: int, mode: str = "transceiver", system_id: str = "loa", password: str = "loa"):
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=5, allow_unknown_opt_params=True)
        self.client.connect()
        self.mode = mode
        self.bind_resp = getattr(self.client, f"bind_{mode}")(system_id=system_id, password=password)

    def submit(self, destination: str = _HANDSET, text: bytes = b"hello", **fields: Any) -> int:
        fields.setdefault("registered_delivery", 1)
        pdu = self.client.send_message(
            source_addr_ton=5,
            source_addr_npi=0,
            source_addr="TCTK",
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr=destination,
            short_message=text,
            **fields,
        )
        sequence: int = pdu.sequence
        return sequence

    def read(self) -> Any:
        return self.client.read_pdu()

    def ack(self, pdu: Any, status: int = 0) -> None:
        resp = smpplib.smpp.make_pdu("deliver_sm_resp", client=self.client, status=status)
        resp.sequence = pdu.sequence
        self.client.send_pdu(resp)

    def read_until(self, done: Callable[[Any], bool], limit: int = 100) -> list[Any]:
        """Read PDUs up to and including the first one ``done`` accepts."""
        pdus = []
        for _ in range(limit):
            pdus.append(self.read())
            if done(pdus[-1]):
                return pdus
        raise AssertionError(f"no matching PDU among {[p.command for p in pdus]}")

    def ping(self) -> list[Any]:
        """Everything the SMSC sent before answering a fresh enquire_link (which ends the list)."""
        pdu = smpplib.smpp.make_pdu("enquire_link", client=self.client)
        self.client.send_pdu(pdu)
        return self.read_until(lambda p: p.command == "enquire_link_resp" and p.sequence == pdu.sequence)

    def responses(self, count: int) -> list[Any]:
        """The next ``count`` submit_sm responses (submit_sm_resp or generic_nack), skipping the rest."""
        found: list[Any] = []
        while len(found) < count:
            pdu = self.read()
            if pdu.command in ("submit_sm_resp", "generic_nack"):
                found.append(pdu)
        return found

    def close(self) -> None:
        self.client.disconnect()  # idempotent


@pytest.fixture
def esmes() -> Iterator[Callable[..., Esme]]:
    opened: list[Esme] = []

    def open_esme(port: int, **kwargs: Any) -> Esme:
        esme = Esme(port, **kwargs)
        opened.append(esme)
        return esme

    yield open_esme
    for esme in opened:
        esme.close()


def _fields(receipt_text: bytes) -> dict[str, str]:
    """The receipt text's fields ("submit date" becomes "submit_date")."""
    text = receipt_text.decode("ascii")
    head, _, free_text = text.partition(" text:")
    found = dict(re.findall(r"(\w+(?: date)?):(\S+)", head))
    found = {key.replace(" ", "_"): value for key, value in found.items()}
    found["text"] = free_text
    return found


def _bind_error(port: int, **kwargs: Any) -> int:
    client = smpplib.client.Client("127.0.0.1", port, timeout=5, allow_unknown_opt_params=True)
    client.connect()
    try:
        with pytest.raises(smpplib.exceptions.PDUError) as caught:
            client.bind_transceiver(**kwargs)
        status: int = caught.value.args[1]
        return status
    finally:
        client.disconnect()


# -- binding ---------------------------------------------------------------------------------


def test_binds_in_every_mode_and_counts_sessions(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()

    for mode in ("transmitter", "receiver", "transceiver"):
        esme = esmes(smsc.port, mode=mode)
        assert (esme.bind_resp.status, esme.bind_resp.system_id) == (0, b"LoaSMSC")

    assert smsc.stats.sessions("loa") == 3
    assert smsc.stats.max_sessions("loa") == 3


@pytest.mark.parametrize(
    ("credentials", "status"),
    [
        ({"system_id": "loa", "password": "wrong"}, 0x0E),
        ({"system_id": "nobody", "password": "loa"}, 0x0F),
        ({"system_id": "frozen", "password": "pw"}, 0x0D),
    ],
)
def test_refuses_bad_credentials_and_suspended_accounts(
    smsc_factory: Callable[..., Smsc], credentials: dict[str, str], status: int
) -> None:
    smsc = smsc_factory(accounts=[Account("loa", "loa"), Account("frozen", "pw", fail_bind=True)])

    assert _bind_error(smsc.port, **credentials) == status
    assert smsc.stats.sessions(credentials["system_id"]) == 0


def test_demo_accounts_bind_with_passwords_smpplib_cuts_to_eight_characters(esmes: Any) -> None:
    config = demo_config(port=0)
    with run_in_thread(config) as smsc:
        for account in config.accounts:
            esme = esmes(smsc.port, system_id=account.system_id, password=account.password)
            assert esme.bind_resp.status == 0
        assert _bind_error(smsc.port, system_id="viettel", password="viettel") == 0x0E


def test_max_binds_refuses_one_bind_too_many_until_a_session_unbinds(
    smsc_factory: Callable[..., Smsc], esmes: Any
) -> None:
    smsc = smsc_factory(accounts=[Account("loa", "loa", max_binds=2)])
    first = esmes(smsc.port)
    esmes(smsc.port, mode="receiver")

    assert _bind_error(smsc.port, system_id="loa", password="loa") == 0x0D

    first.client.unbind()
    _eventually(lambda: smsc.stats.sessions("loa") == 1)
    esmes(smsc.port)
    assert smsc.stats.max_sessions("loa") == 2


def test_submit_needs_a_transmitting_bind(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()
    receiver = esmes(smsc.port, mode="receiver")
    receiver.client.state = smpplib.consts.SMPP_CLIENT_STATE_BOUND_TRX  # smpplib would refuse to send

    receiver.submit()

    assert receiver.read().status == 0x04
    assert smsc.stats.submits == 0


# -- submit_sm and receipts ------------------------------------------------------------------


def test_submit_gets_an_id_and_a_receipt_in_text_and_tlvs(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()
    esme = esmes(smsc.port)

    esme.submit(text=b"Census wave 1: please reply")
    resp = esme.read()
    receipt = esme.read()
    esme.ack(receipt)

    assert (resp.command, resp.status) == ("submit_sm_resp", 0)
    message_id = resp.message_id.decode()
    assert re.fullmatch(r"[0-9a-f]+", message_id)
    assert (receipt.command, receipt.esm_class) == ("deliver_sm", 0x04)
    fields = _fields(receipt.short_message)
    assert fields["id"] == message_id
    assert (fields["sub"], fields["dlvrd"], fields["stat"], fields["err"]) == ("001", "001", "DELIVRD", "000")
    assert fields["text"] == "Census wave 1: pleas"
    assert (receipt.receipted_message_id, receipt.message_state) == (message_id.encode(), 2)
    assert (receipt.source_addr, receipt.destination_addr) == (_HANDSET.encode(), b"TCTK")
    _eventually(lambda: smsc.stats.receipts_acked == 1)
    assert smsc.stats.receipts_sent == 1
    [record] = smsc.stats.log
    assert (record.system_id, record.destination_addr, record.short_message, record.message_id) == (
        "loa",
        _HANDSET,
        b"Census wave 1: please reply",
        message_id,
    )
    # Minute resolution, in UTC.
    assert fields["submit_date"] == time.strftime("%y%m%d%H%M", time.gmtime(record.received_at))
    assert fields["done_date"] >= fields["submit_date"]


@pytest.mark.parametrize(
    ("registered_delivery", "outcome", "receipt_expected"),
    [(0, "DELIVRD", False), (1, "UNDELIV", True), (2, "DELIVRD", False), (2, "EXPIRED", True)],
)
def test_receipts_follow_registered_delivery(
    smsc_factory: Callable[..., Smsc],
    esmes: Any,
    registered_delivery: int,
    outcome: str,
    receipt_expected: bool,
) -> None:
    smsc = smsc_factory(outcomes={outcome: 1.0})
    esme = esmes(smsc.port)

    esme.submit(registered_delivery=registered_delivery)
    # A second message that always gets a receipt: receipts due at the same moment leave in
    # submit order, so the first receipt read tells whether the first message had one.
    esme.submit(registered_delivery=1, text=b"marker")
    first_id, marker_id = (p.message_id for p in esme.responses(2))
    receipt = esme.read_until(lambda p: p.command == "deliver_sm")[-1]

    fields = _fields(receipt.short_message)
    if receipt_expected:
        assert receipt.receipted_message_id == first_id
        assert (fields["stat"], fields["dlvrd"]) == (outcome, "000")
        assert fields["err"] != "000"
        assert receipt.message_state == {"UNDELIV": 5, "EXPIRED": 3}[outcome]
    else:
        assert receipt.receipted_message_id == marker_id


def test_receipt_tlvs_can_be_left_out(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(receipt_tlvs=False)
    esme = esmes(smsc.port)

    esme.submit()
    message_id = esme.read().message_id
    receipt = esme.read()

    assert _fields(receipt.short_message)["id"].encode() == message_id
    assert (receipt.receipted_message_id, receipt.message_state) == (None, None)


@pytest.mark.parametrize(
    ("id_base", "receipt_id_base", "pad", "same_number"),
    [
        ("hex", "decimal", 0, lambda resp, rcpt: int(resp, 16) == int(rcpt, 10)),
        ("decimal", "hex", 0, lambda resp, rcpt: int(resp, 10) == int(rcpt, 16)),
        ("hex", "same", 20, lambda resp, rcpt: rcpt == resp.rjust(20, "0")),
        ("decimal", "same", 0, lambda resp, rcpt: rcpt == resp and resp.isdigit()),
    ],
)
def test_receipt_ids_are_written_as_configured(
    smsc_factory: Callable[..., Smsc],
    esmes: Any,
    id_base: str,
    receipt_id_base: str,
    pad: int,
    same_number: Callable[[str, str], bool],
) -> None:
    smsc = smsc_factory(id_base=id_base, receipt_id_base=receipt_id_base, receipt_id_zero_pad=pad)
    esme = esmes(smsc.port)

    esme.submit()
    resp_id = esme.read().message_id.decode()
    receipt = esme.read()
    text_id = _fields(receipt.short_message)["id"]

    assert same_number(resp_id, text_id)
    assert receipt.receipted_message_id.decode() == text_id


def test_receipt_before_response(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(receipt_before_response=True)
    esme = esmes(smsc.port)

    esme.submit()
    first, second = esme.read(), esme.read()

    assert (first.command, second.command) == ("deliver_sm", "submit_sm_resp")
    assert first.receipted_message_id == second.message_id


def test_duplicate_receipts_and_enroute_first(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(duplicate_receipts=True, enroute_first=True)
    esme = esmes(smsc.port)

    esme.submit()
    message_id = esme.read().message_id
    receipts = [esme.read() for _ in range(4)]

    assert [r.message_state for r in receipts] == [1, 1, 2, 2]
    assert [_fields(r.short_message)["stat"] for r in receipts] == [
        "ENROUTE",
        "ENROUTE",
        "DELIVRD",
        "DELIVRD",
    ]
    assert {r.receipted_message_id for r in receipts} == {message_id}
    assert smsc.stats.receipts_sent == 4


def test_receipts_wait_for_a_receiver_and_go_to_a_later_bind(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()
    transmitter = esmes(smsc.port, mode="transmitter")
    for n in range(3):
        transmitter.submit(text=b"msg %d" % n)
    ids = {p.message_id for p in transmitter.responses(3)}
    _eventually(lambda: smsc.queued("loa") == 3)

    receiver = esmes(smsc.port, mode="receiver")
    receipts = [receiver.read() for _ in range(3)]

    assert {r.receipted_message_id for r in receipts} == ids
    assert smsc.queued("loa") == 0


def test_unanswered_and_refused_receipts_are_delivered_again(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(redeliver_delay_s=0.02)
    esme = esmes(smsc.port)
    esme.submit()
    message_id = esme.read().message_id

    esme.ack(esme.read(), status=0x08)  # the ESME cannot store it right now
    again = esme.read()
    esme.close()  # ... and this time it never answers
    later = esmes(smsc.port, mode="receiver")
    third = later.read()
    later.ack(third)

    assert again.receipted_message_id == third.receipted_message_id == message_id
    _eventually(lambda: smsc.stats.receipts_acked == 1)
    assert smsc.stats.receipts_sent == 3


def test_segments_are_separate_submits_with_their_own_ids(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()
    esme = esmes(smsc.port)
    udh = b"\x05\x00\x03\x7f\x02"

    esme.submit(text=udh + b"\x01" + b"a" * 153, esm_class=0x40)
    esme.submit(text=udh + b"\x02" + b"b" * 10, esm_class=0x40)
    pdus = [esme.read() for _ in range(4)]  # two responses, two receipts

    resps = [p for p in pdus if p.command == "submit_sm_resp"]
    receipts = {p.receipted_message_id: _fields(p.short_message)["text"] for p in pdus if p.command == "deliver_sm"}
    assert len({r.message_id for r in resps}) == 2
    assert sorted(receipts.values()) == ["a" * 20, "b" * 10]
    assert [r.esm_class for r in smsc.stats.log] == [0x40, 0x40]


def test_message_ids_are_unique_across_sessions(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(receipts=False)
    ids = []
    for _ in range(2):
        esme = esmes(smsc.port)
        for n in range(50):
            esme.submit(text=b"%d" % n)
        ids += [p.message_id for p in esme.responses(50)]

    assert len(set(ids)) == 100 == smsc.stats.submits


def test_duplicates_count_repeated_destination_and_text(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(receipts=False)
    esme = esmes(smsc.port)
    for text in (b"one", b"two", b"one", b"one"):
        esme.submit(text=text)
    esme.submit(destination="84987654321", text=b"one")
    esme.responses(5)

    assert smsc.stats.duplicates() == 2
    smsc.stats.reset()
    assert (smsc.stats.duplicates(), smsc.stats.submits, smsc.stats.log) == (0, 0, [])
    assert smsc.stats.sessions("loa") == 1


# -- throttling, rejections and faults -------------------------------------------------------


def test_tps_cap_throttles_and_per_second_counts_every_submit(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(accounts=[Account("loa", "loa", tps=5)], receipts=False)
    first, second = esmes(smsc.port), esmes(smsc.port)
    for n in range(15):
        first.submit(text=b"a%d" % n)
        second.submit(text=b"b%d" % n)
    statuses = [p.status for p in first.responses(15) + second.responses(15)]

    accepted = statuses.count(0)
    assert statuses.count(0x58) == 30 - accepted > 0
    assert (smsc.stats.submits, smsc.stats.throttled) == (accepted, 30 - accepted)
    per_second = smsc.stats.per_second("loa")
    assert sum(per_second.values()) == 30
    accepted_per_second: dict[int, int] = {}
    for record in smsc.stats.log:
        second_of = int(record.received_at)
        accepted_per_second[second_of] = accepted_per_second.get(second_of, 0) + 1
    assert all(count <= 5 for count in accepted_per_second.values())
    assert all(per_second[s] >= count for s, count in accepted_per_second.items())


def test_reject_prefixes_answer_their_status(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(reject_prefixes={"8499": 0x0B, "84999": 0x45}, receipts=False)
    esme = esmes(smsc.port)

    for destination in ("84991234567", "84999123456", "84912345678"):
        esme.submit(destination=destination)

    assert [p.status for p in esme.responses(3)] == [0x0B, 0x45, 0]
    assert (smsc.stats.submits, smsc.stats.rejected) == (1, 2)
    assert sum(smsc.stats.per_second("loa").values()) == 3


def test_faults_can_be_switched_on_while_running(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(receipts=False)
    esme = esmes(smsc.port)
    esme.submit()
    assert esme.read().status == 0

    smsc.config.reject_prefixes = {"84": 0x14}
    esme.submit()

    assert esme.read().status == 0x14


def test_drop_after_closes_the_connection_leaving_the_rest_unanswered(
    smsc_factory: Callable[..., Smsc], esmes: Any
) -> None:
    smsc = smsc_factory(drop_after=3, receipts=False)
    esme = esmes(smsc.port)
    sequences = [esme.submit(text=b"%d" % n) for n in range(6)]

    answered = [esme.read() for _ in range(3)]
    with pytest.raises(smpplib.exceptions.ConnectionError):
        esme.read()

    assert [p.sequence for p in answered] == sequences[:3]
    assert smsc.stats.submits == 3
    _eventually(lambda: smsc.stats.sessions("loa") == 0)


def test_unanswered_every_accepts_but_never_answers(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(unanswered_every=2, receipts=False)
    esme = esmes(smsc.port)
    sequences = [esme.submit(text=b"%d" % n) for n in range(4)]

    answered = [p for p in esme.ping() if p.command == "submit_sm_resp"]

    assert [p.sequence for p in answered] == [sequences[0], sequences[2]]
    assert (smsc.stats.submits, smsc.stats.unanswered, len(smsc.stats.log)) == (4, 2, 4)


def test_generic_nack_every_nacks_without_accepting(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory(generic_nack_every=2, receipts=False)
    esme = esmes(smsc.port)
    sequences = [esme.submit(text=b"%d" % n) for n in range(4)]

    responses = esme.responses(4)

    assert [(p.command, p.sequence) for p in responses] == [
        ("submit_sm_resp", sequences[0]),
        ("generic_nack", sequences[1]),
        ("submit_sm_resp", sequences[2]),
        ("generic_nack", sequences[3]),
    ]
    assert responses[1].status == 0x08
    assert (smsc.stats.submits, smsc.stats.generic_nacks) == (2, 2)


def test_unbind_after_sends_unbind_and_closes_once_answered(
    smsc_factory: Callable[..., Smsc], esmes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a grace period far beyond the client's 5 s read timeout, only the unbind_resp can
    # close the connection in time.
    monkeypatch.setattr(sim_session, "UNBIND_GRACE_S", 60.0)
    smsc = smsc_factory(unbind_after=2, receipts=False)
    esme = esmes(smsc.port)
    esme.submit()
    esme.submit()

    pdus = [esme.read() for _ in range(3)]
    assert [p.command for p in pdus] == ["submit_sm_resp", "submit_sm_resp", "unbind"]
    assert smsc.stats.sessions("loa") == 0
    esme.submit()
    assert esme.read().status == 0x04  # no longer bound
    resp = smpplib.smpp.make_pdu("unbind_resp", client=esme.client)
    resp.sequence = pdus[2].sequence
    esme.client.send_pdu(resp)

    with pytest.raises(smpplib.exceptions.ConnectionError):
        esme.read()
    assert smsc.stats.submits == 2


def test_unbind_after_closes_even_when_the_esme_ignores_the_unbind(
    smsc_factory: Callable[..., Smsc], esmes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_session, "UNBIND_GRACE_S", 0.05)
    smsc = smsc_factory(unbind_after=1, receipts=False)
    esme = esmes(smsc.port)
    esme.submit()

    assert [esme.read().command for _ in range(2)] == ["submit_sm_resp", "unbind"]
    with pytest.raises(smpplib.exceptions.ConnectionError):
        esme.read()


# -- link management, MO, garbage --------------------------------------------------------------


def test_enquire_link_is_answered_bound_or_not(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()
    esme = esmes(smsc.port)
    assert esme.ping()[-1].status == 0
    with socket.create_connection(("127.0.0.1", smsc.port), timeout=5) as raw:
        raw.sendall(struct.pack(">IIII", 16, 0x15, 0, 77))
        assert _read_raw(raw) == (0x80000015, 0, 77)

    assert smsc.stats.enquire_links == 2


def test_client_unbind_is_answered_and_closes(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()
    esme = esmes(smsc.port)

    resp = esme.client.unbind()

    assert (resp.command, resp.status) == ("unbind_resp", 0)
    with pytest.raises(smpplib.exceptions.ConnectionError):
        esme.read()
    assert smsc.stats.sessions("loa") == 0


def test_send_mo_reaches_a_receiver(smsc_factory: Callable[..., Smsc], esmes: Any) -> None:
    smsc = smsc_factory()
    smsc.send_mo("loa", _HANDSET, "8088", "STOP")  # queued: nobody is bound yet
    esme = esmes(smsc.port, mode="receiver")
    smsc.send_mo("loa", _HANDSET, "8088", "Tôi đã trả lời")

    ascii_mo, unicode_mo = esme.read(), esme.read()
    esme.ack(ascii_mo)
    esme.ack(unicode_mo)

    assert (ascii_mo.esm_class, ascii_mo.data_coding, ascii_mo.short_message) == (0, 1, b"STOP")
    assert (ascii_mo.source_addr, ascii_mo.destination_addr) == (_HANDSET.encode(), b"8088")
    assert (unicode_mo.data_coding, unicode_mo.short_message) == (8, "Tôi đã trả lời".encode("utf-16-be"))
    _eventually(lambda: smsc.stats.mo_acked == 2)
    assert (smsc.stats.mo_sent, smsc.stats.receipts_sent) == (2, 0)


def _read_raw(sock: socket.socket) -> tuple[int, int, int]:
    header = b""
    while len(header) < 16:
        chunk = sock.recv(16 - len(header))
        assert chunk, "connection closed"
        header += chunk
    length, command_id, status, sequence = struct.unpack(">IIII", header)
    body = b""
    while len(body) < length - 16:
        body += sock.recv(length - 16 - len(body))
    return command_id, status, sequence


def _closed(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 5)
    return bool(readable) and sock.recv(1) == b""


def test_unknown_commands_and_garbled_framing_get_generic_nack(smsc_factory: Callable[..., Smsc]) -> None:
    smsc = smsc_factory()
    with socket.create_connection(("127.0.0.1", smsc.port), timeout=5) as raw:
        raw.sendall(struct.pack(">IIII", 16, 0x00000099, 0, 5))
        assert _read_raw(raw) == (0x80000000, 0x03, 5)

        raw.sendall(struct.pack(">IIII", 8, 0x00000004, 0, 6))
        assert _read_raw(raw) == (0x80000000, 0x02, 6)
        assert _closed(raw)


def test_malformed_submit_sm_gets_an_error_response(smsc_factory: Callable[..., Smsc]) -> None:
    smsc = smsc_factory()
    with socket.create_connection(("127.0.0.1", smsc.port), timeout=5) as raw:
        bind_body = b"loa\x00loa\x00\x00\x34\x00\x00\x00"
        raw.sendall(struct.pack(">IIII", 16 + len(bind_body), 0x09, 0, 1) + bind_body)
        assert _read_raw(raw) == (0x80000009, 0, 1)

        truncated = b"\x00\x01\x01" + b"TCTK"  # source_addr never ends
        raw.sendall(struct.pack(">IIII", 16 + len(truncated), 0x04, 0, 2) + truncated)
        assert _read_raw(raw) == (0x80000004, 0x0A, 2)

    assert (smsc.stats.submits, smsc.stats.rejected) == (0, 1)


# -- serve() ---------------------------------------------------------------------------------


def test_serve_logs_binds_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = (
        "import logging\n"
        "from gateways.smpp.simulator import SimulatorConfig, serve\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "serve(SimulatorConfig(port=0))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", first)
        assert match, first
        esme = Esme(int(match.group(1)))
        bound = proc.stderr.readline()
        esme.client.unbind()
        esme.close()
        unbound = proc.stderr.readline()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "bound loa as transceiver" in bound
    assert "unbind loa" in unbound
