"""callbackd.sip against real SIP peers: SIPp plays the SIP edge relaying a
trigger and the far ends of the legs the engine originates.

The endpoint runs its reactor on a background thread for the whole module;
tests talk to it through call_soon_threadsafe and read what the handlers saw
from queues. Every wait is bounded; SIPp runs with its own -timeout.

    .venv/bin/python -m pytest tests/integration -q
"""

import concurrent.futures
import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vpbx_testing.sipp import SippRunner, free_udp_port

from callbackd.engine import NOT_DECIDED
from callbackd.sip import Leg, LegHandler, SipEndpoint
from callbackd.trigger import BadTrigger, edge_decision
from vpbx import wire

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
# Loopback addresses of this suite only (the deployed PBX owns other 127.x).
ENGINE = ("127.0.0.200", 5060)
EDGE_IP = "127.0.0.201"  # the SIP edge relaying triggers, probing with OPTIONS
FAR_END_IP = "127.0.0.202"  # the mobile / client the engine calls
STRANGER_IP = "127.0.0.203"  # anyone else who knows the engine's address
# R-URI host of the legs: nobody listens there; INVITEs go to the next hop.
CARRIER_RURI_HOST = "127.0.0.210:5060"
DID = "+421233000111"
MOBILE = "+421905111222"
SIPP_TIMEOUT = 15.0
EVENT_WAIT = 10.0
NO_HEADER = "X-Vpbx-Test: 1"
DID_HEADER = f"{wire.DID_HEADER}: {DID}"
EMPLOYEE_HEADER = f"{wire.EMPLOYEE_HEADER}: {MOBILE}"
OFFER = (
    "v=0\n"
    "o=callbackd 1 1 IN IP4 127.0.0.200\n"
    "s=-\n"
    "c=IN IP4 127.0.0.200\n"
    "t=0 0\n"
    "m=audio 30000 RTP/AVP 8 101\n"
    "a=rtpmap:8 PCMA/8000\n"
    "a=rtpmap:101 telephone-event/8000\n"
    "a=sendrecv\n"
)


class Triggers:
    """The engine's on_trigger: records what it saw, answers as configured."""

    ACCEPTED = (486, "Busy Here", [(wire.ACCEPT_HEADER, wire.ACCEPTED)])

    def __init__(self) -> None:
        self.seen: queue.Queue[tuple[str, str, dict[str, list[str]]]] = queue.Queue()
        self.answer: Any = self.ACCEPTED

    def __call__(self, did: str, caller: str, headers: dict[str, list[str]]):
        self.seen.put((did, caller, headers))
        if isinstance(self.answer, Exception):
            raise self.answer
        if callable(self.answer):
            return self.answer(headers)
        return self.answer

    def reset(self) -> None:
        self.answer = self.ACCEPTED
        while not self.seen.empty():
            self.seen.get_nowait()


