"""A call in progress outlives Kamailio; a forged in-dialog request still reaches nobody.

The carrier's call is forwarded out through the trunk and answered; the far
end holds it (callee.xml hangup=signal) or the caller does (carrier_call.xml
hangup=signal) until the test releases it. Meanwhile Kamailio is restarted
through its service manager, or killed outright and brought back by it.
Then a stranger forges in-dialog requests for that very call and for a
premium number at the trunk: each gets 481 and the far end sees neither.
Then the call ends as a call ends: one side's BYE crosses the restarted
edge, reaches the other side and is answered.

The waits end when what they wait for happens; their limits only bound a failure.
"""

import uuid

import pytest
from test_registrations import RESTARTS, restart_kamailio
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.raw_sip import RawSip, status_code
from vpbx_testing.sipp import free_udp_port, release
from vpbx_testing.waiting import wait_until

# SIPp's own limit for the held call: only a bound for a failure.
HELD_CALL_LIMIT_S = 300
ANSWER_WAIT_S = 30
END_WAIT_S = 60
# An international number nobody listed: what a fraudster wants the PBX to dial.
PREMIUM_TARGET = "+447700900123"
# Parameters as the edge signs its Record-Route, with a signature the forger made up.
FORGED_ROUTE_PARAMS = f"lr;ftag=forged;vpbx_exp=4102444800;vpbx_sig={'0' * 32}"


def forged_requests(stranger_ip, pbx_address, trunk, call_id: str) -> dict[str, int | None]:
    """What the edge answers a stranger's BYE for the call `call_id` and his in-dialog
    INVITE to a premium number at the trunk, each with the Route a real dialog would have."""
    route = f"Route: <sip:{pbx_address};{FORGED_ROUTE_PARAMS}>"
    answers = {}
    with RawSip(stranger_ip, pbx_address) as sip:
        for method, ruri, cid in (
            ("BYE", f"sip:{trunk.address}", call_id),
            ("INVITE", f"sip:{PREMIUM_TARGET}@{trunk.address}", f"forged-{uuid.uuid4().hex}"),
        ):
            answer = sip.ask(sip.request(method, ruri, call_id=cid, to_tag="forged", extra=[route]))
            answers[method] = status_code(answer) if answer else None
    return answers


@pytest.mark.parametrize("hangs_up", ["caller", "far end"])
@pytest.mark.parametrize("how", RESTARTS)
def test_a_call_in_progress_ends_across_a_kamailio_restart_while_forged_requests_get_481(
    how, hangs_up, sipp, pbx_address, trunk, carrier_ip, trunk_port, stranger_ip, callback_did,
    unlisted_caller, forward_number,
):
    call_id = f"dialogs-{uuid.uuid4().hex}"
    caller_port = free_udp_port(carrier_ip)
    far_end = sipp.start_uas(
        "callee.xml", carrier_ip, trunk_port,
        callee_keys("answer", user=forward_number, hangup="signal" if hangs_up == "far end" else "remote"),
        timeout=HELD_CALL_LIMIT_S)
    call = sipp.start_uac(
        "carrier_call.xml", carrier_ip, str(pbx_address),
        caller_keys(callback_did.number, unlisted_caller,
                    hangup="signal" if hangs_up == "caller" else "remote"),
        port=caller_port, timeout=HELD_CALL_LIMIT_S, extra=["-cid_str", call_id])
    call.wait_for_log("answered", timeout=ANSWER_WAIT_S)
    # Established: the far end has the ACK (the callee sends none, so any ACK it logged came in).
    wait_until("the far end has the caller's ACK", lambda: "ACK sip:" in far_end.messages(), ANSWER_WAIT_S)

    restart_kamailio(how, pbx_address, stranger_ip)

    # The attack: nothing of it is relayed, the call stays up.
    assert forged_requests(stranger_ip, pbx_address, trunk, call_id) == {"BYE": 481, "INVITE": 481}
    assert call.returncode is None and far_end.returncode is None, "the forged BYE ended the call"
    assert "forged" not in far_end.messages(), "a forged request reached the far end"

    # The legitimate twin: one side hangs up, its BYE crosses the restarted edge and is answered.
    release((carrier_ip, trunk_port if hangs_up == "far end" else caller_port), call_id)
    far_end.expect_success(timeout=END_WAIT_S)
    call.expect_success(timeout=END_WAIT_S)
