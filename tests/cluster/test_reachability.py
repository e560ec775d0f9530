"""Every service answers on every host, and the internal ports only the PBX's own.

The ng port, the engine's SIP port and Redis listen on their host's internal
address; the firewall role drops what any other address sends them. Each
attack (a stranger's namespace on the same bridge, and the machine itself)
has its legitimate twin: the same probe from a host of the PBX.
"""

from __future__ import annotations

import pytest
from conftest import group, probe

NG_PORT = 2223
ENGINE_SIP_PORT = 5070
REDIS_PORT = 6379
# Hosts of the PBX that talk to each part: Kamailio and the engines to the
# relays, the edges to the engines, the engines and edges to the store.
ASKED_BY = {"ng": "sip_proxies", "sip": "sip_proxies", "redis": "callback_engines"}
SERVED_BY = {"ng": ("media_relays", NG_PORT), "sip": ("callback_engines", ENGINE_SIP_PORT),
             "redis": ("state_stores", REDIS_PORT)}


def targets(lab, kind: str) -> list[str]:
    served_by, port = SERVED_BY[kind]
    return [f"{host.address}:{port}" for host in group(lab, served_by)]


def test_each_edge_answers_sip_from_the_carrier(edges, pids, carrier_ip, stranger):
    for name, edge in edges.items():
        # The edge is public: a stranger gets an answer too (a 403 for its calls).
        assert probe("sip", str(edge), netns=stranger), f"{name} does not answer SIP at {edge}"


@pytest.mark.parametrize("kind", ["ng", "sip", "redis"])
def test_each_internal_service_answers_the_pbx_hosts(lab, pids, kind):
    for asker in group(lab, ASKED_BY[kind]):
        for target in targets(lab, kind):
            answer = probe(kind, target, netns_of=pids[asker.name])
            assert answer, f"{kind} at {target} does not answer {asker.name}"
            if kind == "ng":
                assert "pong" in answer
            elif kind == "redis":
                assert answer == "+PONG"
            else:
                assert answer.startswith("SIP/2.0 200"), answer


@pytest.mark.parametrize("kind", ["ng", "sip", "redis"])
def test_a_stranger_on_the_pbx_network_gets_nothing_from_the_internal_ports(lab, pids, stranger, kind):
    for target in targets(lab, kind):
        assert probe(kind, target, netns=stranger) is None, f"{kind} at {target} answered a stranger"


@pytest.mark.parametrize("kind", ["ng", "sip", "redis"])
def test_the_machine_itself_is_no_pbx_host_either(lab, pids, kind):
    for target in targets(lab, kind):
        assert probe(kind, target) is None, f"{kind} at {target} answered the machine"
