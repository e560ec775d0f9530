"""Write RTP pcap files for SIPp's ``<exec play_pcap_audio="..."/>``.

What SIPp 3.6.1 takes from such a file (``prepare_pcap.c``, ``send_packets.c``):

* a classic libpcap file whose link type is Ethernet (1) or Linux cooked (113);
  raw IP (101) is refused ("Unsupported link-type"). Records must be whole
  (caplen == len) or SIPp stops ("truncated packets").
* per record the UDP header and everything after it, IPv4 or IPv6. The IP
  addresses are ignored; the packets go from SIPp's media address and port to
  the c=/m= address and port of the peer's SDP. A packet's destination port
  minus the lowest destination port in the file is added to both ports, so
  every packet here goes to one port (offset 0: the m= port itself). SIPp
  recomputes the UDP checksum.
* the RTP header and payload are sent unchanged: sequence numbers,
  timestamps, SSRC, marker and payload type are the file's.
* the gaps between the records' capture times are the gaps between sends.
* a file without records is accepted and plays nothing (:func:`empty_pcap`).

The pcap file is read when SIPp loads the scenario (``play_pcap_audio="[key]"``
is resolved then), so it must exist before SIPp starts.

Telephone events follow RFC 4733: every packet of one digit carries the
timestamp of the digit's start, the first has the marker bit, the duration
grows by one packet time (160 samples) per packet, and the last state is sent
three times with the E bit. Audio is G.711 A-law (PCMA), 20 ms (160 bytes) per
packet; the RTP timestamp advances with the time the events took, so the
stream stays on one clock.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path

SAMPLE_RATE = 8000
PACKET_SAMPLES = 160  # 20 ms
PACKET_SECONDS = PACKET_SAMPLES / SAMPLE_RATE

LINKTYPE_ETHERNET = 1
# Only the differences between capture times matter to SIPp.
START_TIME = 1_700_000_000.0
# Addresses of the IP header (documentation ranges); SIPp replaces them.
SRC_IP = bytes([192, 0, 2, 1])
DST_IP = bytes([192, 0, 2, 2])
RTP_PORT = 6000

DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
EVENT_VOLUME = 10  # -10 dBm0
EVENT_PACKETS = 5  # 5 x 20 ms = 100 ms per digit
END_PACKETS = 3  # the final state, with the E bit, sent this many times
GAP_PACKETS = 5  # 100 ms of audio between digits
ALAW_SILENCE = 0xD5
TONE_AMPLITUDE = 8000  # of 32767: about -12 dBFS


# -- G.711 A-law ---------------------------------------------------------------

_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def linear_to_alaw(sample: int) -> int:
    """16-bit signed linear sample → G.711 A-law byte (ITU-T G.711, as Sun's g711.c)."""
    value = max(-32768, min(32767, int(sample))) >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    segment = next((n for n, end in enumerate(_SEGMENT_ENDS) if value <= end), None)
    if segment is None:
        return 0x7F ^ mask
    code = segment << 4
    code |= (value >> 1 if segment < 2 else value >> segment) & 0x0F
    return code ^ mask


def alaw_tone(hz: float, samples: int, *, amplitude: int = TONE_AMPLITUDE, phase: int = 0) -> bytes:
    """``samples`` A-law bytes of a sine tone; ``phase`` is the first sample's index."""
    step = 2 * math.pi * hz / SAMPLE_RATE
    return bytes(linear_to_alaw(round(amplitude * math.sin(step * (phase + n)))) for n in range(samples))


# -- pcap ----------------------------------------------------------------------


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(rtp: bytes, ident: int) -> bytes:
    """Ethernet + IPv4 + UDP around one RTP packet."""
    udp = struct.pack("!HHHH", RTP_PORT, RTP_PORT, 8 + len(rtp), 0) + rtp  # checksum 0: SIPp sets it
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000,
                               64, 17, 0, SRC_IP, DST_IP))
    ip[10:12] = struct.pack("!H", _ip_checksum(bytes(ip)))
    ethernet = bytes(6) + bytes(6) + b"\x08\x00"
    return ethernet + bytes(ip) + udp


