"""Only the call-back's own parties are heard, through a real rtpengine.

The engine binds each side of the RTPengine call to the address its SDP
names (callbackd.rtpengine.BOUND_MEDIA_FLAGS) and, once the client answered,
replaces the placeholder with the client's SDP (``NgClient.rebind``). Here
strangers on their own loopback addresses try what the security note of
shared/notes/rtpengine-callback-media.md describes, next to the legitimate
parties doing the same thing right beside them:

* a sprayer sends RFC 4733 events to the employee-facing port: no digit of
  it reaches the engine's count, while the employee's own digits do;
* a stranger sends RTP to the client-facing port before the client answers:
  it hears nothing of the employee, while employee and client hear each other.

Absence is proven by order, not by waiting: the stranger's packets go out
before a legitimate packet that is waited for, on the same rtpengine port.
Uses the rtpengine of test_rtpengine_media (own ports, started and stopped
by the fixture).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("bencodepy", reason="bencode.py (callbackd's ng codec) is not installed")

from test_rtpengine_media import (
    CLIENT_IP,
    EMPLOYEE_IP,
    MEDIA_IP,
    SAMPLES,
    Media,
    Phone,
    needs_rtpengine,
    rfc4733,
    rtpengine,  # noqa: F401 - the fixture
)

from callbackd.dtmf import DtmfEvent, parse_rtpengine_log, sent_by
from callbackd.rtpengine import BOUND_MEDIA_FLAGS, placeholder_sdp, sdp_audio_endpoint

SPRAYER_IP = "127.0.0.203"
STRANGER_IP = "127.0.0.204"
WAIT_S = 10.0
SILENCE = bytes([0xFF]) * SAMPLES
STRANGER_SSRC = 0x5555
EMPLOYEE_SSRC = 0x1111


@dataclass
class Call:
    """One call-back's rtpengine call, set up as the engine does, with its parties."""

    call_id: str
    employee: Phone
    client: Phone
    media: Media
    employee_facing: int
    client_facing: int
    dtmf_seen: list[bytes]

    @property
    def to_employee_side(self) -> tuple[str, int]:
        return MEDIA_IP, self.employee_facing

    @property
    def to_client_side(self) -> tuple[str, int]:
        return MEDIA_IP, self.client_facing

    def until(self, what: str, done: Callable[[], bool], send: Callable[[], None] = lambda: None) -> None:
        """Keep the 20 ms clock (and send()) going until done(); fail after a generous limit."""
        deadline = time.monotonic() + WAIT_S
        while not done():
            assert time.monotonic() < deadline, f"{what}: not within {WAIT_S:g} s"
            send()
            self.media.tick()

    def events(self) -> list[DtmfEvent]:
        self.dtmf_seen.extend(self.media.dtmf_datagrams)
        self.media.dtmf_datagrams.clear()
        events = map(parse_rtpengine_log, self.dtmf_seen)
        return [e for e in events if e is not None and e.call_id == self.call_id]


def type_digit(phone: Phone, to: tuple[str, int], event: int, media: Media) -> None:
    """One RFC 4733 digit as a phone sends it: start, continuations, three end packets."""
    start = phone.ts
    for i, end in enumerate([False, False, False, True, True, True]):
        phone.ts = start
        phone.send(to, rfc4733(event, SAMPLES * min(i + 1, 4), end), pt=101, marker=i == 0)
        media.tick()
    phone.ts = start + 4 * SAMPLES


def talk(phone: Phone, to: tuple[str, int]) -> None:
    phone.send(to, SILENCE)
    phone.ts += SAMPLES


@pytest.fixture
def call(rtpengine, request) -> Iterator[Call]:  # noqa: F811 - the imported fixture
    call_id = f"trust-{request.node.name}"
    employee = Phone(EMPLOYEE_IP, payload_type=0, ssrc=EMPLOYEE_SSRC)
    client = Phone(CLIENT_IP, payload_type=8, ssrc=0x2222)
    flags = list(BOUND_MEDIA_FLAGS)
    ng = rtpengine.ng
    try:
        to_employee = ng.offer(call_id, "B", placeholder_sdp(), flags=flags)
        to_b = ng.answer(call_id, "B", "EMP", employee.sdp(), flags=flags)
        media = Media(rtpengine.dtmf_log, employee, client)
        yield Call(call_id, employee, client, media, sdp_audio_endpoint(to_employee).port,
                   sdp_audio_endpoint(to_b).port, [])
    finally:
        ng.delete(call_id)
        employee.close()
        client.close()


