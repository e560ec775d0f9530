"""An admin edits a number list and re-runs the playbook while a call is up.

The change must apply without restarting Kamailio (same PID) and without
touching the call in progress: its BYE still crosses the PBX afterwards.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, inventory_dir
from test_calls import callee_keys, caller_keys

KAMAILIO_PIDFILE = Path("/run/kamailio/kamailio.pid")
PLAYBOOK_TIMEOUT = 600
# The far end hangs up after this long: longer than a playbook run that
# changes one list, so that its BYE crosses the PBX after the reload.
HELD_CALL_S = 75


def deploy(inventory: Path) -> None:
    playbook = Path(sys.executable).with_name("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    run = subprocess.run([str(playbook), "-i", str(inventory), str(REPO / "playbooks" / "site.yml")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT)
    assert run.returncode == 0, f"playbook failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"


def kamailio_pid() -> int:
    return int(KAMAILIO_PIDFILE.read_text().split()[0])


@pytest.fixture
def edited_inventory(tmp_path, callback_did, unlisted_caller):
    """A copy of the deployed inventory whose callback list also holds `unlisted_caller`."""
    copy = tmp_path / "inventory"
    shutil.copytree(inventory_dir(), copy)
    for path in sorted((copy / "group_vars").rglob("*.yml")):
        variables = yaml.safe_load(path.read_text()) or {}
        for number_list in variables.get("vpbx_number_lists", []):
            if number_list["name"] == callback_did.callback.list:
                number_list["numbers"].append(unlisted_caller)
                path.write_text(yaml.safe_dump(variables, sort_keys=False))
                yield copy
                return
    raise AssertionError(f"list {callback_did.callback.list} not found under {copy}")


def test_list_change_applies_by_playbook_without_restart_while_a_call_stays_up(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller, forward_number,
    edited_inventory,
):
    pid_before = kamailio_pid()
    # A call in progress: forwarded out through the trunk; the far end hangs up later.
    far_end_keys = callee_keys("answer", user=forward_number, hangup="local")
    far_end_keys["hold_ms"] = HELD_CALL_S * 1000
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port, far_end_keys,
                             timeout=HELD_CALL_S + 30)
    call = sipp.start_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                          caller_keys(callback_did.number, unlisted_caller, hangup="remote"),
                          timeout=HELD_CALL_S + 30)
    call.wait_for_log("answered", timeout=10)
    started = time.monotonic()
    try:
        deploy(edited_inventory)
        reload_took = time.monotonic() - started
        assert kamailio_pid() == pid_before, "Kamailio was restarted"
        assert reload_took < HELD_CALL_S, f"the playbook took {reload_took:.0f} s, longer than the call"
        assert call.returncode is None and far_end.returncode is None, "the call ended during the reload"
        # The call set up before the reload ends cleanly: the far end's BYE reaches the caller.
        far_end.expect_success(timeout=HELD_CALL_S + 30)
        call.expect_success(timeout=30)
        # The newly listed caller now triggers the call-back, which rings its mobile.
        employee = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                                  callee_keys("answer", user=unlisted_caller, caller=callback_did.number),
                                  timeout=40)
        keys = caller_keys(callback_did.number, unlisted_caller)
        keys["code"] = callback_did.callback.reject_code
        sipp.run_uac("carrier_call_rejected.xml", carrier_ip, str(pbx_address), keys, timeout=25)
        employee.expect_success()
    finally:
        deploy(inventory_dir())
    assert kamailio_pid() == pid_before