class Recorder(LegHandler):
    """A leg's handler that queues what happened, as (event, *args)."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.history: list[tuple[Any, ...]] = []

    def on_ringing(self, leg: Leg) -> None:
        self.events.put(("ringing",))

    def on_answered(self, leg: Leg, sdp: str) -> None:
        self.events.put(("answered", sdp))

    def on_failed(self, leg: Leg, code: int, reason: str) -> None:
        self.events.put(("failed", code, reason))

    def on_disconnected(self, leg: Leg, by: str) -> None:
        self.events.put(("disconnected", by))

    def on_dtmf(self, leg: Leg, digit: str) -> None:
        self.events.put(("dtmf", digit))

    def wait_for(self, kind: str, timeout: float = EVENT_WAIT) -> tuple[Any, ...]:
        """The next `kind` event; earlier events are kept in history."""
        try:
            while True:
                event = self.events.get(timeout=timeout)
                self.history.append(event)
                if event[0] == kind:
                    return event
        except queue.Empty:
            raise AssertionError(f"no {kind} within {timeout:g} s; saw {self.history}") from None

    def settle(self, seconds: float = 0.5) -> list[tuple[Any, ...]]:
        """Everything that arrives within `seconds`, history included."""
        try:
            while True:
                self.history.append(self.events.get(timeout=seconds))
        except queue.Empty:
            return self.history


class Engine:
    """The endpoint on its reactor thread, and a way to call into it."""

    def __init__(self, endpoint: SipEndpoint, triggers: Triggers):
        self.endpoint = endpoint
        self.triggers = triggers

    def on_reactor(self, fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> Any:
        """fn(*args) on the reactor thread; its result or exception."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        self.endpoint.call_soon_threadsafe(call)
        return future.result(timeout)

    def originate(
        self, leg_id: str, far_end_port: int, *, ring_timeout: float = 10.0, handler: Recorder | None = None
    ) -> tuple[Leg, Recorder]:
        handler = handler or Recorder()
        leg = self.on_reactor(
            lambda: self.endpoint.originate(
                leg_id,
                f"sip:{MOBILE}@{CARRIER_RURI_HOST}",
                DID,
                OFFER,
                ring_timeout,
                handler,
                next_hop=(FAR_END_IP, far_end_port),
            )
        )
        return leg, handler


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    logging.getLogger("callbackd").setLevel(logging.DEBUG)
    triggers = Triggers()
    started: queue.Queue[Any] = queue.Queue()

    def serve() -> None:
        try:
            endpoint = SipEndpoint(ENGINE, triggers, trusted=[EDGE_IP])
        except BaseException as exc:
            started.put(exc)
            return
        started.put(endpoint)
        endpoint.run()

    thread = threading.Thread(target=serve, name="sip-reactor", daemon=True)
    thread.start()
    endpoint = started.get(timeout=10)
    if isinstance(endpoint, BaseException):
        raise endpoint
    yield Engine(endpoint, triggers)
    endpoint.stop()
    thread.join(10)
    assert not thread.is_alive(), "the reactor did not stop"


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path / "sipp", timeout=SIPP_TIMEOUT)
    yield runner
    runner.close()


@pytest.fixture
def triggers(engine: Engine) -> Iterator[Triggers]:
    engine.triggers.reset()
    yield engine.triggers
    engine.triggers.reset()


def far_end(
    sipp: SippRunner,
    mode: str,
    *,
    hangup: str = "remote",
    infos: str = "no",
    ring_ms: int = 200,
    hold_ms: int = 300,
):
    """A SIPp far end expecting the DID as caller ID; (process, port)."""
    port = far_end_port()
    keys = {
        "mode": mode,
        "ring_ms": ring_ms,
        "hangup": hangup,
        "hold_ms": hold_ms,
        "infos": infos,
        "expect_user": MOBILE,
        "expect_from": DID,
    }
    return sipp.start_uas(SCENARIOS / "leg_uas.xml", FAR_END_IP, port, keys), port


def far_end_port() -> int:
    return free_udp_port(FAR_END_IP)


def engine_address() -> str:
    return f"{ENGINE[0]}:{ENGINE[1]}"


def send_trigger(sipp: SippRunner, source_ip: str = EDGE_IP, **keys: str):
    """A trigger as the edge sends it (its decision once), from source_ip; keys replace lines."""
    lines = {"did": DID, "caller": MOBILE, "did_header": DID_HEADER, "employee_header": EMPLOYEE_HEADER,
             "header": NO_HEADER}
    return sipp.run_uac(SCENARIOS / "trigger_uac.xml", source_ip, engine_address(), {**lines, **keys})


def decide_like_the_engine(headers: dict[str, list[str]]):
    """The engine's answer as far as the edge's decision goes."""
    try:
        edge_decision(headers)
    except BadTrigger:
        return NOT_DECIDED
    return Triggers.ACCEPTED


# Triggers and probes


def test_trigger_is_refused_with_the_configured_code_and_header(engine, triggers, sipp):
    run = send_trigger(sipp)

    did, caller, headers = triggers.seen.get(timeout=EVENT_WAIT)
    assert (did, caller) == (DID, MOBILE)
    assert headers["call-id"][0]
    assert (headers["x-vpbx-did"], headers["x-vpbx-employee"]) == ([DID], [MOBILE])
    assert run.log_lines() == ["final 486 x-vpbx-callback=accepted"]


