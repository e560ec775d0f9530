"""The world of the lab of hosts' tests: the hosts `make cluster` built from
inventories/cluster, the machine as the carrier (at the trunk's address on
the lab's bridge), a stranger's namespace, and the end-to-end suite's SIPp
helpers (tests/e2e) to play the peers.

When the hosts are not running, the tests are skipped, or fail under
VPBX_E2E_REQUIRED=1 (molecule's verify).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from vpbx_testing.sipp import SippRunner

from cluster import hosts as cluster_hosts
from cluster import inventory as cluster_inventory
from cluster import network
from vpbx import model

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INVENTORY = REPO / "inventories" / "cluster"

PROBES = HERE / "probes.py"
STRANGER_NETNS = "vpbx-stranger"
SCRAPER_NETNS = "vpbx-scraper"
PROBE_TIMEOUT_S = 30


def unavailable(reason: str):
    if os.environ.get("VPBX_E2E_REQUIRED") == "1":
        pytest.fail(f"{reason} (VPBX_E2E_REQUIRED=1)", pytrace=False)
    pytest.skip(f"{reason}; `make cluster` builds and deploys the lab of hosts")


@pytest.fixture(scope="session")
def lab() -> cluster_inventory.Lab:
    return cluster_inventory.load(INVENTORY)


@pytest.fixture(scope="session")
def pbx() -> model.Config:
    variables = yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text())
    return model.load({k: v for k, v in variables.items() if k in model.CONTRACT_KEYS})


@pytest.fixture(scope="session")
def callback_did(pbx: model.Config) -> model.Did:
    return next(d for d in pbx.numbers.values() if d.callback and d.callback.enabled)


@pytest.fixture(scope="session")
def listed_caller(pbx: model.Config, callback_did: model.Did) -> str:
    return sorted(pbx.number_lists[callback_did.callback.list])[0]


@pytest.fixture(scope="session")
def pids(lab: cluster_inventory.Lab) -> dict[str, int]:
    """Each host's holder pid; the suite is unavailable unless every host runs."""
    found = {host.name: cluster_hosts.holder_pid(host) for host in lab.hosts}
    down = [name for name, pid in found.items() if pid is None]
    if down:
        unavailable(f"hosts not running: {', '.join(down)}")
    return found


def group(lab: cluster_inventory.Lab, name: str) -> list[cluster_inventory.Host]:
    return [host for host in lab.hosts if name in host.groups]


@pytest.fixture(scope="session")
def edges(lab: cluster_inventory.Lab, pbx: model.Config) -> dict[str, model.HostPort]:
    """Each SIP proxy and where it takes SIP (its own vpbx_sip_listen, else the group's)."""
    tree = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    proxies = tree["all"]["children"]["sip_proxies"]["hosts"]
    found = {}
    for host in group(lab, "sip_proxies"):
        own = (proxies.get(host.name) or {}).get("vpbx_sip_listen")
        if own:
            ip, port = str(own).rsplit(":", 1)
            found[host.name] = model.HostPort(ip, int(port))
        else:
            found[host.name] = pbx.sip_listen
    return found


def probe(kind: str, target: str, *, netns_of: int | None = None, netns: str | None = None) -> str | None:
    """Run probes.py in a host's network (by its holder pid) or in a named namespace."""
    if netns_of is not None:
        prefix = ["nsenter", f"--target={netns_of}", "--net", "--"]
    else:
        prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, "/usr/bin/python3", str(PROBES), kind, target],
                          capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    return done.stdout.strip() if done.returncode == 0 else None


def metrics_sources() -> list[str]:
    variables = yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text())
    return [str(source) for source in variables.get("firewall_metrics_sources", [])]


@contextmanager
def namespace(name: str, address: str, lab: cluster_inventory.Lab) -> Iterator[str]:
    """A namespace on the lab's bridge at `address` while the block runs: its name."""
    network.namespace_up(name, address, lab.network)
    try:
        yield name
    finally:
        network.namespace_down(name)


@pytest.fixture(scope="session")
def scraper(lab: cluster_inventory.Lab) -> Iterator[str]:
    """The Prometheus the inventory lets scrape the metrics (firewall_metrics_sources)."""
    [address] = metrics_sources()
    with namespace(SCRAPER_NETNS, address, lab) as name:
        yield name


@pytest.fixture(scope="session")
def stranger(lab: cluster_inventory.Lab) -> Iterator[str]:
    """Someone on the lab's bridge who is no host of the PBX, nor its scraper."""
    taken = {h.address for h in lab.hosts} | set(lab.machine_addresses) | set(metrics_sources())
    address = next(str(a) for a in reversed(list(lab.network.hosts())) if str(a) not in taken)
    with namespace(STRANGER_NETNS, address, lab) as name:
        yield name


@pytest.fixture(scope="session")
def carrier_ip(pbx: model.Config, lab: cluster_inventory.Lab) -> str:
    trunk = pbx.trunks[0]
    assert trunk.address.host in lab.machine_addresses, "the machine plays the carrier"
    assert any(ipaddress.ip_address(trunk.address.host) in ipaddress.ip_network(c)
               for c in trunk.inbound_sources)
    return trunk.address.host


@pytest.fixture
def sipp(tmp_path: Path, pids) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path / "sipp")
    yield runner
    runner.close()


def host_file(pid: int, path: str) -> Path:
    """A file as the host sees it (its own /var, /etc), read from the machine."""
    return Path(f"/proc/{pid}/root{path}")
