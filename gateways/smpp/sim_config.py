"""Configuration of the SMSC simulator: accounts, receipt behaviour and injectable faults.

Everything here is a plain dataclass read on every PDU, so a test may flip a fault on a running
simulator (``smsc.config.unanswered_every = 5``) and the next submit_sm sees it. Values are
checked when the objects are built, not when changed later. Import these names from
:mod:`gateways.smpp.simulator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["MESSAGE_STATES", "Account", "SimulatorConfig", "demo_config"]

# message_state TLV (0x0427) value for every stat word of a receipt text (SMPP 3.4 §5.2.28).
MESSAGE_STATES: Final[dict[str, int]] = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}


@dataclass
class Account:
    """One ESME account (system_id/password) and the limits the SMSC holds it to."""

    system_id: str
    password: str
    # Max submit_sm accepted per calendar second for this account, all its sessions together;
    # above it the SMSC answers 0x58 ESME_RTHROTTLED, as carriers do.
    tps: float | None = None
    # Concurrent binds allowed; one more is refused with 0x0D ESME_RBINDFAIL.
    max_binds: int | None = None
    # Refuse every bind (0x0D), e.g. an account the carrier suspended.
    fail_bind: bool = False
    # Answer every submit_sm of this account with this error status (a route that is failing).
    reject_status: int | None = None

    def __post_init__(self) -> None:
        # SMPP 3.4 caps system_id at 15 characters (plus the NUL). The password cap (8) is not
        # enforced: longer ones are accepted in full or cut to 8, which is what smpplib sends.
        if not 0 < len(self.system_id) <= 15:
            raise ValueError(f"system_id must be 1..15 characters: {self.system_id!r}")
        if self.tps is not None and not (self.tps > 0 and math.isfinite(self.tps)):
            raise ValueError(f"tps must be a positive number: {self.tps!r}")
        if self.max_binds is not None and self.max_binds < 1:
            raise ValueError(f"max_binds must be at least 1: {self.max_binds!r}")


def _default_accounts() -> list[Account]:
    return [Account("loa", "loa")]


def _positive_or_none(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive integer or None: {value!r}")


@dataclass
class SimulatorConfig:
    """How the simulated SMSC behaves. Every fault is off by default.

    Counters behind the ``*_every`` / ``*_after`` faults are per session (per TCP connection),
    counting every submit_sm the session sent while bound.
    """

    host: str = "127.0.0.1"
    port: int = 2775  # 0 = ephemeral (tests); Smsc.port has the real one after start()
    accounts: list[Account] = field(default_factory=_default_accounts)
    # Send deliver_sm receipts as registered_delivery asks: bit 0 = always, bit 1 = failures only.
    receipts: bool = True
    receipt_delay_s: tuple[float, float] = (0.05, 0.2)  # uniform range after the submit
    # Mix of final stat words, as weights; e.g. {"DELIVRD": .9, "UNDELIV": .05, "EXPIRED": .05}.
    outcomes: dict[str, float] = field(default_factory=lambda: {"DELIVRD": 1.0})
    # How message ids are written in submit_sm_resp (lower-case hex, or decimal digits).
    id_base: Literal["hex", "decimal"] = "hex"
    # How the same number is written in the receipt text and receipted_message_id TLV.
    receipt_id_base: Literal["same", "hex", "decimal"] = "same"
    receipt_id_zero_pad: int = 0  # left-pad receipt ids with zeros to this width
    receipt_tlvs: bool = True  # receipted_message_id (0x001E) and message_state (0x0427) TLVs too
    receipt_before_response: bool = False  # write the receipt *before* the submit_sm_resp
    duplicate_receipts: bool = False  # send every receipt twice
    enroute_first: bool = False  # an ENROUTE intermediate receipt half-way to the final one
    # A receipt the ESME answers with an error status is offered again after this delay.
    redeliver_delay_s: float = 1.0
    # destination_addr prefix → command_status to answer, e.g. {"8499": 0x0B}.
    reject_prefixes: dict[str, int] = field(default_factory=dict)
    # Answer accepted submit_sm this many seconds late (a slow SMSC: the ESME's window fills).
    response_delay_s: float = 0.0
    # Close each session's TCP connection right after answering its Nth submit_sm: no unbind,
    # the submits already in flight behind it are never read nor answered.
    drop_after: int | None = None
    # Accept every Nth submit_sm (it is logged and gets its receipt) but never answer it: the
    # ambiguous case that makes an at-least-once ESME resend, i.e. a duplicate.
    unanswered_every: int | None = None
    # Answer every Nth submit_sm with generic_nack (status 0x08 ESME_RSYSERR); it is not accepted.
    generic_nack_every: int | None = None
    # After answering the Nth submit_sm of a session, send unbind and close once it is answered.
    unbind_after: int | None = None
    # Keep SmscStats.log and the duplicate index. Both grow with every accepted submit: turn off
    # for a simulator that runs for days.
    keep_log: bool = True

    def __post_init__(self) -> None:
        low, high = self.receipt_delay_s
        if not 0 <= low <= high:
            raise ValueError(f"receipt_delay_s must be (low, high) with 0 <= low <= high: {(low, high)}")
        if not 0 <= self.response_delay_s <= 60:
            raise ValueError(f"response_delay_s must be within 0..60 seconds: {self.response_delay_s!r}")
        unknown = set(self.outcomes) - set(MESSAGE_STATES)
        if unknown:
            raise ValueError(f"unknown receipt stat words in outcomes: {sorted(unknown)}")
        if any(w < 0 for w in self.outcomes.values()) or sum(self.outcomes.values()) <= 0:
            raise ValueError("outcomes weights must be non-negative with a positive sum")
        if self.id_base not in ("hex", "decimal"):
            raise ValueError(f"id_base must be 'hex' or 'decimal': {self.id_base!r}")
        if self.receipt_id_base not in ("same", "hex", "decimal"):
            raise ValueError(f"receipt_id_base must be 'same', 'hex' or 'decimal': {self.receipt_id_base!r}")
        if not 0 <= self.receipt_id_zero_pad <= 64:
            raise ValueError("receipt_id_zero_pad must be within 0..64 (ids are at most 65 octets)")
        for name in ("drop_after", "unanswered_every", "generic_nack_every", "unbind_after"):
            _positive_or_none(name, getattr(self, name))
        ids = [a.system_id for a in self.accounts]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate system_id in accounts: {ids}")


def demo_config(port: int = 2775) -> SimulatorConfig:
    """The simulator `loa run` / `loa demo` wire in: one account per route, no throttling."""
    return SimulatorConfig(
        port=port,
        accounts=[
            Account("viettel", "viettel-pw"),
            Account("vinaphone", "vinaphone-pw"),
            Account("default", "default-pw"),
        ],
    )