def test_trigger_from_a_stranger_gets_403_and_never_reaches_the_engine(engine, triggers, sipp, caplog):
    with caplog.at_level(logging.WARNING, logger="callbackd.sip"):
        stranger = send_trigger(sipp, STRANGER_IP)
        edge = send_trigger(sipp, EDGE_IP)

    assert stranger.log_lines() == ["final 403 x-vpbx-callback="]
    assert edge.log_lines() == ["final 486 x-vpbx-callback=accepted"]
    # Only the edge's trigger was handed to the engine.
    assert EDGE_IP in triggers.seen.get(timeout=EVENT_WAIT)[2]["via"][0]
    assert triggers.seen.empty()
    assert any(f"trigger from {STRANGER_IP}:" in r.getMessage()
               and r.getMessage().endswith("refused: not a SIP proxy of this PBX") for r in caplog.records)


def test_repeated_decision_headers_reach_the_engine_as_they_came(engine, triggers, sipp):
    send_trigger(sipp, header="X-Vpbx-Did: +421233000999")

    _did, _caller, headers = triggers.seen.get(timeout=EVENT_WAIT)
    assert headers["x-vpbx-did"] == [DID, "+421233000999"]


@pytest.mark.parametrize(
    "lines",
    [
        {"header": "X-Vpbx-Did: +421233000999"},
        {"header": "x-vpbx-employee: +421905999999"},
        {"did_header": NO_HEADER},
        {"employee_header": NO_HEADER},
    ],
    ids=["did-twice", "employee-twice", "no-did", "no-employee"],
)
def test_trigger_without_the_edges_decision_once_gets_403_without_the_accept_header(
    engine, triggers, sipp, lines
):
    triggers.answer = decide_like_the_engine
    smuggled = send_trigger(sipp, **lines)
    legitimate = send_trigger(sipp)

    assert smuggled.log_lines() == ["final 403 x-vpbx-callback="]
    assert legitimate.log_lines() == ["final 486 x-vpbx-callback=accepted"]


def test_trigger_caller_comes_from_p_asserted_identity(engine, triggers, sipp):
    header = f"P-Asserted-Identity: <sip:{MOBILE}@{EDGE_IP}>"
    send_trigger(sipp, caller="anonymous", header=header)

    did, caller, headers = triggers.seen.get(timeout=EVENT_WAIT)
    assert (did, caller) == (DID, MOBILE)
    assert MOBILE in headers["p-asserted-identity"][0]


@pytest.mark.parametrize(
    "answer",
    [
        (200, "OK", []),
        (183, "Session Progress", []),
        RuntimeError("boom"),
        (486, "Busy Here", [(wire.ACCEPT_HEADER, f"{wire.ACCEPTED}\r\nX-Injected: 1")]),
    ],
    ids=["200", "183", "exception", "header-injection"],
)
def test_trigger_is_refused_with_500_when_the_handler_would_answer_or_fails(engine, triggers, sipp, answer):
    triggers.answer = answer
    run = send_trigger(sipp)

    assert run.log_lines() == ["final 500 x-vpbx-callback="]


def test_options_probe_gets_200_from_the_edge_and_403_from_a_stranger(engine, sipp):
    stranger = sipp.run_uac(SCENARIOS / "options_uac.xml", STRANGER_IP, engine_address(), {})
    edge = sipp.run_uac(SCENARIOS / "options_uac.xml", EDGE_IP, engine_address(), {})

    assert stranger.log_lines() == ["final 403"]
    assert edge.log_lines() == ["final 200"]


# Legs the engine originates


def test_answered_leg_reports_sdp_presents_the_did_and_hangs_up_with_bye(engine, sipp):
    uas, port = far_end(sipp, "answer")
    leg, handler = engine.originate("answered", port)

    handler.wait_for("ringing")
    _, sdp = handler.wait_for("answered")
    assert "o=farend" in sdp and "m=audio" in sdp
    assert leg.state.value == "answered"

    engine.on_reactor(leg.hang_up)
    assert handler.wait_for("disconnected") == ("disconnected", "local")
    uas.expect_success()  # it got the BYE, and From/PAI carried the DID
    assert f"from_user={DID} pai_user={DID}" in uas.log_lines()[0]


