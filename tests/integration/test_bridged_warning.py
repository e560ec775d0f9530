"""The one-minute warning of a bridged call through a real rtpengine: heard, then the client again.

callbackd plays "this call will end in one minute" to the employee while the
client is bridged (callbackd.machine, max_call_minutes). rtpengine's play
media does not replace what the employee hears, it sends the file beside the
client's relayed stream; so the engine holds the client's audio back (block
media) while the warning plays and lets it through again after. This shows
the employee hears the warning alone, then the client as before, and the
client hears the employee throughout. Same rtpengine, phones and flags as
test_rtpengine_media.py (its fixtures); runs as root with rtpengine and sox.
"""

from __future__ import annotations

import pytest

pytest.importorskip("bencodepy", reason="bencode.py (callbackd's ng codec) is not installed")

import test_rtpengine_media as media_test
from test_rtpengine_media import (
    CLIENT_IP,
    EMPLOYEE_IP,
    MEDIA_IP,
    SAMPLES,
    Media,
    Phone,
    _g711_tone,
    needs_rtpengine,
)

from callbackd.rtpengine import BOUND_MEDIA_FLAGS, placeholder_sdp, sdp_audio_endpoint

# Its fixtures, by the names the tests here ask for: an rtpengine of this module's own.
rtpengine = media_test.rtpengine
prompt_wav = media_test.prompt_wav

CALL_ID = "cb-warning-1@callbackd"
CLIENT_PT = 8  # PCMA, which rtpengine forwards to the employee as it is


def talk(media: Media, employee: Phone, client: Phone, to_employee_side, to_client_side, voices,
         ticks: int) -> tuple[int, int]:
    """Both phones send for `ticks` x 20 ms; what each received meanwhile: (employee, client) packets."""
    employee_voice, client_voice = voices
    before = len(employee.received), len(client.received)
    for n in range(ticks):
        employee.send(to_employee_side, employee_voice[n % len(employee_voice)])
        employee.ts += SAMPLES
        client.send(to_client_side, client_voice[n % len(client_voice)])
        client.ts += SAMPLES
        media.tick()
    return len(employee.received) - before[0], len(client.received) - before[1]


@pytest.fixture(scope="module")
def warned_call(rtpengine, prompt_wav):
    """A bridged call-back that gets the 1 s warning in its middle; the packets of each stretch."""
    ng = rtpengine.ng
    employee = Phone(EMPLOYEE_IP, payload_type=0, ssrc=0x3333)
    client = Phone(CLIENT_IP, payload_type=CLIENT_PT, ssrc=0x4444)
    media = Media(rtpengine.dtmf_log, employee, client)
    flags = list(BOUND_MEDIA_FLAGS)
    try:
        employee_facing = sdp_audio_endpoint(
            ng.offer(CALL_ID, "B", placeholder_sdp(), record=False, flags=flags)).port
        client_facing = sdp_audio_endpoint(ng.answer(CALL_ID, "B", "EMP", employee.sdp(), flags=flags)).port
        ng.rebind(CALL_ID, "B", "EMP", client.sdp(), employee.sdp())
        sides = (MEDIA_IP, employee_facing), (MEDIA_IP, client_facing)
        voices = _g711_tone(440, 100, "PCMU"), _g711_tone(1000, 100, "PCMA")

        def client_packets_heard(since: int) -> int:
            return sum(1 for src, data in employee.received[since:]
                       if src == sides[0] and data[1] & 0x7F == CLIENT_PT)

        mark = len(employee.received)
        talk(media, employee, client, *sides, voices, 50)
        before = client_packets_heard(mark)
        # As callbackd does it (machine.MuteClient, then PlayPrompt).
        ng.block_media(CALL_ID, "B")
        ng.play_media(CALL_ID, "EMP", prompt_wav)  # 1 s
        mark = len(employee.received)
        _, to_client_during = talk(media, employee, client, *sides, voices, 75)
        during = client_packets_heard(mark)
        prompt = sum(1 for src, data in employee.received[mark:] if src == sides[0] and data[1] & 0x7F == 0)
        ng.unblock_media(CALL_ID, "B")
        mark = len(employee.received)
        _, to_client_after = talk(media, employee, client, *sides, voices, 100)
        after = client_packets_heard(mark)
        ng.delete(CALL_ID)
        yield {"before": before, "during": during, "prompt": prompt, "after": after,
               "to_client": to_client_during + to_client_after}
    finally:
        employee.close()
        client.close()


@needs_rtpengine
def test_the_employee_hears_the_client_before_the_warning(warned_call):
    assert warned_call["before"] >= 40


@needs_rtpengine
def test_the_employee_hears_the_warning_alone_while_the_client_is_held_back(warned_call):
    # play media alone would send the file beside the client's stream, two streams on one port.
    assert warned_call["prompt"] >= 40  # the 1 s file, 20 ms packets
    assert warned_call["during"] <= 2


@needs_rtpengine
def test_the_employee_hears_the_client_again_once_the_warning_ended(warned_call):
    assert warned_call["after"] >= 90


@needs_rtpengine
def test_the_client_hears_the_employee_throughout(warned_call):
    assert warned_call["to_client"] >= 160
