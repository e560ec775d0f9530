"""Whether each deployed service does its job right now, asked the way its peers ask it.

A running process is not a working service: Kamailio must answer SIP,
RTPengine its ng port, callbackd the edge's OPTIONS probes, and rsyslog must
write Kamailio's lines to their file. Each check answers within about a
second, so that a caller can poll it (tests/e2e/test_recovery.py,
bench/recovery.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import yaml

from callbackd.rtpengine import NgClient, NgError, NgTimeout
from vpbx import model
from vpbx_testing import REPO
from vpbx_testing.raw_sip import RawSip, sip_options

KAMAILIO_DEFAULTS = REPO / "roles" / "kamailio" / "defaults" / "main.yml"
PROBE_WAIT = 0.5
# The addresses the project derives for each host (playbooks/group_vars/all.yml),
# read where the deployed services have them.
CALLBACKD_SETTINGS = Path("/etc/vpbx/callbackd.json")
RTPENGINE_CONFIG = Path("/etc/rtpengine/rtpengine.conf")
DEPLOYED_ADDRESSES = {
    "callbackd_sip_listen": (CALLBACKD_SETTINGS, "sip_listen"),
    "callbackd_dtmf_listen": (CALLBACKD_SETTINGS, "dtmf_listen"),
    "rtpengine_ng_listen": (RTPENGINE_CONFIG, "listen-ng"),
}


def project_address(key: str) -> model.HostPort:
    """An address the project sets itself, e.g. callbackd_sip_listen, as deployed on this host."""
    path, name = DEPLOYED_ADDRESSES[key]
    if path.suffix == ".json":
        value = json.loads(path.read_text())[name]
    else:
        settings = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        value = {k.strip(): v.strip() for k, v in settings.items()}[name]
    host, port = str(value).rsplit(":", 1)
    return model.HostPort(host.strip("[]"), int(port))


def kamailio_log_file(inventory: dict) -> Path:
    """Where rsyslog writes Kamailio's lines: the inventory's kamailio_log_file or the role's default."""
    return Path(inventory.get("kamailio_log_file")
                or yaml.safe_load(KAMAILIO_DEFAULTS.read_text())["kamailio_log_file"])


def kamailio_answers(pbx: model.HostPort, source_ip: str, wait: float = PROBE_WAIT) -> bool:
    """The edge answers SIP OPTIONS within `wait` s."""
    return sip_options(pbx, source_ip, tries=1, wait=wait) is not None


def rtpengine_answers(ng: model.HostPort, wait: float = PROBE_WAIT) -> bool:
    """RTPengine answers an ng ping with pong within `wait` s."""
    with NgClient((ng.host, ng.port), timeout=wait, retries=0) as client:
        try:
            return client.ping()
        except (NgTimeout, NgError, OSError):
            return False


def callbackd_answers(engine: model.HostPort, edge: model.HostPort, wait: float = PROBE_WAIT) -> bool:
    """callbackd answers, within `wait` s, OPTIONS sent as the edge's dispatcher sends them (from
    the edge's address: it takes them from the edges only)."""
    return sip_options(engine, edge.host, tries=1, wait=wait) is not None


def not_a_did(lab: model.Config) -> str:
    """A number like the inventory's DIDs that is none of them."""
    first = sorted(lab.numbers)[0]
    return next(first[:-1] + last for last in "0123456789" if first[:-1] + last not in lab.numbers)


def send_decision_probe(pbx: model.HostPort, carrier_ip: str, number: str, caller: str,
                        wait: float = PROBE_WAIT) -> str:
    """The carrier's INVITE from `caller` to `number`, which is no DID: the edge logs its decision
    and refuses it statelessly (404, nothing to acknowledge). Its Call-ID, which Kamailio writes
    on the decision's line."""
    call_id = f"probe-{uuid.uuid4().hex}"
    with RawSip(carrier_ip, pbx) as sip:
        sip.ask(sip.request("INVITE", f"sip:{number}@{pbx}", call_id=call_id,
                            from_uri=f"sip:{caller}@{carrier_ip}"), wait=wait)
    return call_id


def decision_logged(log: Path, call_id: str, since: int = 0) -> bool:
    """The log has, after byte `since`, the decision on the request `call_id`."""
    try:
        with log.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return False
    return any("decision:" in line and call_id in line for line in text.splitlines())
