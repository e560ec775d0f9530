"""A trigger is acted on only with the edge's decision in it, exactly once."""

import pytest

from callbackd.trigger import BadTrigger, edge_decision

DID = "+421233000111"
EMPLOYEE = "+421905111222"


def headers(did=(DID,), employee=(EMPLOYEE,)):
    found = {"call-id": ["abc"]}
    if did:
        found["x-vpbx-did"] = list(did)
    if employee:
        found["x-vpbx-employee"] = list(employee)
    return found


def test_the_edges_decision_is_read_from_its_headers():
    assert edge_decision(headers()) == (DID, EMPLOYEE)


def test_surrounding_blanks_are_not_part_of_a_number():
    assert edge_decision(headers(did=[f" {DID} "])) == (DID, EMPLOYEE)


@pytest.mark.parametrize(("changes", "why"), [
    ({"did": ()}, "x-vpbx-did missing"),
    ({"employee": ()}, "x-vpbx-employee missing"),
    ({"did": ("+421233000999", DID)}, "x-vpbx-did 2 times"),
    ({"employee": (EMPLOYEE, EMPLOYEE)}, "x-vpbx-employee 2 times"),
    ({"employee": (f"+421905999999, {EMPLOYEE}",)}, "x-vpbx-employee with more than one value"),
])
def test_a_missing_or_repeated_decision_header_is_refused(changes, why):
    with pytest.raises(BadTrigger, match=f"^{why}$"):
        edge_decision(headers(**changes))
