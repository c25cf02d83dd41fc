"""The campaign state machine: the one place that says which transitions exist.

```
draft ──launch──► scheduled ──start (due)──► running ──complete──► completed
  │                 │    ▲                    │   │
  │                 │    └──────resume──────┐ │   └──fail──► failed
  │                 └──pause──► paused ◄────┼─┘pause
  └─────────────────cancel (from draft, scheduled, running, paused)──► cancelled
```

`launch` and `resume` both land in `scheduled`; the same request then applies `start` when the
campaign is due (no `start_at`, or it has passed), so "launch now" answers `running` at once and a
future `start_at` is honoured after a pause too. The scheduler applies `start` for the rest.
"""

from __future__ import annotations

from enum import StrEnum

from campaigns.models import CampaignStatus as S


class Action(StrEnum):
    LAUNCH = "launch"
    START = "start"  # scheduled → running when due (the launch request itself, or the scheduler)
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
    (S.PAUSED, Action.RESUME): S.SCHEDULED,
    (S.DRAFT, Action.CANCEL): S.CANCELLED,
    (S.SCHEDULED, Action.CANCEL): S.CANCELLED,
    (S.RUNNING, Action.CANCEL): S.CANCELLED,
    (S.PAUSED, Action.CANCEL): S.CANCELLED,
    (S.RUNNING, Action.COMPLETE): S.COMPLETED,
    (S.SCHEDULED, Action.FAIL): S.FAILED,
    (S.RUNNING, Action.FAIL): S.FAILED,
    (S.PAUSED, Action.FAIL): S.FAILED,
}

# The actions a user asks for through the API; the others belong to the scheduler and workers.
USER_ACTIONS = frozenset({Action.LAUNCH, Action.PAUSE, Action.RESUME, Action.CANCEL})
ACTIVE = frozenset({S.SCHEDULED, S.RUNNING, S.PAUSED})
ENDED = frozenset({S.COMPLETED, S.CANCELLED, S.FAILED})


class InvalidTransition(Exception):
    def __init__(self, current: S, action: Action) -> None:
        self.current, self.action = current, action
        allowed = ", ".join(sorted(a.value for a in allowed_actions(current) if a in USER_ACTIONS)) or "nothing"
        super().__init__(f"cannot {action.value} a campaign that is {current.value} (allowed: {allowed})")


def next_status(current: S, action: Action) -> S:
    try:
        return TRANSITIONS[(current, action)]
    except KeyError:
        raise InvalidTransition(current, action) from None


def allowed_actions(current: S) -> list[Action]:
    return [act for (src, act) in TRANSITIONS if src is current]


def sources_of(action: Action) -> list[S]:
    """Statuses from which `action` is allowed (for conditional UPDATEs)."""
    return [src for (src, act) in TRANSITIONS if act is action]
