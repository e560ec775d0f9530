"""The lab's network: one bridge on the machine, a network namespace per host.

The bridge carries the lab's /24 and nothing else: no host has a default
route, the machine forwards nothing for them. The machine takes its own
addresses on the bridge (the first of the network, and the trunks', so that
the tests' carrier answers there); each host has loopback and one address.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from cluster.run import run

BRIDGE = "vpbx-cluster"
NETNS_DIR = Path("/run/netns")


def bridge_up(network: ipaddress.IPv4Network, addresses: tuple[str, ...]) -> bool:
    """Make the bridge with the machine's addresses; True if anything changed."""
    changed = False
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        changed = True
    # No IPv6 on the lab's links: nothing but the inventory's addresses.
    Path(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6").write_text("1\n")
    have = _addresses(BRIDGE)
    for index, address in enumerate(addresses):
        prefix = network.prefixlen if index == 0 else 32
        if address not in have:
            run("ip", "address", "add", f"{address}/{prefix}", "dev", BRIDGE)
            changed = True
    if "UP" not in _link(BRIDGE)["flags"]:
        run("ip", "link", "set", BRIDGE, "up")
        changed = True
    return changed


def bridge_down() -> bool:
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        return False
    run("ip", "link", "delete", BRIDGE)
    return True


def namespace_up(netns: str, address: str, network: ipaddress.IPv4Network) -> bool:
    """A network namespace on the bridge: loopback, and `address` on its eth0; True if changed."""
    changed = False
    if not (NETNS_DIR / netns).exists():
        run("ip", "netns", "add", netns)
        changed = True
    outside = _veth_name(netns)
    if run("ip", "link", "show", outside, check=False).returncode != 0:
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", netns)
        run("ip", "link", "set", outside, "master", BRIDGE, "up")
        changed = True
    inside = ("ip", "netns", "exec", netns)
    run(*inside, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    if address not in _addresses("eth0", netns):
        run(*inside, "ip", "address", "add", f"{address}/{network.prefixlen}", "dev", "eth0")
        changed = True
    for link in ("lo", "eth0"):
        if "UP" not in _link(link, netns)["flags"]:
            run(*inside, "ip", "link", "set", link, "up")
            changed = True
    return changed


def namespace_down(netns: str) -> bool:
    if not (NETNS_DIR / netns).exists():
        return False
    run("ip", "netns", "delete", netns)
    return True


def namespace_pids(netns: str) -> list[int]:
    """Every process whose network is the namespace's."""
    if not (NETNS_DIR / netns).exists():
        return []
    found = run("ip", "netns", "pids", netns, check=False).stdout.split()
    return [int(pid) for pid in found]


def _veth_name(netns: str) -> str:
    # Interface names have 15 characters at most.
    return ("vc-" + netns.removeprefix("vpbx-"))[:15]


def _link(name: str, netns: str | None = None) -> dict:
    prefix = ("ip", "-netns", netns) if netns else ("ip",)
    return json.loads(run(*prefix, "-json", "link", "show", name).stdout)[0]


def _addresses(name: str, netns: str | None = None) -> set[str]:
    prefix = ("ip", "-netns", netns) if netns else ("ip",)
    found = json.loads(run(*prefix, "-json", "address", "show", "dev", name).stdout)
    return {a["local"] for link in found for a in link.get("addr_info", [])}
