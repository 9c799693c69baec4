"""The leader election rule (leader_election.decide): who may take, renew or must wait."""

from __future__ import annotations

import pytest

from compozy_operator.leader_election import Action, LeaderElector, Observed, decide


def lease(holder: str, since: float, duration: float = 15) -> Observed:
    return Observed(holder, "2026-12-02T00:00:00.000000Z", "", duration, 3, "42", since)


def test_no_lease_is_created() -> None:
    assert decide(None, "a", 100) is Action.CREATE


def test_our_lease_is_renewed_even_when_it_looks_expired() -> None:
    assert decide(lease("a", since=0), "a", 1000) is Action.RENEW


def test_a_held_lease_is_waited_for_until_its_holder_stops_renewing_for_its_duration() -> None:
    assert decide(lease("b", since=100), "a", 100) is Action.WAIT
    assert decide(lease("b", since=100), "a", 114.9) is Action.WAIT
    assert decide(lease("b", since=100), "a", 115) is Action.TAKE
    assert decide(lease("b", since=100, duration=40), "a", 130) is Action.WAIT  # the holder's duration counts


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(lease("", since=100), "a", 100) is Action.TAKE


@pytest.mark.parametrize("retry, deadline, duration", [(2, 2, 15), (2, 15, 15), (5, 3, 15), (0, 0, 0)])
def test_timings_must_nest(retry: float, deadline: float, duration: float) -> None:
    with pytest.raises(ValueError, match="retry < renew deadline < lease duration"):
        LeaderElector(None, "ns", "l", "a", duration=duration, renew_deadline=deadline, retry=retry)  # type: ignore[arg-type]