def counted_digits(call: Call) -> list[str]:
    """The digits the engine would take: sent by EMP from the employee's SDP address."""
    return [e.digit for e in call.events() if sent_by(e, "EMP", EMPLOYEE_IP)]


@needs_rtpengine
def test_digits_sprayed_at_the_employees_port_never_count_while_the_employees_own_do(call):
    sprayer = Phone(SPRAYER_IP, payload_type=0, ssrc=STRANGER_SSRC)
    # The same address as the employee, another port: what rtpengine itself must drop.
    neighbour = Phone(EMPLOYEE_IP, payload_type=0, ssrc=STRANGER_SSRC + 1)
    try:
        # The sprayer is first at the employee-facing port, before the employee sent anything.
        for _ in range(5):
            talk(sprayer, call.to_employee_side)
            call.media.tick()
        type_digit(sprayer, call.to_employee_side, 7, call.media)
        # The employee's phone is up: audio first, then the digits typed.
        for _ in range(5):
            talk(call.employee, call.to_employee_side)
            call.media.tick()
        type_digit(call.employee, call.to_employee_side, 5, call.media)
        type_digit(sprayer, call.to_employee_side, 8, call.media)
        type_digit(neighbour, call.to_employee_side, 9, call.media)
        type_digit(call.employee, call.to_employee_side, 11, call.media)  # '#', the last one sent

        call.until("the employee's '#'", lambda: "#" in counted_digits(call))
        assert counted_digits(call) == ["5", "#"]
        # rtpengine itself dropped them (strict source): not even logged.
        events = call.events()
        assert {e.source_ip for e in events} == {EMPLOYEE_IP}, [json.loads(d) for d in call.dtmf_seen]
        assert [e.digit for e in events] == ["5", "#"]
    finally:
        sprayer.close()
        neighbour.close()


@needs_rtpengine
def test_the_engine_would_not_count_a_digit_logged_from_another_address(call):
    # The engine's own check, should rtpengine ever log a stranger's digit with tag EMP.
    forged = DtmfEvent(call.call_id, "EMP", "7", SPRAYER_IP)
    for _ in range(5):
        talk(call.employee, call.to_employee_side)
        call.media.tick()
    type_digit(call.employee, call.to_employee_side, 5, call.media)
    call.until("the employee's 5", lambda: bool(call.events()))
    [real] = call.events()
    assert sent_by(real, "EMP", EMPLOYEE_IP) and not sent_by(forged, "EMP", EMPLOYEE_IP)


@needs_rtpengine
def test_a_stranger_first_at_the_client_port_hears_nothing_while_employee_and_client_hear_each_other(
    call, rtpengine  # noqa: F811 - the imported fixture
):
    stranger = Phone(STRANGER_IP, payload_type=0, ssrc=STRANGER_SSRC)
    call.media.phones = (*call.media.phones, stranger)
    try:
        # While the client's phone rings the employee talks and the stranger sends to the client-facing port.
        for _ in range(25):
            talk(call.employee, call.to_employee_side)
            talk(stranger, call.to_client_side)
            call.media.tick()
        # The client answers: the engine hands its SDP to rtpengine, the employee's port stays.
        to_employee, _ = rtpengine.ng.rebind(call.call_id, "B", "EMP", call.client.sdp(), call.employee.sdp())
        assert sdp_audio_endpoint(to_employee).port == call.employee_facing

        def all_talk() -> None:
            talk(call.employee, call.to_employee_side)
            talk(stranger, call.to_client_side)
            talk(call.client, call.to_client_side)

        call.until("audio both ways between employee and client",
                   lambda: call.client.rtp_from(call.client_facing, payload_type=0) >= 50
                   and call.employee.rtp_from(call.employee_facing, payload_type=8) >= 50, all_talk)

        assert stranger.received == [], f"the stranger got {len(stranger.received)} packets"
        from_stranger = [d for _, d in call.employee.received if d[8:12] == STRANGER_SSRC.to_bytes(4, "big")]
        assert from_stranger == [], "the stranger's RTP reached the employee"
    finally:
        stranger.close()
