"""A DID's black and white lists and its rule for withheld callers, at the deployed edge.

The lab's screening DIDs (inventories/lab): +421233000777 is a CallBack DID
whose blacklist holds one of its own CallBack employees and which refuses
withheld callers; +421233000888 lets only its whitelist through to the
scheme; +421233000778 allows withheld callers. Each refusal is proven with
the legitimate call beside it, and a refused call reaches nobody: the far
end waiting on the trunk takes the one call the test lets through, so a call
the edge let slip would arrive there first and fail its expectations.
"""

import pytest
from vpbx_testing.peers import callee_keys, caller_keys

CALL_TIMEOUT = 25
CALLBACK_TIMEOUT = 60
SCREENED_DID = "+421233000777"
WHITELIST_DID = "+421233000888"
ALLOWING_DID = "+421233000778"


@pytest.fixture(scope="session")
def screened(lab):
    for number in (SCREENED_DID, WHITELIST_DID, ALLOWING_DID):
        if number not in lab.numbers:
            pytest.skip(f"the inventory has no screening DID {number}")
    return lab.numbers


def lists_of(lab, did, key):
    return sorted(lab.number_lists[getattr(lab.numbers[did], key)])


def refused(sipp, carrier_ip, pbx_address, did, caller, code, header=None):
    keys = caller_keys(did, caller, **({"header": header} if header else {}))
    keys["code"] = code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=CALL_TIMEOUT)


def test_a_blacklisted_employee_is_refused_though_on_the_callback_list_and_the_other_is_called_back(
    sipp, lab, screened, pbx_address, carrier_ip, trunk_port,
):
    did = screened[SCREENED_DID]
    blocked = lists_of(lab, SCREENED_DID, "blacklist")[0]
    staff = lab.number_lists[did.callback.list]
    assert blocked in staff, "the lab's blacklisted caller must also be on the CallBack list"
    employee = next(n for n in sorted(staff) if n != blocked)
    # The only call-back the trunk may see is the other employee's.
    mobile = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                            callee_keys("answer", user=employee, caller=SCREENED_DID),
                            timeout=CALLBACK_TIMEOUT)
    refused(sipp, carrier_ip, pbx_address, SCREENED_DID, blocked, did.refuse_code)
    refused(sipp, carrier_ip, pbx_address, SCREENED_DID, employee, did.callback.reject_code)
    mobile.expect_success()


def test_a_whitelist_did_refuses_a_stranger_and_routes_its_client(
    sipp, lab, screened, pbx_address, carrier_ip, trunk_port, unlisted_caller,
):
    did = screened[WHITELIST_DID]
    client = lists_of(lab, WHITELIST_DID, "whitelist")[0]
    forward = lab.routing_schemes[did.routing][0].number
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward, caller=client), timeout=CALL_TIMEOUT * 2)
    refused(sipp, carrier_ip, pbx_address, WHITELIST_DID, unlisted_caller, did.refuse_code)
    refused(sipp, carrier_ip, pbx_address, WHITELIST_DID, "anonymous", did.refuse_code)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address), caller_keys(WHITELIST_DID, client),
                 timeout=CALL_TIMEOUT)
    far_end.expect_success()


def test_withheld_callers_are_refused_where_the_rule_says_reject_and_routed_where_it_allows(
    sipp, lab, screened, pbx_address, carrier_ip, trunk_port,
):
    did = screened[SCREENED_DID]
    employee = next(n for n in sorted(lab.number_lists[did.callback.list])
                    if n not in lab.number_lists[did.blacklist])
    forward = lab.routing_schemes[screened[ALLOWING_DID].routing][0].number
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward, caller="anonymous"),
                             timeout=CALL_TIMEOUT * 3)
    refused(sipp, carrier_ip, pbx_address, SCREENED_DID, "anonymous", did.refuse_code)
    # The carrier knows the number but the caller asked to withhold it (RFC 3325 Privacy: id):
    # withheld too, even an employee on the CallBack list.
    refused(sipp, carrier_ip, pbx_address, SCREENED_DID, employee, did.refuse_code, header="Privacy: id")
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address), caller_keys(ALLOWING_DID, "anonymous"),
                 timeout=CALL_TIMEOUT)
    far_end.expect_success()
