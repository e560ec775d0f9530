"""Bans and counts of failed authentications are the same at every SIP proxy (htable over dmq).

A second SIP proxy runs beside the deployed one: the deployed kamailio.cfg
on SECOND_EDGE_IP, replicating with the first as another host of the
inventory would (its replication address among the peers both take KDMQ
from, the first as its notification address). A source banned at the first
edge gets no answer at the second, while another source is answered there;
wrong passwords guessed at both edges add up to one ban. And KDMQ from a
stranger, who would lift his own ban that way, is dropped by both.

The waits end when what they wait for happens; their limits only bound a failure.
"""

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import sip_options, untrusted_loopbacks
from vpbx_testing.raw_sip import RawSip
from vpbx_testing.second_edge import KAMAILIO_CFG, KAMAILIO_CTL, SECOND_EDGE_IP
from vpbx_testing.second_edge import second_edge as run_second_edge
from vpbx_testing.waiting import wait_until

from vpbx import model, wire

EDGE_SETTINGS = Path("/etc/kamailio/vpbx/edge.json")
BACK_WAIT = 60.0
# Enough wrong passwords to be banned by the role's default (kamailio_auth_failures).
GUESSES = 5


@dataclass
class Edge:
    sip: model.HostPort
    ctl: str

    def kamcmd(self, *args: str) -> str:
        return subprocess.run(["kamcmd", "-s", self.ctl, *args], capture_output=True, text=True,
                              check=False).stdout

    def count(self, table: str, ip: str) -> int | None:
        """The integer an htable holds for `ip`, None when it holds nothing."""
        found = re.search(r"value:\s*(-?\d+)", self.kamcmd("htable.get", table, ip))
        return int(found.group(1)) if found else None

    def banned(self, ip: str) -> bool:
        return "value" in self.kamcmd("htable.get", wire.BAN_TABLE, ip)

    def lift(self, ip: str) -> None:
        self.kamcmd("htable.delete", wire.BAN_TABLE, ip)
        self.kamcmd("htable.delete", wire.AUTH_FAIL_TABLE, ip)


@pytest.fixture(scope="module")
def settings() -> dict:
    edge = json.loads(EDGE_SETTINGS.read_text())
    if not edge.get("dmq_socket"):
        pytest.skip("the SIP proxies do not replicate (no kamailio_dmq_listen)")
    return edge


@pytest.fixture(scope="module")
def first_edge(pbx_address) -> Edge:
    return Edge(pbx_address, KAMAILIO_CTL)


@pytest.fixture
def attackers(lab):
    return iter(untrusted_loopbacks(lab, "127.0.0.150", 10))


@pytest.fixture
def peers_with_second_edge(settings, first_edge) -> Iterator[str]:
    """The deployed edge's settings with the second edge's replication address among the peers,
    as the role renders them for a second host of sip_proxies; the deployed ones again after."""
    original = EDGE_SETTINGS.read_bytes()
    [dmq_listen] = [p for p in settings["dmq_peers"] if p.startswith(f"{first_edge.sip.host}:")]
    second = f"{SECOND_EDGE_IP}:{dmq_listen.rsplit(':', 1)[1]}"
    edited = dict(settings, dmq_peers=sorted({*settings["dmq_peers"], second}))
    try:
        EDGE_SETTINGS.write_text(json.dumps(edited, indent=4) + "\n")
        first_edge.kamcmd("app_python.reload")
        yield dmq_listen
    finally:
        EDGE_SETTINGS.write_bytes(original)
        first_edge.kamcmd("app_python.reload")


@pytest.fixture
def second_edge(peers_with_second_edge, first_edge, pbx_address, tmp_path) -> Iterator[Edge]:
    """A second SIP proxy, replicating with the first edge."""
    first_dmq = peers_with_second_edge
    second_dmq = f"{SECOND_EDGE_IP}:{first_dmq.rsplit(':', 1)[1]}"
    replace = {f"listen=udp:{first_dmq} ": f"listen=udp:{second_dmq} ",
               f'modparam("dmq", "server_address", "sip:{first_dmq}")':
                   f'modparam("dmq", "server_address", "sip:{second_dmq}")\n'
                   f'modparam("dmq", "notification_address", "sip:{first_dmq}")'}
    assert all(old in KAMAILIO_CFG.read_text() for old in replace), "no dmq in kamailio.cfg"
    with run_second_edge(pbx_address, tmp_path, replace) as (sip, ctl):
        edge = Edge(sip, ctl)
        wait_until("the first edge knows the second one as a replication peer",
                   lambda: SECOND_EDGE_IP in first_edge.kamcmd("dmq.list_nodes"), BACK_WAIT)
        yield edge


