"""What a trigger must carry: the edge's decision, exactly once.

The SIP edge (kemi/vpbx_router.py, ksr_branch_trigger) adds to the INVITE it
hands to the engine the DID and the employee it decided on, in E.164, and
removes those headers from what callers send. The engine acts on nothing
else: not on the R-URI or From, which the caller wrote.
"""

from collections.abc import Mapping, Sequence

from vpbx import wire

# Lower-case, as callbackd.sip hands headers over.
DID_HEADER = wire.DID_HEADER.lower()
EMPLOYEE_HEADER = wire.EMPLOYEE_HEADER.lower()


class BadTrigger(ValueError):
    """A trigger without the edge's decision, exactly once; the message says what is wrong."""


def edge_decision(headers: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    """(DID, employee) as the edge decided them, in E.164, from a trigger's headers.

    Each decision header must be there exactly once: the edge adds its own,
    so a second one was smuggled in by whoever called, and a missing one
    means the INVITE did not come through the edge's decision at all.
    """
    values = []
    for name in (DID_HEADER, EMPLOYEE_HEADER):
        found = headers.get(name, [])
        if len(found) != 1:
            raise BadTrigger(f"{name} {'missing' if not found else f'{len(found)} times'}")
        # Two values folded into one header line are two headers too (RFC 3261 7.3.1).
        if "," in found[0]:
            raise BadTrigger(f"{name} with more than one value")
        values.append(found[0].strip())
    return values[0], values[1]
