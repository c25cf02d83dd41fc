"""The campaign state machine: the one place that says which transitions exist."""

from __future__ import annotations

from enum import StrEnum

from campaigns.models import CampaignStatus as S


class Action(StrEnum):
    LAUNCH = "launch"
    START = "start"  # the scheduler: scheduled → running when due
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    COMPLETE = "complete"
    FAIL = "fail"


TRANSITIONS: dict[tuple[S, Action], S] = {
    (S.DRAFT, Action.LAUNCH): S.SCHEDULED,
    (S.SCHEDULED, Action.START): S.RUNNING,
    (S.SCHEDULED, Action.PAUSE): S.PAUSED,
    (S.RUNNING, Action.PAUSE): S.PAUSED,
    (S.PAUSED, Action.RESUME): S.RUNNING,
    (S.DRAFT, Action.CANCEL): S.CANCELLED,
    (S.SCHEDULED, Action.CANCEL): S.CANCELLED,
    (S.RUNNING, Action.CANCEL): S.CANCELLED,
    (S.PAUSED, Action.CANCEL): S.CANCELLED,
    (S.RUNNING, Action.COMPLETE): S.COMPLETED,
    (S.SCHEDULED, Action.FAIL): S.FAILED,
    (S.RUNNING, Action.FAIL): S.FAILED,
    (S.PAUSED, Action.FAIL): S.FAILED,
}

ACTIVE = frozenset({S.SCHEDULED, S.RUNNING, S.PAUSED})
ENDED = frozenset({S.COMPLETED, S.CANCELLED, S.FAILED})


class InvalidTransition(Exception):
    def __init__(self, current: S, action: Action) -> None:
        self.current, self.action = current, action
        super().__init__(f"cannot {action.value} a campaign that is {current.value}")


def next_status(current: S, action: Action) -> S:
    try:
        return TRANSITIONS[(current, action)]
    except KeyError:
        raise InvalidTransition(current, action) from None


def sources_of(action: Action) -> list[S]:
    """Statuses from which `action` is allowed (for conditional UPDATEs)."""
    return [src for (src, act) in TRANSITIONS if act is action]
