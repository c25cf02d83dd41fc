"""Account rules of the SMSC simulator: who may bind, and how fast an account may submit."""

from __future__ import annotations

from gateways.smpp.pdu import BindRequest, CommandStatus
from gateways.smpp.sim_config import Account, SimulatorConfig
from gateways.smpp.sim_stats import SmscStats

__all__ = ["TpsGate", "authorize_bind"]


def _password_ok(sent: str, expected: str) -> bool:
    # smpplib cuts passwords to the 8 characters SMPP 3.4 allows, so the cut form is accepted too.
    return sent == expected or (len(expected) > 8 and sent == expected[:8])


def authorize_bind(
    config: SimulatorConfig, stats: SmscStats, request: BindRequest
) -> tuple[CommandStatus, Account | None]:
    """The bind_resp status for ``request``, and the account when the bind is accepted.

    Unknown system_id → 0x0F ESME_RINVSYSID; wrong password → 0x0E ESME_RINVPASWD; a suspended
    account (``fail_bind``) or one already at ``max_binds`` bound sessions → 0x0D ESME_RBINDFAIL.
    """
    account = next((a for a in config.accounts if a.system_id == request.system_id), None)
    if account is None:
        return CommandStatus.ESME_RINVSYSID, None
    if not _password_ok(request.password, account.password):
        return CommandStatus.ESME_RINVPASWD, None
    if account.fail_bind:
        return CommandStatus.ESME_RBINDFAIL, None
    if account.max_binds is not None and stats.sessions(account.system_id) >= account.max_binds:
        return CommandStatus.ESME_RBINDFAIL, None
    return CommandStatus.ESME_ROK, account


class TpsGate:
    """Counts accepted submit_sm per account and calendar second, all sessions together.

    Carriers cap an account per calendar second rather than with a sliding window, so a burst
    at the end of one second and the start of the next is allowed, as it is on real SMSCs.
    """

    def __init__(self) -> None:
        self._windows: dict[str, list[int]] = {}

    def admit(self, account: Account, second: int) -> bool:
        """Whether one more submit_sm fits in ``account``'s cap for ``second``; counts it if so."""
        if account.tps is None:
            return True
        window = self._windows.get(account.system_id)
        if window is None or window[0] != second:
            window = self._windows[account.system_id] = [second, 0]
        if window[1] >= account.tps:
            return False
        window[1] += 1
        return True
