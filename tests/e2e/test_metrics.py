"""What Prometheus scrapes: Kamailio (xhttp_prom), RTPengine (listen-http) and callbackd
(prometheus-client), each on the host's internal address, and their counters moving by one
real callback (read before and after: the figures are the services' since they started).

The attack half: the SIP address serves no figures (HTTP there gets 404, over TCP or UDP), the
metrics socket takes no SIP, and each endpoint listens on its address alone, never on all.
"""

import json
import re
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import untrusted_loopbacks
from prometheus_client.parser import text_string_to_metric_families
from test_callback import (  # noqa: F401 (cdr_after: a fixture)
    CLIENT_E164,
    CLIENT_NUMBER,
    CLIENT_SSRC,
    EMPLOYEE_SSRC,
    FLOW_TIMEOUT,
    cdr_after,
    far_end_keys,
    trigger,
)
from vpbx_testing.raw_sip import RawSip
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap

from callbackd.config import load_settings
from vpbx import model, wire

KAMAILIO_CFG = Path("/etc/kamailio/kamailio.cfg")
RTPENGINE_CONF = Path("/etc/rtpengine/rtpengine.conf")
CALLBACKD_CONF = "/etc/vpbx/callbackd.json"
DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring" / "grafana-dashboard.json"
KAMAILIO_CTL = "unix:/run/kamailio/kamailio_ctl"
SCRAPE_TIMEOUT = 10.0
# How long a socket that must not answer is given to answer anyway.
SILENCE_WAIT = 3.0

Samples = dict[tuple[str, frozenset], float]


def deployed_endpoints() -> dict[str, model.HostPort]:
    """Where each service serves /metrics, read from what the roles deployed."""
    kamailio = re.search(r'^listen=tcp:(\S+) name "vpbx_metrics"', KAMAILIO_CFG.read_text(), re.M)
    rtpengine = re.search(r"^listen-http = (\S+)$", RTPENGINE_CONF.read_text(), re.M)
    callbackd = load_settings(CALLBACKD_CONF).metrics_listen
    assert kamailio and rtpengine and callbackd, "a service has no metrics endpoint deployed"
    return {"kamailio": hostport(kamailio[1]), "rtpengine": hostport(rtpengine[1]),
            "callbackd": model.HostPort(*callbackd)}


def hostport(text: str) -> model.HostPort:
    host, port = text.rsplit(":", 1)
    return model.HostPort(host.strip("[]"), int(port))


@pytest.fixture(scope="module")
def endpoints() -> dict[str, model.HostPort]:
    return deployed_endpoints()


