"""The contract's keys (vpbx_…) and the roles' own variables (<role>_…) do not
share a namespace, and the validator names a wrong one in either."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vpbx.model import InventoryError, load, role_variables

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("vpbx_inventory_action",
                                               REPO / "plugins" / "action" / "vpbx_inventory.py")
action = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(action)
KNOWN = action.known_role_variables()
LAB = REPO / "inventories" / "lab"


def test_a_misspelt_role_variable_is_named_with_the_one_meant():
    errors = role_variables(["kamailio_shm_memroy", "kamailio_shm_memory"], KNOWN)
    assert errors == ["kamailio_shm_memroy: unknown variable of role kamailio "
                      "(did you mean kamailio_shm_memory?)"]


def test_a_role_variable_far_from_any_is_named_without_a_guess():
    assert role_variables(["callbackd_zzz"], KNOWN) == ["callbackd_zzz: unknown variable of role callbackd"]


def test_names_of_no_role_are_left_to_others():
    assert role_variables(["vpbx_trunks", "vpbx_whatever", "ansible_connection", "inventory_hostname"],
                          KNOWN) == []


def test_the_longest_role_prefix_claims_a_variable():
    known = {"state": {"state_x"}, "state_store": {"state_store_port"}}
    assert role_variables(["state_store_port", "state_x"], known) == []
    assert role_variables(["state_store_x"], known) == ["state_store_x: unknown variable of role state_store"]
    assert role_variables(["state_y"], known) == ["state_y: unknown variable of role state"]


def test_role_variables_come_from_defaults_and_documented_options():
    assert {"kamailio_shm_memory", "callbackd_sip_listen", "runtime_prefix"} <= set().union(*KNOWN.values())
    # Documented in the argument specs, without a default: the inventory may set it.
    assert "service_manager_name" in KNOWN["service_manager"]
    assert not [role for role in KNOWN if role.startswith("vpbx_")]


def test_every_role_variable_the_project_sets_itself_is_known():
    files = [REPO / "playbooks" / "group_vars" / "all.yml", *REPO.glob("inventories/*/group_vars/*.yml")]
    names = {name for path in files for name in yaml.safe_load(path.read_text())}
    assert any(name.startswith("kamailio_") for name in names)
    assert role_variables(names, KNOWN) == []


def test_the_runtime_roles_prefix_is_no_longer_the_contracts():
    inventory = yaml.safe_load((LAB / "group_vars" / "all.yml").read_text())
    load({**inventory, "ansible_connection": "local"})
    with pytest.raises(InventoryError) as raised:
        load({**inventory, "vpbx_runtime_prefix": "/opt/vpbx"})
    assert raised.value.errors[0].startswith("vpbx_runtime_prefix: unknown variable")


def test_a_misspelt_contract_key_is_named_with_the_one_meant():
    inventory = yaml.safe_load((LAB / "group_vars" / "all.yml").read_text())
    inventory["vpbx_nubmers"] = inventory.pop("vpbx_numbers")
    with pytest.raises(InventoryError) as raised:
        load(inventory)
    assert "vpbx_nubmers: unknown variable (did you mean vpbx_numbers?)" in str(raised.value)


def validate(tmp_path: Path, extra: dict) -> subprocess.CompletedProcess:
    """playbooks/validate.yml against a copy of the lab inventory with `extra` in a host_vars file."""
    inventory = tmp_path / "inventory"
    shutil.copytree(LAB, inventory)
    (inventory / "host_vars").mkdir()
    (inventory / "host_vars" / "localhost.yml").write_text(yaml.safe_dump(extra))
    ansible = Path(sys.executable).with_name("ansible-playbook")
    playbook = REPO / "playbooks" / "validate.yml"
    return subprocess.run([str(ansible), "-i", str(inventory / "hosts.yml"), str(playbook)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                               "HOME": str(tmp_path)})


def test_the_deploy_refuses_a_misspelt_role_variable_naming_it_and_its_file(tmp_path):
    run = validate(tmp_path, {"kamailio_shm_memroy": 256, "runtime_prefix": "/opt/vpbx"})
    assert run.returncode != 0
    assert "host_vars/localhost.yml: kamailio_shm_memroy: unknown variable of role kamailio " \
           "(did you mean kamailio_shm_memory?)" in run.stdout
    assert "runtime_prefix" not in run.stdout


def test_the_deploy_takes_the_roles_documented_variables_from_the_inventory(tmp_path):
    run = validate(tmp_path, {"kamailio_shm_memory": 256, "runtime_prefix": "/opt/vpbx",
                              "service_manager_name": "supervisor"})
    assert run.returncode == 0, run.stdout
