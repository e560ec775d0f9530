"""`python -m cluster up|down|status [INVENTORY]`: the lab of hosts of INVENTORY
(default inventories/cluster). `up` installs on the machine what the hosts
need and builds the hosts that are not running; a second `up` changes
nothing. `down` ends every host and removes its files and network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster import hosts, inventory, network, packages
from cluster.filesystem import STATE_ROOT
from cluster.run import run

DEFAULT_INVENTORY = Path(__file__).resolve().parents[1] / "inventories" / "cluster"


def up(lab: inventory.Lab) -> list[str]:
    changes = []
    if packages.install_debian_packages():
        changes.append("machine: packages installed or lists refreshed")
    if packages.build_wheels(str(Path(sys.executable).with_name("pip"))):
        changes.append("machine: runtime wheels built")
    if network.bridge_up(lab.network, lab.machine_addresses):
        changes.append(f"machine: bridge {network.BRIDGE} with {', '.join(lab.machine_addresses)}")
    for host in lab.hosts:
        if network.namespace_up(host.netns, host.address, lab.network):
            changes.append(f"{host.name}: network namespace {host.netns} at {host.address}")
        pid = hosts.holder_pid(host)
        if pid is None:
            pid = hosts.start(host)
            changes.append(f"{host.name}: started (pid {pid})")
        if hosts.make_new(host, pid):
            changes.append(f"{host.name}: made new")
    return changes


def down(lab: inventory.Lab) -> list[str]:
    changes = []
    for host in lab.hosts:
        if hosts.stop(host):
            changes.append(f"{host.name}: stopped")
        if network.namespace_down(host.netns):
            changes.append(f"{host.name}: network namespace removed")
        if hosts.remove_state(host):
            changes.append(f"{host.name}: files removed")
    if network.bridge_down():
        changes.append(f"machine: bridge {network.BRIDGE} removed")
    if STATE_ROOT.exists():
        run("rm", "-rf", "--one-file-system", str(STATE_ROOT))
        changes.append(f"machine: {STATE_ROOT} removed")
    return changes


def status(lab: inventory.Lab) -> list[str]:
    lines = []
    for host in lab.hosts:
        pid = hosts.holder_pid(host)
        state = f"running, pid {pid}" if pid else "not running"
        lines.append(f"{host.name}: {host.address} ({', '.join(host.groups)}): {state}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("inventory", nargs="?", type=Path, default=DEFAULT_INVENTORY)
    args = parser.parse_args(argv)
    try:
        lab = inventory.load(args.inventory)
        lines = {"up": up, "down": down, "status": status}[args.action](lab)
    except (inventory.InventoryError, RuntimeError) as exc:
        print(f"cluster {args.action}: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if args.action != "status" and not lines:
        print("nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