def write_pcap(path: str | os.PathLike[str], packets: Iterable[tuple[float, bytes]]) -> int:
    """Write ``(seconds from the start, RTP packet)`` pairs as an Ethernet pcap; the count."""
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for offset, rtp in packets:
            frame = _frame(rtp, count)
            stamp = round((START_TIME + offset) * 1_000_000)
            f.write(struct.pack("<IIII", stamp // 1_000_000, stamp % 1_000_000, len(frame), len(frame)))
            f.write(frame)
            count += 1
    return count


def empty_pcap(path: str | os.PathLike[str]) -> Path:
    """A pcap without packets (SIPp loads it and plays nothing); returns ``path``."""
    write_pcap(path, ())
    return Path(path)


# -- RTP -----------------------------------------------------------------------


def rtp_packet(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes,
               *, marker: bool = False) -> bytes:
    """An RTP packet (RFC 3550): version 2, no padding, extension or CSRC."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | (payload_type & 0x7F),
                       sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF) + payload


def event_payload(event: int, duration: int, *, end: bool = False, volume: int = EVENT_VOLUME) -> bytes:
    """An RFC 4733 telephone-event payload: event, E bit, volume, duration (samples)."""
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), min(duration, 0xFFFF))


class _Stream:
    """Builds one RTP stream on one clock: every packet is 20 ms after the previous one."""

    def __init__(self, ssrc: int, payload_type_audio: int):
        self.ssrc = ssrc
        self.audio_pt = payload_type_audio
        self.sequence = 1
        self.samples = 0  # the RTP clock, from the start
        self.slot = 0  # packets sent so far = capture time / 20 ms
        self.packets: list[tuple[float, bytes]] = []

    def _emit(self, payload_type: int, timestamp: int, payload: bytes, marker: bool) -> None:
        packet = rtp_packet(payload_type, self.sequence, timestamp, self.ssrc, payload, marker=marker)
        self.packets.append((self.slot * PACKET_SECONDS, packet))
        self.sequence += 1
        self.slot += 1

    def audio(self, payloads: Iterable[bytes]) -> None:
        for payload in payloads:
            self._emit(self.audio_pt, self.samples, payload, marker=not self.packets)
            self.samples += PACKET_SAMPLES

    def silence(self, count: int) -> None:
        self.audio(bytes([ALAW_SILENCE]) * PACKET_SAMPLES for _ in range(count))

    def tone(self, hz: float, seconds: float) -> None:
        count = round(seconds / PACKET_SECONDS)
        samples = alaw_tone(hz, count * PACKET_SAMPLES)
        self.audio(samples[i:i + PACKET_SAMPLES] for i in range(0, len(samples), PACKET_SAMPLES))

    def event(self, event: int, payload_type: int) -> None:
        """One digit: EVENT_PACKETS updates, then END_PACKETS end packets, 20 ms apart."""
        start = self.samples
        for n in range(1, EVENT_PACKETS + 1):
            last = n == EVENT_PACKETS
            for _ in range(END_PACKETS if last else 1):
                self._emit(payload_type, start, event_payload(event, n * PACKET_SAMPLES, end=last),
                           marker=n == 1)
        # The clock moves on by the time the packets took, retransmissions included.
        self.samples = start + (EVENT_PACKETS + END_PACKETS - 1) * PACKET_SAMPLES


def _events(digits: str) -> list[int]:
    try:
        return [DTMF_EVENTS[d] for d in digits.upper()]
    except KeyError as e:
        raise ValueError(f"not a DTMF digit: {e.args[0]!r} (0-9 * # A-D)") from None


def dtmf_then_tone_pcap(
    path: str | os.PathLike[str],
    digits: str,
    ssrc: int,
    tone_hz: float,
    tone_seconds: float,
    payload_type_event: int = 101,
    payload_type_audio: int = 8,
    *,
    lead_seconds: float = 0.5,
) -> Path:
    """Write a pcap: ``lead_seconds`` of A-law silence, then each digit as an RFC 4733
    event (100 ms + 40 ms of end packets) followed by 100 ms of silence, then
    ``tone_seconds`` of a ``tone_hz`` sine (A-law). One SSRC and clock; returns ``path``.

    The lead-in lets a relay learn the stream before the first digit.
    """
    events = _events(digits)
    stream = _Stream(ssrc, payload_type_audio)
    stream.silence(max(1, round(lead_seconds / PACKET_SECONDS)))
    for event in events:
        stream.event(event, payload_type_event)
        stream.silence(GAP_PACKETS)
    stream.tone(tone_hz, tone_seconds)
    write_pcap(path, stream.packets)
    return Path(path)


def tone_pcap(path: str | os.PathLike[str], ssrc: int, tone_hz: float, seconds: float,
              payload_type_audio: int = 8) -> Path:
    """Write a pcap of ``seconds`` of a ``tone_hz`` sine, A-law, 20 ms packets; returns ``path``."""
    stream = _Stream(ssrc, payload_type_audio)
    stream.tone(tone_hz, seconds)
    write_pcap(path, stream.packets)
    return Path(path)
