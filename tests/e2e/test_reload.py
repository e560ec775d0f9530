"""An admin edits a number list and re-runs the playbook while a call is up.

The change must apply without restarting Kamailio (same PID) and without
touching the call in progress: it is held until the playbook ends, however
long that takes, and its BYE still crosses the PBX afterwards. How long a
playbook run takes is measured in bench/, not here.
"""

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, inventory_dir
from list_change import call_held_through

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


def test_list_change_applies_by_playbook_without_restart_while_a_call_stays_up(
    sipp, pbx_address, carrier_ip, trunk_port, callback_did, unlisted_caller, forward_number,
    edited_inventory,
):
    pid_before = kamailio_pid()

    def apply() -> None:
        deploy(edited_inventory)
        assert kamailio_pid() == pid_before, "Kamailio was restarted"

    try:
        call_held_through(apply, HELD_CALL_LIMIT_S, sipp, pbx_address, carrier_ip, trunk_port, callback_did,
                          unlisted_caller, forward_number)
    finally:
        deploy(inventory_dir())
    assert kamailio_pid() == pid_before
