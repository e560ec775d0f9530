"""Every service answers on every host, and the internal ports only the PBX's own.

The ng port, the engine's SIP port, Redis and the three metrics endpoints
listen on their host's internal address; the firewall role drops what any
other address sends them, but for the metrics ports the scraper the
inventory names (firewall_metrics_sources). Each attack (a stranger's
namespace on the same bridge, and the machine itself) has its legitimate
twin: the same probe from a host of the PBX, or from the scraper.
"""

from __future__ import annotations

import pytest
from conftest import group, probe

NG_PORT = 2223
ENGINE_SIP_PORT = 5070
REDIS_PORT = 6379
KAMAILIO_METRICS_PORT = 9494
RTPENGINE_METRICS_PORT = 9495
CALLBACKD_METRICS_PORT = 9496
# Each internal service: the probe that asks it, the group that serves it, its port.
SERVED_BY = {
    "ng": ("ng", "media_relays", NG_PORT),
    "sip": ("sip", "callback_engines", ENGINE_SIP_PORT),
    "redis": ("redis", "state_stores", REDIS_PORT),
    "kamailio-metrics": ("metrics", "sip_proxies", KAMAILIO_METRICS_PORT),
    "rtpengine-metrics": ("metrics", "media_relays", RTPENGINE_METRICS_PORT),
    "callbackd-metrics": ("metrics", "callback_engines", CALLBACKD_METRICS_PORT),
}
METRICS = [kind for kind, (probe_kind, _, _) in SERVED_BY.items() if probe_kind == "metrics"]
# Hosts of the PBX that talk to each part: Kamailio and the engines to the
# relays, the edges to the engines, the engines and edges to the store. Any
# host of the PBX may scrape the figures: the store's, which serves none.
ASKED_BY = {"ng": "sip_proxies", "sip": "sip_proxies", "redis": "callback_engines",
            **dict.fromkeys(METRICS, "state_stores")}


def targets(lab, kind: str) -> list[str]:
    _, served_by, port = SERVED_BY[kind]
    return [f"{host.address}:{port}" for host in group(lab, served_by)]


def probe_kind(kind: str) -> str:
    return SERVED_BY[kind][0]


def test_each_edge_answers_sip_from_the_carrier(edges, pids, carrier_ip, stranger):
    for name, edge in edges.items():
        # The edge is public: a stranger gets an answer too (a 403 for its calls).
        assert probe("sip", str(edge), netns=stranger), f"{name} does not answer SIP at {edge}"


@pytest.mark.parametrize("kind", list(SERVED_BY))
def test_each_internal_service_answers_the_pbx_hosts(lab, pids, kind):
    for asker in group(lab, ASKED_BY[kind]):
        for target in targets(lab, kind):
            answer = probe(probe_kind(kind), target, netns_of=pids[asker.name])
            assert answer, f"{kind} at {target} does not answer {asker.name}"
            if kind == "ng":
                assert "pong" in answer
            elif kind == "redis":
                assert answer == "+PONG"
            elif kind == "sip":
                assert answer.startswith("SIP/2.0 200"), answer


@pytest.mark.parametrize("kind", list(SERVED_BY))
def test_a_stranger_on_the_pbx_network_gets_nothing_from_the_internal_ports(lab, pids, stranger, kind):
    for target in targets(lab, kind):
        assert probe(probe_kind(kind), target, netns=stranger) is None, \
            f"{kind} at {target} answered a stranger"


@pytest.mark.parametrize("kind", list(SERVED_BY))
def test_the_machine_itself_is_no_pbx_host_either(lab, pids, kind):
    for target in targets(lab, kind):
        assert probe(probe_kind(kind), target) is None, f"{kind} at {target} answered the machine"


@pytest.mark.parametrize("kind", METRICS)
def test_the_scraper_named_in_the_inventory_gets_the_figures(lab, pids, scraper, kind):
    for target in targets(lab, kind):
        assert probe("metrics", target, netns=scraper), f"{kind} at {target} refused the scraper"
