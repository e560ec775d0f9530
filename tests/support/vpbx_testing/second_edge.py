"""A second SIP proxy beside the deployed one, for the tests of what the edges share.

The deployed kamailio.cfg, listening on SECOND_EDGE_IP (SIP and metrics) with
a control socket of its own (and whatever else a test replaces), run as its own session and
ended with it: another host of sip_proxies, as far as the first edge and the
state store can tell.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import yaml

from vpbx import model
from vpbx_testing import health
from vpbx_testing.waiting import wait_until

KAMAILIO_CFG = Path("/etc/kamailio/kamailio.cfg")
KEMI_DIR = Path(yaml.safe_load(health.KAMAILIO_DEFAULTS.read_text())["kamailio_kemi_dir"])
# Rung before a closed scheme refuses; no phone registers it while a flood runs.
UNREGISTERED_EXTENSION = "100"
KAMAILIO_CTL = "unix:/run/kamailio/kamailio_ctl"
# A loopback address no trunk, phone or stranger of the lab uses.
SECOND_EDGE_IP = "127.0.0.2"
# Generous: Kamailio starts within a second or two.
START_WAIT = 60.0


@contextmanager
def second_edge(pbx_address: model.HostPort, workdir: Path,
                replace: Mapping[str, str] | None = None,
                shm_mb: int = 64) -> Iterator[tuple[model.HostPort, str]]:
    """Run it with `shm_mb` MB of shared memory until the block ends; (its SIP address, its ctl socket)."""
    edge = model.HostPort(SECOND_EDGE_IP, pbx_address.port)
    ctl = f"unix:{workdir / 'ctl'}"
    cfg = KAMAILIO_CFG.read_text()
    for proto in ("udp", "tcp"):
        cfg = cfg.replace(f"listen={proto}:{pbx_address}", f"listen={proto}:{edge}")
    # The first edge holds its metrics port (TCP, one listener per address).
    cfg = re.sub(r'^listen=tcp:\S+:(\d+) (name "vpbx_metrics")$', rf"listen=tcp:{SECOND_EDGE_IP}:\1 \2",
                 cfg, flags=re.M)
    for old, new in (replace or {}).items():
        cfg = cfg.replace(old, new)
    cfg = cfg.replace(KAMAILIO_CTL, ctl)
    (workdir / "kamailio.cfg").write_text(cfg)
    with (workdir / "kamailio.out").open("wb") as out:
        process = subprocess.Popen(
            ["kamailio", "-DD", "-f", str(workdir / "kamailio.cfg"), "-P", str(workdir / "pid"),
             "-m", str(shm_mb), "-M", "16"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(f"a second edge answers SIP OPTIONS at {edge}",
                   lambda: process.poll() is None and health.kamailio_answers(edge, SECOND_EDGE_IP),
                   START_WAIT)
        yield edge, ctl
    finally:
        # Its main process and workers, and nothing else: they are its own session.
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(START_WAIT)


def stateful_refusal(workdir: Path, scheme: str, reserve_percent: int | None = None) -> dict[str, str]:
    """second_edge's replacements that load a copy of the KEMI router's directory in which
    `scheme` rings an extension first, so that its refusal comes from a tm transaction
    (the router refuses a scheme that only refuses statelessly, which takes no shared
    memory), and whose shared-memory reserve is `reserve_percent` if given."""
    copy = workdir / "kemi"
    shutil.copytree(KEMI_DIR, copy)
    if reserve_percent is not None:
        edge = json.loads((copy / "edge.json").read_text())
        edge["shm_reserve_percent"] = reserve_percent
        (copy / "edge.json").write_text(json.dumps(edge))
    routing = json.loads((copy / "routing.json").read_text())
    for found in routing["vpbx_routing_schemes"]:
        if found["name"] == scheme:
            found["steps"].insert(0, {"ring": [UNREGISTERED_EXTENSION], "timeout": 5})
    (copy / "routing.json").write_text(json.dumps(routing))
    return {f"{KEMI_DIR}/vpbx_router.py": f"{copy}/vpbx_router.py"}
