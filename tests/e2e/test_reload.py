"""An admin edits a number list and re-runs the playbook while a call is up.

The change must apply without restarting Kamailio (same PID) and without
touching the call in progress: it is held until the playbook ends, however
long that takes, and its BYE still crosses the PBX afterwards. How long a
playbook run takes is measured in bench/, not here.
"""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, inventory_dir
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.sipp import release

KAMAILIO_PIDFILE = Path("/run/kamailio/kamailio.pid")
PLAYBOOK_TIMEOUT = 900
# SIPp's own limit for the held call: the playbook's limit and room for the BYE.
HELD_CALL_LIMIT_S = PLAYBOOK_TIMEOUT + 60


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
    # A call in progress: forwarded out through the trunk; the far end holds
    # it until the test releases it, after the playbook.
    call_id = f"reload-{uuid.uuid4().hex}"
    far_end = sipp.start_uas("callee.xml", carrier_ip, trunk_port,
                             callee_keys("answer", user=forward_number, hangup="signal"),
                             timeout=HELD_CALL_LIMIT_S)
    call = sipp.start_uac("carrier_call.xml", carrier_ip, str(pbx_address),
                          caller_keys(callback_did.number, unlisted_caller, hangup="remote"),
                          timeout=HELD_CALL_LIMIT_S, extra=["-cid_str", call_id])
    call.wait_for_log("answered", timeout=30)
    try:
        deploy(edited_inventory)
        assert kamailio_pid() == pid_before, "Kamailio was restarted"
        assert call.returncode is None and far_end.returncode is None, "the call ended during the reload"
        # The call set up before the reload ends cleanly: the far end's BYE reaches the caller.
        release((carrier_ip, trunk_port), call_id)
        far_end.expect_success(timeout=60)
        call.expect_success(timeout=60)
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
