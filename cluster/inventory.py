"""The hosts of a lab of hosts, as its Ansible inventory describes them.

The inventory is the one source: its hosts (every host of the PBX's groups),
each one's internal address (`vpbx_internal_address`) and the trunks'
addresses, which the machine itself takes on the lab's bridge to play the
carrier.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml

PBX_GROUPS = ("sip_proxies", "media_relays", "callback_engines", "state_stores")
# The lab's network: one /24, the machine at its first address.
PREFIX = 24


class InventoryError(ValueError):
    """The inventory cannot be built as a lab of hosts; the message names the key."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    groups: tuple[str, ...]

    @property
    def netns(self) -> str:
        return f"vpbx-{self.name}"


@dataclass(frozen=True)
class Lab:
    hosts: tuple[Host, ...]
    network: ipaddress.IPv4Network
    # Addresses the machine takes on the bridge: its own first, then the trunks'.
    machine_addresses: tuple[str, ...]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)


def load(directory: Path) -> Lab:
    hosts_file = directory / "hosts.yml"
    tree = yaml.safe_load(hosts_file.read_text()) or {}
    everyone = tree.get("all", {})
    groups: dict[str, list[str]] = {}
    host_vars: dict[str, dict] = dict(everyone.get("hosts") or {})
    for group, body in (everyone.get("children") or {}).items():
        for name, variables in ((body or {}).get("hosts") or {}).items():
            groups.setdefault(name, []).append(group)
            host_vars[name] = {**(host_vars.get(name) or {}), **(variables or {})}
    hosts = []
    for name in groups:  # in the order the inventory lists them
        pbx_groups = tuple(g for g in groups[name] if g in PBX_GROUPS)
        if not pbx_groups:
            continue
        address = (host_vars.get(name) or {}).get("vpbx_internal_address")
        if address is None:
            raise InventoryError(f"{hosts_file}: {name}: vpbx_internal_address: is required "
                                 "(the host's address on the lab's bridge)")
        hosts.append(Host(name, str(ipaddress.IPv4Address(address)), pbx_groups))
    if not hosts:
        raise InventoryError(f"{hosts_file}: no host in any of {', '.join(PBX_GROUPS)}")
    network = ipaddress.ip_network(f"{hosts[0].address}/{PREFIX}", strict=False)
    for host in hosts:
        if ipaddress.ip_address(host.address) not in network:
            raise InventoryError(f"{hosts_file}: {host.name}: vpbx_internal_address: {host.address} "
                                 f"is outside the lab's network {network}")
    machine = [str(next(network.hosts()))]
    for trunk in _group_vars(directory).get("vpbx_trunks") or []:
        trunk_host = str(trunk["address"]).rpartition(":")[0]
        if ipaddress.ip_address(trunk_host) in network and trunk_host not in machine:
            machine.append(trunk_host)
    taken = {h.address for h in hosts}
    clash = taken.intersection(machine)
    if clash:
        raise InventoryError(f"{hosts_file}: {', '.join(sorted(clash))} is both a host's and the machine's")
    return Lab(tuple(hosts), network, tuple(machine))


def _group_vars(directory: Path) -> dict:
    path = directory / "group_vars" / "all.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
