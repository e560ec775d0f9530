"""An admin edits a number list and runs `make lists` while a call is up.

`make lists` re-validates the inventory and replaces the routing data alone:
no service restarts (the same PIDs), the call held through it goes on and
ends cleanly afterwards, the number added to the list is called back at
once, and the number taken off again is routed by the DID's scheme. A list
that breaks the contract is refused naming the key, and nothing deployed
changes. How long `make lists` takes is measured in bench/lists.py.
"""

from pathlib import Path

import pytest
import yaml
from conftest import inventory_dir
from list_change import LISTS_TIMEOUT, call_held_through, lists_succeed, make_lists
from vpbx_testing import services
from vpbx_testing.peers import callee_keys, caller_keys

KAMAILIO_ROUTING = Path("/etc/kamailio/vpbx/routing.json")
HELD_CALL_LIMIT_S = LISTS_TIMEOUT + 60


def pids() -> dict[str, int | None]:
    return {name: services.main_pid(name) for name in (services.KAMAILIO, services.CALLBACKD)}


def test_a_number_added_by_make_lists_is_called_back_while_a_call_stays_up(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller, forward_number,
    edited_inventory,
):
    before = pids()

    def apply() -> None:
        lists_succeed(edited_inventory)
        assert pids() == before, "a service was restarted"

    try:
        call_held_through(apply, HELD_CALL_LIMIT_S, sipp, pbx_address, carrier_ip, trunk_port, callback_did,
                          unlisted_caller, forward_number)
    finally:
        lists_succeed(inventory_dir())
    # Off the list again: the same caller is routed by the scheme, forwarded out.
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port, callee_keys("answer", user=forward_number),
                             timeout=40)
    sipp.run_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                 caller_keys(callback_did.number, unlisted_caller), timeout=40)
    far_end.expect_success()
    assert pids() == before


@pytest.fixture
def broken_inventory(edited_inventory, callback_did):
    """The edited copy with two numbers the numbering plan does not assign added to the list."""
    for path in sorted((edited_inventory / "group_vars").rglob("*.yml")):
        variables = yaml.safe_load(path.read_text()) or {}
        for index, number_list in enumerate(variables.get("vpbx_number_lists", [])):
            if number_list["name"] == callback_did.callback.list:
                position = len(number_list["numbers"])
                number_list["numbers"] += ["+421012345678", "0905 12"]
                path.write_text(yaml.safe_dump(variables, sort_keys=False))
                return edited_inventory, f"vpbx_number_lists[{index}].numbers[{position}]"
    raise AssertionError(f"list {callback_did.callback.list} not found")


def test_make_lists_refuses_a_list_that_breaks_the_contract_and_changes_nothing(broken_inventory):
    inventory, first_key = broken_inventory
    routing_before = KAMAILIO_ROUTING.stat()
    run = make_lists(inventory)
    assert run.returncode != 0
    assert f"{first_key}: '+421012345678' is not a valid number" in run.stdout
    assert "'0905 12'" in run.stdout
    after = KAMAILIO_ROUTING.stat()
    assert (after.st_ino, after.st_mtime_ns) == (routing_before.st_ino, routing_before.st_mtime_ns)
