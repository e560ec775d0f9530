"""An admin adds a caller to a DID's callback list while a call is up: the call
held through whatever applies the change (the playbook, `make lists`); the
copy of the inventory with the change is conftest's `edited_inventory`.
"""

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from conftest import REPO
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.sipp import release

LISTS_TIMEOUT = 600


def make_lists(inventory: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MAKEFLAGS="")
    return subprocess.run(["make", "-C", str(REPO), "lists", f"INVENTORY={inventory}"], env=env,
                          capture_output=True, text=True, timeout=LISTS_TIMEOUT)


def lists_succeed(inventory: Path) -> None:
    run = make_lists(inventory)
    assert run.returncode == 0, f"make lists failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"


def call_held_through(apply: Callable[[], None], held_limit_s: int, sipp, pbx_address, carrier_ip,
                      trunk_port, callback_did, unlisted_caller, forward_number) -> None:
    """A forwarded call is up while `apply` runs and ends cleanly after it; then the newly
    listed caller's trigger is refused and its mobile rung back."""
    # The far end holds the call until the test releases it, however long `apply` takes.
    call_id = f"held-{uuid.uuid4().hex}"
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, hangup="signal"),
                             timeout=held_limit_s)
    call = sipp.start_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                          caller_keys(callback_did.number, unlisted_caller, hangup="remote"),
                          timeout=held_limit_s, extra=["-cid_str", call_id])
    call.wait_for_log("answered", timeout=30)
    apply()
    assert call.returncode is None and far_end.returncode is None, "the call ended while the change applied"
    # The call set up before the change ends cleanly: the far end's BYE reaches the caller.
    release((carrier_ip, trunk_port), call_id)
    far_end.expect_success(timeout=60)
    call.expect_success(timeout=60)
    employee = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                              callee_keys("answer", user=unlisted_caller, caller=callback_did.number),
                              timeout=40)
    keys = caller_keys(callback_did.number, unlisted_caller)
    keys["code"] = callback_did.callback.reject_code
    sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=25)
    employee.expect_success()
