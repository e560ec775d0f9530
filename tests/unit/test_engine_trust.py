"""The engine acts only on what its trusted sources say: the edge's decision, RTPengine's digits."""

import json
from pathlib import Path

import pytest

from callbackd.config import Settings
from callbackd.engine import ACCEPT_HEADER, NOT_DECIDED, Engine
from callbackd.events import Digit, Event
from callbackd.machine import Prompt
from callbackd.rtpengine import NgTimeout
from vpbx.model import load

DID = "+421233000111"
EMPLOYEE = "+421905111222"
RTPENGINE = ("127.0.0.1", 2223)
EMPLOYEE_MEDIA = "127.0.0.201"


class Routing:
    """Stands in for the routing file: never replaced during a test."""

    def replaced(self):
        return None


class Reactor:
    """Stands in for the SIP endpoint's timers: records them, fires none."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, object]] = []

    def call_later(self, seconds, fn, *args):
        self.timers.append((seconds, fn))
        return self

    def cancel(self) -> None:
        pass


class Prompts:
    """Stands in for the installed prompts: each lasts a second."""

    def seconds(self, did: str, language: str) -> dict[str, float]:
        return {name: 1.0 for name in Prompt}


class Session:
    """Stands in for a callback in progress: records the events fed to it."""

    def __init__(self, media_call_id: str) -> None:
        self.id = "s1"
        self.media_call_id = media_call_id
        self.employee_media = EMPLOYEE_MEDIA
        self.fed: list[Event] = []

    def feed(self, event: Event) -> None:
        self.fed.append(event)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    config = load({
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_trunks": [
            {"name": "carrier", "address": "127.0.0.5:5080", "inbound_sources": ["127.0.0.5/32"]},
        ],
        "vpbx_number_lists": [{"name": "sales", "numbers": [EMPLOYEE]}],
        "vpbx_routing_schemes": [{"name": "closed", "steps": [{"reject": 480}]}],
        "vpbx_numbers": [
            {"number": DID, "routing": "closed", "callback": {"enabled": True, "list": "sales"}},
        ],
    })
    settings = Settings(
        routing_file=tmp_path / "routing.json", sip_listen=("127.0.0.1", 5070), proxy=("127.0.0.1", 5060),
        trusted_proxies=frozenset({"127.0.0.1"}), rtpengine_ng=RTPENGINE, dtmf_listen=("127.0.0.1", 5071),
        pcap_dir=tmp_path, recordings_dir=tmp_path, cdr_file=tmp_path / "cdr.jsonl", log_file=None,
        prompts_dir=tmp_path, client_ring_timeout=45.0)
    engine = Engine(settings, Routing(), config, ng=None, cdr=None, prompts=Prompts())
    engine.sip = Reactor()
    return engine


def decision(did=(DID,), employee=(EMPLOYEE,)) -> dict[str, list[str]]:
    headers = {"call-id": ["c1"]}
    if did:
        headers["x-vpbx-did"] = list(did)
    if employee:
        headers["x-vpbx-employee"] = list(employee)
    return headers


def digit(source_ip: str, call_id: str = "callback-s1", tag: str = "EMP", event: int = 5) -> bytes:
    return json.dumps({"callid": call_id, "source_tag": tag, "tags": ["EMP", "B"], "type": "DTMF",
                       "source_ip": source_ip, "event": event, "duration": 80, "volume": 10}).encode()


@pytest.fixture
def session(engine: Engine) -> Session:
    session = Session("callback-s1")
    engine._by_media[session.media_call_id] = session
    return session


@pytest.mark.parametrize("headers", [
    decision(did=()),
    decision(employee=()),
    decision(did=(DID, DID)),
    decision(employee=(EMPLOYEE, "+421905000000")),
], ids=["no-did", "no-employee", "did-twice", "employee-twice"])
def test_a_trigger_without_the_edges_decision_once_is_refused_and_no_callback_starts(engine, headers):
    assert engine.on_trigger(DID, EMPLOYEE, headers) == NOT_DECIDED
    assert engine.sessions == {}


def test_a_trigger_with_the_edges_decision_starts_a_callback(engine):
    code, _reason, extra = engine.on_trigger(DID, EMPLOYEE, decision())
    assert code == 486 and extra == [ACCEPT_HEADER]
    assert list(engine.sessions) == [(DID, EMPLOYEE)]


def test_the_decision_counts_not_the_numbers_the_caller_wrote(engine):
    # R-URI and From name a listed pair, the edge decided on an unlisted employee.
    code, _reason, extra = engine.on_trigger(DID, EMPLOYEE, decision(employee=("+421905000000",)))
    assert code == 403 and ACCEPT_HEADER not in extra


def test_a_digit_datagram_from_rtpengine_of_the_employees_media_counts(engine, session):
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA), RTPENGINE)
    assert session.fed == [Digit("5")]


def test_a_digit_datagram_not_from_rtpengine_is_dropped(engine, session, caplog):
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA), ("127.0.0.66", 2223))
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA, event=6), RTPENGINE)
    assert session.fed == [Digit("6")]
    assert "DTMF datagram from 127.0.0.66:2223 dropped: not RTPengine" in caplog.text


@pytest.mark.parametrize("datagram", [digit("127.0.0.203"), digit(EMPLOYEE_MEDIA, tag="B")],
                         ids=["another-address", "the-clients-tag"])
def test_a_digit_rtpengine_saw_from_anyone_but_the_employee_does_not_count(engine, session, datagram):
    engine.on_dtmf_datagram(datagram, RTPENGINE)
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA, event=11), RTPENGINE)
    assert session.fed == [Digit("#")]


# -- several engines, several relays -----------------------------------------------

PEER = "127.0.0.2:5070"
PEER_DTMF = ("127.0.0.2", 5071)


class Owners:
    """Stands in for the state store: who runs each callback."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners

    def owner(self, callback_id: str) -> str | None:
        return self.owners.get(callback_id)


