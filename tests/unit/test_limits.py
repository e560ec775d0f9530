"""The call-back counts: each limit refuses the one too many and lets its neighbours through."""

import pytest

from callbackd.limits import DAY_S, HOUR_S, MemoryLimits, Refused

DID = "+421233000111"
OTHER_DID = "+421233000333"
EMPLOYEE = "+421905111222"
COLLEAGUE = "+421905333444"
T0 = 1_700_000_000.0


def admit(limits, now, did=DID, employee=EMPLOYEE, per_hour=3, per_day=5):
    return limits.admit(did, employee, per_hour, per_day, now)


def test_call_backs_up_to_the_hourly_limit_are_admitted_and_the_next_is_refused():
    limits = MemoryLimits()
    assert [admit(limits, T0 + i) for i in range(3)] == [None] * 3
    assert admit(limits, T0 + 3) == Refused(3, "hour", 3)


def test_the_refusal_says_what_the_log_line_says():
    assert str(Refused(3, "hour", 3)) == "3 call-backs in the last hour (max_per_hour 3)"
    assert str(Refused(5, "day", 5)) == "5 call-backs in the last day (max_per_day 5)"


def test_a_refused_trigger_is_not_counted():
    limits = MemoryLimits()
    for i in range(3):
        admit(limits, T0 + i)
    for i in range(10):
        assert admit(limits, T0 + 10 + i) == Refused(3, "hour", 3)
    # An hour after the first call-back exactly one more is due, not none.
    assert admit(limits, T0 + HOUR_S + 0.5) is None
    assert admit(limits, T0 + HOUR_S + 0.6) == Refused(3, "hour", 3)


def test_the_hour_slides_rather_than_turning_on_the_clock():
    limits = MemoryLimits()
    for i in range(3):
        admit(limits, T0 + HOUR_S - 10 + i)
    assert admit(limits, T0 + HOUR_S + 10) == Refused(3, "hour", 3)
    assert admit(limits, T0 + 2 * HOUR_S - 7) is None


def test_another_employee_on_the_same_did_is_not_held_by_the_first_ones_count():
    limits = MemoryLimits()
    for i in range(3):
        admit(limits, T0 + i)
    assert admit(limits, T0 + 4) is not None
    assert admit(limits, T0 + 5, employee=COLLEAGUE) is None


def test_the_same_employee_on_another_did_has_a_count_of_its_own():
    limits = MemoryLimits()
    for i in range(3):
        admit(limits, T0 + i)
    assert admit(limits, T0 + 4) is not None
    assert admit(limits, T0 + 5, did=OTHER_DID) is None


def test_the_daily_limit_refuses_even_when_each_hour_is_under_its_own():
    limits = MemoryLimits()
    for i in range(5):
        assert admit(limits, T0 + i * HOUR_S) is None
    assert admit(limits, T0 + 5 * HOUR_S) == Refused(5, "day", 5)
    # The colleague on the same DID, and the same employee on another, still get theirs.
    assert admit(limits, T0 + 5 * HOUR_S, employee=COLLEAGUE) is None
    assert admit(limits, T0 + 5 * HOUR_S, did=OTHER_DID) is None


def test_the_day_slides_too():
    limits = MemoryLimits()
    for i in range(5):
        admit(limits, T0 + i * HOUR_S)
    assert admit(limits, T0 + DAY_S - 1) == Refused(5, "day", 5)
    assert admit(limits, T0 + DAY_S + 1) is None


def test_the_day_is_told_when_both_limits_are_reached():
    limits = MemoryLimits()
    for i in range(3):
        admit(limits, T0 + i, per_day=3)
    assert admit(limits, T0 + 3, per_day=3) == Refused(3, "day", 3)


@pytest.mark.parametrize(("per_hour", "admitted"), [(1, 1), (2, 2), (5, 5)])
def test_the_limit_in_force_is_the_one_passed_now(per_hour, admitted):
    # A routing reload changes the limit for the next trigger, with the counts kept.
    limits = MemoryLimits()
    results = [admit(limits, T0 + i, per_hour=per_hour, per_day=100) for i in range(6)]
    assert results.count(None) == admitted


def test_employees_idle_for_a_day_are_forgotten():
    limits = MemoryLimits()
    for n in range(100):
        admit(limits, T0, employee=f"+42190500{n:04d}")
    admit(limits, T0 + DAY_S + HOUR_S)
    assert len(limits._placed) == 1