def get(address: model.HostPort, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=SCRAPE_TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(address: model.HostPort) -> Samples:
    status, text = get(address)
    assert status == 200, f"{address}/metrics answered {status}"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels) -> float:
    """A sample's value; 0 for one not there yet (Kamailio's counters appear when first used)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples) -> Callable[..., float]:
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def test_each_service_serves_its_figures_on_the_internal_address(endpoints):
    kamailio = scrape(endpoints["kamailio"])
    # Kamailio's own shared memory, used and free, and its peak (issue: memory sized for the work).
    for name in ("kamailio_shmem_used_size", "kamailio_shmem_free_size", "kamailio_shmem_max_used_size"):
        assert value(kamailio, name) > 0, name
    assert value(kamailio, "kamailio_shmem_total_size") == (value(kamailio, "kamailio_shmem_real_used_size")
                                                             + value(kamailio, "kamailio_shmem_free_size"))
    assert ("rtpengine_sessions", frozenset({("type", "own")})) in scrape(endpoints["rtpengine"])
    callbackd = scrape(endpoints["callbackd"])
    assert ("callbackd_active_callbacks", frozenset({("stage", "bridged")})) in callbackd
    assert ("callbackd_callbacks_total", frozenset({("result", "bridged")})) in callbackd


def test_one_callback_moves_the_counters_of_all_three(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, cdr_after,  # noqa: F811
    endpoints,
):
    before = {name: scrape(address) for name, address in endpoints.items()}
    typed = CLIENT_NUMBER + "#"
    employee_pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", typed, EMPLOYEE_SSRC, 440, 8)
    client_pcap = tone_pcap(tmp_path / "client.pcap", CLIENT_SSRC, 660, 3)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=employee_pcap,
                        client=CLIENT_E164, client_pcap=client_pcap, client_hangup="local:3000")
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2, timeout=FLOW_TIMEOUT)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    far_end.expect_success(timeout=FLOW_TIMEOUT)
    [cdr] = cdr_after()
    assert cdr["result"] == "bridged"
    after = {name: scrape(address) for name, address in endpoints.items()}

    engine = moved(before["callbackd"], after["callbackd"])
    assert engine("callbackd_triggers_total", outcome="accepted") == 1
    assert engine("callbackd_callbacks_total", result="bridged") == 1
    assert engine("callbackd_trigger_to_callback_invite_seconds_count") == 1
    assert engine("callbackd_hash_to_client_invite_seconds_count") == 1
    # At least the DID's delay passed between the trigger and the call-back.
    assert engine("callbackd_trigger_to_callback_invite_seconds_sum") >= callback_did.callback.delay
    assert value(after["callbackd"], "callbackd_active_callbacks", stage="bridged") == 0

    edge = moved(before["kamailio"], after["kamailio"])
    assert edge("kamailio_vpbx_decisions_total", action="TriggerCallback") == 1
    # The call-back to the employee and the call to the client, out through the trunk.
    assert edge("kamailio_vpbx_decisions_total", action="CallOut") == 2
    # The engine's final reply to the trigger (the DID's reject code) and the two answered legs.
    assert edge("kamailio_core_rcv_replies_4xx_invite") >= 1
    assert edge("kamailio_core_rcv_replies_2xx_invite") >= 2

    relay = moved(before["rtpengine"], after["rtpengine"])
    assert relay("rtpengine_sessions_total") >= 1
    assert relay("rtpengine_packets_total", type="userspace") > 0


def test_a_ban_is_counted_by_its_reason(lab, pbx_address, endpoints):
    [attacker] = untrusted_loopbacks(lab, "127.0.0.150", 1)
    before = scrape(endpoints["kamailio"])
    try:
        with RawSip(attacker, pbx_address) as sip:
            scan = sip.request("OPTIONS", f"sip:100@{pbx_address}", extra=["User-Agent: friendly-scanner"])
            assert sip.ask(scan) is None
        after = scrape(endpoints["kamailio"])
    finally:
        subprocess.run(["kamcmd", "-s", KAMAILIO_CTL, "htable.delete", wire.BAN_TABLE, attacker],
                       capture_output=True, check=False)
    assert moved(before, after)("kamailio_vpbx_bans_total", reason="scanner") == 1


# -- the attack half ------------------------------------------------------------------

def test_the_sip_address_serves_no_figures(pbx_address, endpoints):
    # Kamailio takes SIP over TCP there too: an HTTP request on it is not for xhttp_prom.
    status, body = get(pbx_address)
    assert status == 404 and "kamailio_" not in body
    # Over UDP, the SIP port answers no HTTP at all.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(SILENCE_WAIT)
        udp.sendto(b"GET /metrics HTTP/1.0\r\n\r\n", (pbx_address.host, pbx_address.port))
        with pytest.raises(TimeoutError):
            udp.recv(65535)
    # And the metrics socket serves /metrics alone.
    assert get(endpoints["kamailio"], "/")[0] == 404


def test_the_metrics_socket_takes_no_sip(lab, endpoints):
    address = endpoints["kamailio"]
    options = (f"OPTIONS sip:{lab.sip_listen} SIP/2.0\r\n"
               f"Via: SIP/2.0/TCP {address.host}:5999;branch=z9hG4bK-m1\r\n"
               f"From: <sip:probe@{address.host}>;tag=m1\r\nTo: <sip:{lab.sip_listen}>\r\n"
               f"Call-ID: metrics-sip-probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               f"Content-Length: 0\r\n\r\n").encode()
    with socket.create_connection((address.host, address.port), timeout=SILENCE_WAIT) as tcp:
        tcp.sendall(options)
        try:
            answer = tcp.recv(65535)
        except TimeoutError:
            answer = b""
    assert b"SIP/2.0" not in answer


def test_each_endpoint_listens_on_its_address_alone(endpoints):
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    for name, address in endpoints.items():
        local = [line.split()[3] for line in listening.splitlines()
                 if line.split()[3].rsplit(":", 1)[1] == str(address.port)]
        assert local == [f"{address.host}:{address.port}"], f"{name}: {local}"



def test_every_figure_of_the_dashboard_is_served(endpoints):
    names = {name for address in endpoints.values() for name, _ in scrape(address)}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    wanted = {m for e in exprs for m in re.findall(r"(?<![\w$])((?:kamailio|rtpengine|callbackd)_\w+)", e)}
    assert wanted and wanted <= names, sorted(wanted - names)