def test_hang_up_from_inside_on_answered_acks_before_bye(engine, sipp):
    class HangUpOnAnswer(Recorder):
        def on_answered(self, leg: Leg, sdp: str) -> None:
            super().on_answered(leg, sdp)
            leg.hang_up()

    uas, port = far_end(sipp, "answer", ring_ms=0)
    _leg, handler = engine.originate("impatient", port, handler=HangUpOnAnswer())

    assert handler.wait_for("disconnected") == ("disconnected", "local")
    uas.expect_success()  # ACK, then BYE: a BYE first would be unexpected


def test_far_end_bye_disconnects_the_leg(engine, sipp):
    uas, port = far_end(sipp, "answer", hangup="local", hold_ms=300)
    leg, handler = engine.originate("remote-bye", port)

    handler.wait_for("answered")
    assert handler.wait_for("disconnected") == ("disconnected", "remote")
    uas.expect_success()
    assert leg.state.value == "ended"


def _lost(engine: Engine, leg: Leg) -> dict:
    """What an engine killed now leaves of an answered leg: its dialog, and nothing in memory."""
    dialog = engine.on_reactor(leg.dialog)
    assert dialog is not None
    engine.on_reactor(lambda: engine.endpoint._tm.unregConsumer(leg._ua, leg.call_id))
    engine.on_reactor(engine.endpoint._forget, leg)
    return dialog


def _resumed(engine: Engine, leg_id: str, dialog: dict) -> tuple[Leg, Recorder]:
    handler = Recorder()
    leg = engine.on_reactor(engine.endpoint.resume, leg_id, f"sip:{MOBILE}@{CARRIER_RURI_HOST}", DID,
                            dialog, handler)
    return leg, handler


def test_a_resumed_leg_hangs_up_with_a_bye_the_far_end_accepts(engine, sipp):
    uas, port = far_end(sipp, "answer")
    leg, handler = engine.originate("to-resume", port)
    handler.wait_for("answered")
    dialog = _lost(engine, leg)

    resumed, handler = _resumed(engine, "resumed", dialog)
    assert resumed.state.value == "answered" and resumed.call_id == dialog["call_id"]
    engine.on_reactor(resumed.hang_up)
    assert handler.wait_for("disconnected") == ("disconnected", "local")
    uas.expect_success()  # the BYE matched its dialog: Call-ID, tags, CSeq above the INVITE's


def test_a_resumed_leg_answers_the_far_ends_bye_and_reports_it(engine, sipp):
    uas, port = far_end(sipp, "answer", hangup="local", hold_ms=1500)
    leg, handler = engine.originate("to-resume-remote", port)
    handler.wait_for("answered")
    dialog = _lost(engine, leg)

    resumed, handler = _resumed(engine, "resumed-remote", dialog)
    assert handler.wait_for("disconnected") == ("disconnected", "remote")
    uas.expect_success()  # its BYE got a 200
    assert resumed.state.value == "ended"


def test_a_leg_taken_over_moves_its_dialog_here_with_the_same_media(engine, sipp):
    port = far_end_port()
    uas = sipp.start_uas(SCENARIOS / "leg_uas_moved.xml", FAR_END_IP, port, {})
    leg, handler = engine.originate("to-move", port)
    handler.wait_for("answered")
    dialog = _lost(engine, leg)
    # Another engine's dialog, as far as the far end knows: the Contact it saw was elsewhere.
    dialog["contact"] = f"<sip:{DID}@127.0.0.99:5070>"

    moved, handler = _resumed(engine, "moved", dialog)
    engine.on_reactor(moved.refresh_target)
    uas.wait_for_log("sdp_version=2", timeout=EVENT_WAIT)
    engine.on_reactor(moved.hang_up)
    assert handler.wait_for("disconnected") == ("disconnected", "local")
    uas.expect_success()
    first, second = uas.log_lines()[:2]
    contact = second.split("contact=")[1].split()[0]
    assert "sdp_version=1" in first and f"@{ENGINE[0]}" in contact and "127.0.0.99" not in contact
    assert first.split("media=")[1] == second.split("media=")[1]


def test_an_invite_left_ringing_by_an_earlier_process_is_cancelled(engine, sipp):
    uas, port = far_end(sipp, "ring")
    leg, handler = engine.originate("left-ringing", port)
    handler.wait_for("ringing")
    pending = engine.on_reactor(leg.pending)
    assert pending is not None and pending["invite"].startswith("INVITE ")
    assert engine.on_reactor(leg.dialog) is None

    engine.on_reactor(engine.endpoint.cancel_pending, pending)
    uas.expect_success()  # it got a CANCEL matching its INVITE and answered 487
    assert handler.wait_for("failed")[1] == 487


