"""New INVITEs refused with 503 while Kamailio's free shared memory is under the reserve.

The KEMI layer (MemoryGuard, and where ksr_request_route asks it) runs
against the recording KSR stand-in (conftest).
"""

import pytest

from vpbx import wire
from vpbx.loglimit import LogLimiter

MB = 2**20
TOTAL = 100 * MB
TRUNK = "127.0.0.5"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def shm_total(ksr):
    ksr.pvs["$stat(total_size)"] = TOTAL


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def guard(script, clock):
    return script.MemoryGuard(20, 5, LogLimiter(burst=1, interval=10, clock=clock))


def test_an_invite_is_taken_while_more_than_the_reserve_is_free(ksr, guard):
    ksr.pvs["$stat(free_size)"] = 20 * MB
    assert guard.refused() is False
    assert not ksr.called("sl.sl_send_reply")


def test_under_the_reserve_it_is_refused_503_with_retry_after_and_logged(ksr, guard):
    ksr.pvs["$stat(free_size)"] = 20 * MB - 1
    assert guard.refused() is True
    assert ksr.called("hdr.append_to_reply") == [("Retry-After: 5\r\n",)]
    assert ksr.called("sl.sl_send_reply") == [(503, "Server Overloaded")]
    assert "shared memory low (19 MB free, reserve 20 MB): new INVITEs refused with 503" in ksr.logged()


def test_refusals_are_logged_once_per_interval_with_a_count(ksr, guard, clock):
    ksr.pvs["$stat(free_size)"] = 1 * MB
    for _ in range(5):
        assert guard.refused()
    assert ksr.logged().count("shared memory low") == 1
    clock.now += 10
    assert guard.refused()
    assert ksr.logged().count("shared memory low") == 2
    assert "(4 more refused since this worker's last line)" in ksr.logged()
    assert len(ksr.called("sl.sl_send_reply")) == 6


def test_memory_of_two_to_four_gib_read_as_a_negative_int_is_taken_as_it_is(ksr, script, clock):
    # KEMI hands the unsigned 32-bit statistic over as a signed int.
    ksr.pvs["$stat(total_size)"] = 3 * 2**30 - 2**32
    ksr.pvs["$stat(free_size)"] = 2560 * MB - 2**32
    guard = script.MemoryGuard(20, 5, LogLimiter(burst=1, interval=10, clock=clock))
    assert guard.refused() is False
    assert guard.reserve == 3 * 2**30 * 20 // 100


def test_no_reserve_refuses_nothing(ksr, script, clock):
    ksr.pvs["$stat(free_size)"] = 0
    guard = script.MemoryGuard(0, 5, LogLimiter(burst=1, interval=10, clock=clock))
    assert guard.refused() is False


def edge_router(script, ksr, guard, method):
    """A VpbxRouter with just what the request route reads before deciding, for a `method` from the trunk."""
    r = script.VpbxRouter.__new__(script.VpbxRouter)
    r.wire = wire
    r.edge = script.EdgeSettings()
    r.never_banned = {TRUNK}
    r.memory = guard
    r.refresh_routing = lambda: None
    r.decided = []
    r.ksr_route_origin = lambda: r.decided.append(method)
    ksr.pvs.update({"$si": TRUNK, "$rm": method})
    for name in ("is_ACK", "is_CANCEL", "is_REGISTER", "is_OPTIONS", "is_INVITE", "is_BYE"):
        ksr.answers[name] = name == f"is_{method}"
    ksr.answers["tmx.t_precheck_trans"] = -1
    return r


def test_a_new_invite_short_of_memory_is_refused_before_anything_is_decided(script, ksr, guard):
    ksr.pvs["$stat(free_size)"] = 1 * MB
    ksr.answers["siputils.has_totag"] = -1
    r = edge_router(script, ksr, guard, "INVITE")
    r.ksr_request_route(None)
    assert ksr.called("sl.sl_send_reply") == [(503, "Server Overloaded")]
    assert r.decided == []
    assert not ksr.called("tm.t_newtran") and not ksr.called("tm.t_relay")


@pytest.mark.parametrize("method", ["BYE", "ACK", "INVITE"])
def test_in_dialog_requests_are_relayed_however_short_memory_is(script, ksr, guard, method):
    ksr.pvs["$stat(free_size)"] = 1 * MB
    ksr.answers["siputils.has_totag"] = 1
    r = edge_router(script, ksr, guard, method)
    r.in_our_dialog = lambda: True
    r.ksr_request_route(None)
    assert ksr.called("tm.t_relay") == [()]
    assert not ksr.called("sl.sl_send_reply")


def test_a_transaction_tm_finds_no_memory_for_is_answered_503_not_left_unanswered(ksr, guard):
    ksr.answers["tm.t_newtran"] = -1
    assert guard.new_transaction() is False
    assert ksr.called("sl.sl_send_reply") == [(503, "Server Overloaded")]
    assert ksr.called("hdr.append_to_reply") == [("Retry-After: 5\r\n",)]
    assert "shared memory exhausted (tm found none for a transaction)" in ksr.logged()


def test_a_transaction_created_goes_on_without_a_reply(ksr, guard):
    ksr.answers["tm.t_newtran"] = 1
    assert guard.new_transaction() is True
    assert not ksr.called("sl.sl_send_reply")
