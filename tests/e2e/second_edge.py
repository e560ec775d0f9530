"""A second SIP proxy beside the deployed one, for the tests of what the edges share.

The deployed kamailio.cfg, listening on SECOND_EDGE_IP with a control socket
of its own (and whatever else a test replaces), run as its own session and
ended with it: another host of sip_proxies, as far as the first edge and the
state store can tell.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import health
from test_recovery import wait_until

from vpbx import model

KAMAILIO_CFG = Path("/etc/kamailio/kamailio.cfg")
KAMAILIO_CTL = "unix:/run/kamailio/kamailio_ctl"
# A loopback address no trunk, phone or stranger of the lab uses.
SECOND_EDGE_IP = "127.0.0.2"
# Generous: Kamailio starts within a second or two.
START_WAIT = 60.0


@contextmanager
def second_edge(pbx_address: model.HostPort, workdir: Path,
                replace: Mapping[str, str] | None = None) -> Iterator[tuple[model.HostPort, str]]:
    """Run it until the block ends; (where it takes SIP, its control socket)."""
    edge = model.HostPort(SECOND_EDGE_IP, pbx_address.port)
    ctl = f"unix:{workdir / 'ctl'}"
    cfg = KAMAILIO_CFG.read_text()
    for proto in ("udp", "tcp"):
        cfg = cfg.replace(f"listen={proto}:{pbx_address}", f"listen={proto}:{edge}")
    for old, new in (replace or {}).items():
        cfg = cfg.replace(old, new)
    cfg = cfg.replace(KAMAILIO_CTL, ctl)
    (workdir / "kamailio.cfg").write_text(cfg)
    with (workdir / "kamailio.out").open("wb") as out:
        process = subprocess.Popen(
            ["kamailio", "-DD", "-f", str(workdir / "kamailio.cfg"), "-P", str(workdir / "pid"),
             "-m", "64", "-M", "16"],
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
