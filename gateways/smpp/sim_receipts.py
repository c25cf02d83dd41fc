"""Message ids, delivery receipts and MO messages as the SMSC simulator writes them.

Pure functions that turn an accepted submit_sm into deliver_sm bodies. The receipt text follows
the de-facto SMPP 3.4 appendix B format
``id:<id> sub:001 dlvrd:001 submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DELIVRD err:000
text:<first 20 chars>``. Dates are UTC, which is what Loa's receipt parser assumes; real carriers
often write local time.
"""

from __future__ import annotations

import random
import time
from functools import lru_cache
from typing import Literal

from gateways.smpp.pdu import DataCoding, EsmClass, SubmitSm, Tag, encode_deliver_sm_body, encode_tlv
from gateways.smpp.sim_config import MESSAGE_STATES, SimulatorConfig

__all__ = [
    "choose_outcome",
    "format_id",
    "mo_body",
    "preview",
    "receipt_body",
    "receipt_id",
]

# States that say nothing bad happened (yet): their receipts carry err:000.
_NOT_FAILED = frozenset(("DELIVRD", "ENROUTE", "ACCEPTD"))


def format_id(number: int, base: Literal["hex", "decimal"]) -> str:
    """A message id as written in submit_sm_resp: lower-case hex or decimal digits."""
    return f"{number:x}" if base == "hex" else str(number)


def receipt_id(number: int, config: SimulatorConfig) -> str:
    """The same message's id as the receipt writes it (base and zero padding per ``config``)."""
    base = config.id_base if config.receipt_id_base == "same" else config.receipt_id_base
    text = format_id(number, base)
    return text.rjust(config.receipt_id_zero_pad, "0")


def choose_outcome(outcomes: dict[str, float]) -> str:
    """Draw a final stat word from the configured weights."""
    if len(outcomes) == 1:
        return next(iter(outcomes))
    return random.choices(list(outcomes), weights=list(outcomes.values()))[0]


@lru_cache(maxsize=8)
def _minute_stamp(minute: int) -> str:
    # Receipt dates have minute resolution, so one strftime per minute serves every receipt.
    return time.strftime("%y%m%d%H%M", time.gmtime(minute * 60))


def preview(short_message: bytes, esm_class: int, data_coding: int) -> str:
    """The first 20 characters of a message for the receipt's ``text:`` field, ASCII only.

    The user data header of a segment is skipped; UCS-2 is decoded; anything that is not
    printable ASCII becomes ``?`` so the receipt text stays plain ASCII whatever was sent.
    """
    if esm_class & EsmClass.UDHI and short_message:
        short_message = short_message[short_message[0] + 1 :]
    if data_coding == DataCoding.UCS2:
        text = short_message[:40].decode("utf-16-be", errors="replace")[:20]
    else:
        text = short_message[:20].decode("latin-1")
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def receipt_body(
    submit: SubmitSm,
    *,
    receipt_message_id: str,
    stat: str,
    submitted_at: float,
    done_at: float,
    tlvs: bool,
) -> bytes:
    """deliver_sm body of the receipt for ``submit``: addresses swapped, esm_class 0x04."""
    state = MESSAGE_STATES[stat]
    text = (
        f"id:{receipt_message_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'}"
        f" submit date:{_minute_stamp(int(submitted_at // 60))}"
        f" done date:{_minute_stamp(int(done_at // 60))}"
        f" stat:{stat} err:{'000' if stat in _NOT_FAILED else f'{state:03d}'}"
        f" text:{preview(submit.short_message, submit.esm_class, submit.data_coding)}"
    )
    optional = b""
    if tlvs:
        optional = encode_tlv(Tag.RECEIPTED_MESSAGE_ID, receipt_message_id.encode("ascii") + b"\x00") + encode_tlv(
            Tag.MESSAGE_STATE, bytes((state,))
        )
    return encode_deliver_sm_body(
        source_addr_ton=submit.dest_addr_ton,
        source_addr_npi=submit.dest_addr_npi,
        source_addr=submit.destination_addr,
        dest_addr_ton=submit.source_addr_ton,
        dest_addr_npi=submit.source_addr_npi,
        destination_addr=submit.source_addr,
        esm_class=EsmClass.DELIVERY_RECEIPT,
        data_coding=DataCoding.DEFAULT,
        short_message=text.encode("ascii"),
        tlvs=optional,
    )


def mo_body(source_addr: str, destination_addr: str, text: str) -> bytes:
    """deliver_sm body of a mobile-originated message (a reply from a handset).

    ASCII text goes as IA5 (data_coding 1), anything else as UCS-2; a UCS-2 text over 254 octets
    travels in message_payload. The handset number is international (TON 1, NPI 1); the short code
    it was sent to is national when it is all digits.
    """
    try:
        payload, coding = text.encode("ascii"), DataCoding.IA5
    except UnicodeEncodeError:
        payload, coding = text.encode("utf-16-be"), DataCoding.UCS2
    dest_ton = 2 if destination_addr.isdigit() else 5
    return encode_deliver_sm_body(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=source_addr,
        dest_addr_ton=dest_ton,
        dest_addr_npi=1 if dest_ton == 2 else 0,
        destination_addr=destination_addr,
        esm_class=0,
        data_coding=coding,
        short_message=payload,
    )
