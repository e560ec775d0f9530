"""The lab of hosts, read from its inventory: hosts, addresses and the machine's."""

from pathlib import Path

import pytest
import yaml

from cluster import inventory

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, hosts: dict, trunks: list) -> Path:
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": hosts}}))
    (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump({"vpbx_trunks": trunks}))
    return tmp_path


def test_the_cluster_inventory_is_seven_hosts_on_one_network():
    lab = inventory.load(REPO / "inventories" / "cluster")
    assert len(lab.hosts) == 7
    assert {g for h in lab.hosts for g in h.groups} == set(inventory.PBX_GROUPS)
    assert all(h.netns == f"vpbx-{h.name}" for h in lab.hosts)
    assert str(lab.network) == "10.77.0.0/24"
    # The machine plays the carrier at the trunk's address.
    assert lab.machine_addresses == ("10.77.0.1", "10.77.0.5")


def test_a_host_without_an_internal_address_is_named(tmp_path):
    directory = write(tmp_path, {"sip_proxies": {"hosts": {"edge1": None}}}, [])
    with pytest.raises(inventory.InventoryError, match="edge1: vpbx_internal_address: is required"):
        inventory.load(directory)


def test_a_host_outside_the_first_hosts_network_is_refused(tmp_path):
    hosts = {"sip_proxies": {"hosts": {"edge1": {"vpbx_internal_address": "10.1.0.2"},
                                       "edge2": {"vpbx_internal_address": "10.2.0.2"}}}}
    with pytest.raises(inventory.InventoryError, match=r"edge2: .*outside the lab.s network 10\.1\.0\.0/24"):
        inventory.load(write(tmp_path, hosts, []))


def test_a_trunk_at_a_hosts_address_is_refused(tmp_path):
    hosts = {"sip_proxies": {"hosts": {"edge1": {"vpbx_internal_address": "10.1.0.2"}}}}
    trunks = [{"name": "carrier", "address": "10.1.0.2:5080"}]
    with pytest.raises(inventory.InventoryError, match=r"10\.1\.0\.2 is both a host.s and the machine.s"):
        inventory.load(write(tmp_path, hosts, trunks))


def test_the_hosts_install_the_runtime_from_the_wheels_the_machine_makes():
    from cluster import packages

    settings = yaml.safe_load((REPO / "inventories" / "cluster" / "group_vars" / "all.yml").read_text())
    assert settings["runtime_pip_extra_args"].split() == ["--no-index", "--find-links", str(packages.WHEELS)]
    # Pinned, each: a host gets the versions the wheel was tested with, or none.
    assert packages.python_packages() and all("==" in p for p in packages.python_packages())