def test_unanswered_leg_is_cancelled_at_ring_timeout(engine, sipp):
    uas, port = far_end(sipp, "ring")
    _leg, handler = engine.originate("no-answer", port, ring_timeout=1.0)

    handler.wait_for("ringing")
    _, code, _reason = handler.wait_for("failed")
    assert code in (408, 487)
    uas.expect_success()  # it got the CANCEL and its 487 was ACKed
    assert [e[0] for e in handler.settle()] == ["ringing", "failed"]


def test_busy_far_end_fails_the_leg_with_486(engine, sipp):
    uas, port = far_end(sipp, "busy")
    _leg, handler = engine.originate("busy", port)

    assert handler.wait_for("failed")[:2] == ("failed", 486)
    uas.expect_success()


def test_hang_up_while_ringing_cancels(engine, sipp):
    uas, port = far_end(sipp, "ring")
    leg, handler = engine.originate("cancelled", port)

    handler.wait_for("ringing")
    engine.on_reactor(leg.hang_up)
    assert handler.wait_for("failed")[:2] == ("failed", 487)
    uas.expect_success()


def test_info_dtmf_reaches_the_handler_and_garbage_is_ignored(engine, sipp):
    uas, port = far_end(sipp, "answer", infos="yes", hangup="local", hold_ms=100)
    _leg, handler = engine.originate("dtmf", port)

    assert handler.wait_for("dtmf") == ("dtmf", "5")
    assert handler.wait_for("dtmf") == ("dtmf", "#")
    assert handler.wait_for("disconnected") == ("disconnected", "remote")
    uas.expect_success()  # every INFO, garbage included, got 200
    assert [e for e in handler.settle() if e[0] == "dtmf"] == [("dtmf", "5"), ("dtmf", "#")]


def test_reinvite_from_the_far_end_is_answered_with_our_sdp(engine, sipp):
    port = far_end_port()
    uas = sipp.start_uas(SCENARIOS / "leg_uas_reinvite.xml", FAR_END_IP, port, {})
    leg, handler = engine.originate("reinvite", port)

    handler.wait_for("answered")
    assert handler.wait_for("disconnected") == ("disconnected", "remote")
    uas.expect_success()  # our 200 to its re-INVITE carried our SDP
    assert "a=sendonly" in leg.remote_sdp


# The reactor's other services


def test_call_later_runs_on_the_reactor_and_cancel_stops_it(engine):
    fired: queue.Queue[tuple[str, int]] = queue.Queue()

    def arm() -> None:
        engine.endpoint.call_later(0.05, lambda: fired.put(("kept", threading.get_ident())))
        engine.endpoint.call_later(0.05, lambda: fired.put(("cancelled", 0))).cancel()

    reactor = engine.on_reactor(threading.get_ident)
    engine.on_reactor(arm)

    assert fired.get(timeout=EVENT_WAIT) == ("kept", reactor)
    with pytest.raises(queue.Empty):
        fired.get(timeout=0.3)


def test_reactor_methods_refuse_other_threads(engine):
    with pytest.raises(RuntimeError, match="reactor thread"):
        engine.endpoint.call_later(1, print)


def test_udp_socket_delivers_datagrams_on_the_reactor(engine):
    got: queue.Queue[tuple[bytes, tuple[str, int], int]] = queue.Queue()

    def echo(data: bytes, source: tuple[str, int]) -> None:
        got.put((data, source, threading.get_ident()))
        sock.send(b"echo " + data, source)

    sock = engine.on_reactor(engine.endpoint.open_udp, (ENGINE[0], 0), echo)
    reactor = engine.on_reactor(threading.get_ident)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((EDGE_IP, 0))
            peer.settimeout(EVENT_WAIT)
            peer.sendto(b'{"event": 5}', sock.address)
            data, source, thread = got.get(timeout=EVENT_WAIT)
            assert (data, source, thread) == (b'{"event": 5}', peer.getsockname(), reactor)
            assert peer.recvfrom(100) == (b'echo {"event": 5}', sock.address)
    finally:
        engine.on_reactor(sock.close)
