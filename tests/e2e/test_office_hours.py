"""A scheme that rings the office in office hours and forwards outside them.

The test writes the office hours around the moment it runs, in the PBX's
`vpbx_timezone`, into a copy of the inventory and applies it with `make
lists`: once with now inside them (the phone rings, the far end is not
called) and once with now outside them (the ring step is skipped, the call
is forwarded and the phone does not ring). The product reads the real clock;
nothing sleeps until 17:00. The deployed inventory is applied again after.
"""

import datetime as dt
import shutil
from zoneinfo import ZoneInfo

import pytest
import yaml
from conftest import inventory_dir
from list_change import lists_succeed
from vpbx_testing.peers import callee_keys, caller_keys

from vpbx import when

CALL_TIMEOUT = 25
HOURS_DID = "+421233000778"
SCHEME = "office-hours-e2e"
# Wide enough that the calls of a slow run stay inside (or outside) the window.
MARGIN = dt.timedelta(hours=2)


def clock(moment: dt.datetime) -> str:
    return moment.strftime("%H:%M")


def office_hours(timezone: str, inside: bool) -> dict:
    """A `when:` holding now (inside) or holding from 3 to 7 hours from now (outside)."""
    now = dt.datetime.now(ZoneInfo(timezone))
    if inside:
        start, end = now - MARGIN, now + MARGIN
        days = sorted({when.DAYS[start.weekday()], when.DAYS[now.weekday()], when.DAYS[end.weekday()]},
                      key=when.DAYS.index)
        return {"days": days, "hours": f"{clock(start)}-{clock(end)}"}
    start, end = now + 1.5 * MARGIN, now + 3.5 * MARGIN
    return {"hours": f"{clock(start)}-{clock(end)}"}


@pytest.fixture
def hours_inventory(tmp_path, lab, ring_step, forward_number):
    """Applies a copy of the inventory whose HOURS_DID rings in office hours and forwards outside."""
    if HOURS_DID not in lab.numbers:
        pytest.skip(f"the inventory has no DID {HOURS_DID}")
    copy = tmp_path / "inventory"
    shutil.copytree(inventory_dir(), copy)

    def apply(inside: bool) -> None:
        for path in sorted((copy / "group_vars").rglob("*.yml")):
            variables = yaml.safe_load(path.read_text()) or {}
            if "vpbx_routing_schemes" not in variables:
                continue
            schemes = [s for s in variables["vpbx_routing_schemes"] if s["name"] != SCHEME]
            schemes.append({"name": SCHEME, "steps": [
                {"ring": [ring_step.extensions[0]], "timeout": 10,
                 "when": office_hours(lab.timezone, inside)},
                {"forward": forward_number},
            ]})
            variables["vpbx_routing_schemes"] = schemes
            for did in variables["vpbx_numbers"]:
                if did["number"] == HOURS_DID:
                    did["routing"] = SCHEME
            path.write_text(yaml.safe_dump(variables, sort_keys=False))
        lists_succeed(copy)

    try:
        yield apply
    finally:
        lists_succeed(inventory_dir())


@pytest.mark.parametrize("in_hours", [True, False], ids=["in-hours-the-phone-rings", "outside-forwarded"])
def test_the_office_phone_rings_in_office_hours_and_the_call_is_forwarded_outside_them(
    sipp, phones, hours_inventory, pbx_address, carrier_ip, trunk_port, ring_step, unlisted_caller,
    forward_number, in_hours,
):
    hours_inventory(inside=in_hours)
    # Both the office phone and the forward step's far end answer: the one the scheme
    # chose must take the call, and the other must not even see an INVITE.
    office = phones[ring_step.extensions[0]]
    phone = sipp.start_uas("callee.xml", office.host, office.port,
                           callee_keys("answer", caller=unlisted_caller), timeout=CALL_TIMEOUT * 2)
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, caller=unlisted_caller),
                             timeout=CALL_TIMEOUT * 2)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address), caller_keys(HOURS_DID, unlisted_caller),
                 timeout=CALL_TIMEOUT)
    chosen, passed_over = (phone, far_end) if in_hours else (far_end, phone)
    chosen.expect_success()
    assert "INVITE" not in passed_over.messages(), (
        "a call in office hours was forwarded" if in_hours else "the office phone rang outside office hours")
