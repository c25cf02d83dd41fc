"""The campaign state machine, exhaustively: every (status, action) pair is either a listed
transition or an InvalidTransition that names the current status and what is allowed."""

from __future__ import annotations

import itertools

import pytest

from campaigns.lifecycle import ACTIVE, ENDED, TRANSITIONS, Action, InvalidTransition, allowed_actions, next_status
from campaigns.models import CampaignStatus as S

EXPECTED = {
    (S.DRAFT, Action.LAUNCH): S.SCHEDULED,
    (S.DRAFT, Action.CANCEL): S.CANCELLED,
    (S.SCHEDULED, Action.START): S.RUNNING,
    (S.SCHEDULED, Action.PAUSE): S.PAUSED,
    (S.SCHEDULED, Action.CANCEL): S.CANCELLED,
    (S.SCHEDULED, Action.FAIL): S.FAILED,
    (S.RUNNING, Action.PAUSE): S.PAUSED,
    (S.RUNNING, Action.CANCEL): S.CANCELLED,
    (S.RUNNING, Action.COMPLETE): S.COMPLETED,
    (S.RUNNING, Action.FAIL): S.FAILED,
    (S.PAUSED, Action.RESUME): S.SCHEDULED,
    (S.PAUSED, Action.CANCEL): S.CANCELLED,
    (S.PAUSED, Action.FAIL): S.FAILED,
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(S, Action)))
def test_every_pair_is_a_transition_or_a_clear_refusal(status: S, action: Action) -> None:
    if (status, action) in EXPECTED:
        assert next_status(status, action) is EXPECTED[(status, action)]
        return
    with pytest.raises(InvalidTransition) as caught:
        next_status(status, action)
    assert caught.value.current is status
    assert f"that is {status.value}" in str(caught.value)


def test_the_table_is_exactly_the_documented_machine() -> None:
    assert TRANSITIONS == EXPECTED


def test_ended_campaigns_never_move_and_active_ones_can_always_be_cancelled() -> None:
    assert {S.COMPLETED, S.CANCELLED, S.FAILED} == ENDED
    for status in ENDED:
        assert allowed_actions(status) == []
    for status in ACTIVE | {S.DRAFT}:
        assert next_status(status, Action.CANCEL) is S.CANCELLED


def test_the_refusal_lists_what_a_user_may_do_instead() -> None:
    with pytest.raises(InvalidTransition, match=r"cannot launch a campaign that is running \(allowed: cancel, pause\)"):
        next_status(S.RUNNING, Action.LAUNCH)
    with pytest.raises(InvalidTransition, match=r"\(allowed: nothing\)"):
        next_status(S.COMPLETED, Action.RESUME)