@pytest.fixture
def attacker(attackers, first_edge) -> Iterator[str]:
    ip = next(attackers)
    yield ip
    first_edge.lift(ip)


def test_a_source_banned_at_one_edge_is_refused_at_the_other_which_answers_the_others(
    first_edge, second_edge, attacker, stranger_ip,
):
    # Banned at the first edge...
    ban_as_scanner(first_edge, attacker)
    # ...it gets nothing at the second one either.
    wait_until("the ban reaches the second edge", lambda: second_edge.banned(attacker), BACK_WAIT)
    assert sip_options(second_edge.sip, attacker) is None
    # Anyone else is answered there.
    assert sip_options(second_edge.sip, stranger_ip) is not None
    # Lifted at one edge, the ban is lifted at both.
    first_edge.lift(attacker)
    wait_until("the lifted ban reaches the second edge", lambda: not second_edge.banned(attacker),
               BACK_WAIT)
    assert sip_options(second_edge.sip, attacker) is not None


def test_wrong_passwords_guessed_at_both_edges_add_up_to_one_ban_while_the_phone_registers(
    lab, first_edge, second_edge, attacker, phone_ips,
):
    extension = sorted(lab.extensions)[0]
    first, rest = GUESSES // 2, GUESSES - GUESSES // 2
    with RawSip(attacker, first_edge.sip) as guesser:
        assert [guesser.register(extension, f"guess-{uuid.uuid4().hex[:8]}") for _ in range(first)] \
            == [401] * first
    wait_until("every failed authentication reaches the second edge",
               lambda: second_edge.count(wire.AUTH_FAIL_TABLE, attacker) == first, BACK_WAIT)
    with RawSip(attacker, second_edge.sip) as guesser:
        assert [guesser.register(extension, f"guess-{uuid.uuid4().hex[:8]}") for _ in range(rest)] \
            == [401] * rest
        # Banned now, everywhere: even the right password gets no answer.
        assert guesser.register(extension, lab.extensions[extension]) is None
    wait_until("the ban reaches the first edge", lambda: first_edge.banned(attacker), BACK_WAIT)
    with RawSip(attacker, first_edge.sip) as guesser:
        assert guesser.register(extension, lab.extensions[extension]) is None
    # The phone itself registers at the second edge.
    with RawSip(phone_ips[extension], second_edge.sip) as phone:
        assert phone.register(extension, lab.extensions[extension]) == 200
        assert phone.register(extension, lab.extensions[extension], expires=0) == 200


def ban_as_scanner(edge: Edge, ip: str) -> None:
    """A scanner's User-Agent: banned at once."""
    with RawSip(ip, edge.sip) as sip:
        scan = sip.request("OPTIONS", f"sip:{edge.sip}", extra=["User-Agent: friendly-scanner"])
        assert sip.ask(scan) is None
    assert edge.banned(ip)


def test_kdmq_from_a_stranger_is_dropped_and_lifts_no_ban(settings, first_edge, second_edge, attacker):
    ban_as_scanner(first_edge, attacker)
    wait_until("the ban reaches the second edge", lambda: second_edge.banned(attacker), BACK_WAIT)
    # htable's own replication of a deletion (HT_DMQ_DEL_CELL), as a peer would send it.
    body = json.dumps({"action": 4, "htname": wire.BAN_TABLE, "cname": attacker, "type": 0, "strval": "",
                       "intval": 0, "mode": 0})
    dmq_port = int(settings["dmq_peers"][0].rsplit(":", 1)[1])
    for edge, dmq in ((first_edge, model.HostPort(first_edge.sip.host, dmq_port)),
                      (second_edge, model.HostPort(SECOND_EDGE_IP, dmq_port))):
        for target in (dmq, edge.sip):
            with RawSip(attacker, target) as sip:
                forged = sip.request("KDMQ", f"sip:htable@{target}",
                                     extra=["Content-Type: application/json"], body=body)
                assert sip.ask(forged) is None
    assert first_edge.banned(attacker) and second_edge.banned(attacker)