class Socket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append((data, address))


def test_the_digits_of_another_engines_callback_go_on_to_that_engine_only(engine):
    engine.claims, engine.dtmf_socket = Owners({"s9": PEER}), Socket()
    engine._peers_dtmf = {PEER: PEER_DTMF}
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA, call_id="callback-s9"), RTPENGINE)
    assert engine.dtmf_socket.sent == [(digit(EMPLOYEE_MEDIA, call_id="callback-s9"), PEER_DTMF)]
    # A callback nobody runs, and one forwarded already: nothing goes anywhere.
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA, call_id="callback-s8"), RTPENGINE)
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA, call_id="callback-s9"), PEER_DTMF)
    assert len(engine.dtmf_socket.sent) == 1


def test_a_digit_forwarded_by_a_peer_engine_counts_and_one_from_a_stranger_does_not(engine, session):
    engine._peers_dtmf = {PEER: PEER_DTMF}
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA), PEER_DTMF)
    engine.on_dtmf_datagram(digit(EMPLOYEE_MEDIA, event=7), ("127.0.0.66", 5071))
    assert session.fed == [Digit("5")]


class Relay:
    def __init__(self, port: int, answers: bool) -> None:
        self.address, self.answers, self.offers = ("127.0.0.1", port), answers, 0

    def offer(self) -> str:
        self.offers += 1
        if not self.answers:
            raise NgTimeout("offer", "no reply")
        return f"sdp of {self.address[1]}"


def test_a_callback_goes_to_the_next_relay_when_its_own_does_not_answer_and_stays_there(engine):
    down, up = Relay(2223, answers=False), Relay(2224, answers=True)
    engine._relays = [down, up]
    first = type("S", (), {"id": "s1", "ng": down, "media_placed": False})()
    assert engine.offer_on_a_relay(first, lambda ng: ng.offer()) == "sdp of 2224"
    assert first.ng is up and first.media_placed
    # The relay that did not answer is skipped for the next callbacks.
    second = type("S", (), {"id": "s2", "ng": down, "media_placed": False})()
    engine.offer_on_a_relay(second, lambda ng: ng.offer())
    assert (down.offers, second.ng) == (1, up)
    # A retry of the first callback's call stays on the relay that holds its media.
    engine._relay_down_until.clear()
    engine.offer_on_a_relay(first, lambda ng: ng.offer())
    assert (down.offers, up.offers) == (1, 3)
