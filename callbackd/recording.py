"""A call's RTPengine pcap recording → a stereo WAV (employee left, client right).

What rtpengine 10.5 writes with ``recording-method = pcap`` and
``recording-dir = DIR`` (read in its ``daemon/recording.c`` and seen here):

* on the ``offer`` with ``record call: yes``: ``DIR/pcaps/<id>.pcap`` and
  ``DIR/tmp/rtpengine-meta-<id>.tmp``, where ``<id>`` is the call-id
  URI-escaped (everything but ``A-Za-z0-9-._~`` as ``%XX``), a dash and 16
  random hex digits. The offer's reply lists the pcap path in ``recordings``.
* the pcap (classic libpcap, link type raw IP, microsecond stamps) holds every
  RTP/RTCP packet rtpengine *received* from the parties, with a made-up IP/UDP
  header: source = the party's address, destination = rtpengine's own port
  for that party. Media that rtpengine plays itself (``play media``) is not in
  it.
* nothing is ever removed by rtpengine: the engine takes a recording out
  once it is converted (:func:`remove_recording`), and a daily job removes
  what is left past the recordings' keep time (the rtpengine role).
* when the call ends (``delete``; the daemon's ``delete-delay`` applies unless
  the command sets ``delete-delay: 0``) rtpengine closes the pcap, then moves
  the metadata to ``DIR/metadata/rtpengine-meta-<id>.txt``. That file
  existing is the sign that the pcap is complete. Its first line is the pcap's
  path; then, for each offer/answer, ``SDP mode: offer|answer`` and the SDP
  rtpengine *sent out* (with its own ports).

Which stream is whose: by rtpengine's receiving port (the packet's
destination port). The engine knows those ports from the SDPs rtpengine gave
it: the employee-facing port is in the ``offer`` reply (the SDP sent to the
employee), the B-facing port, where the client sends, is in the ``answer``
reply. The same ports are in the metadata (:func:`Recording.offer_ports`,
:func:`Recording.answer_ports`), so a recording can be converted with nothing
but the call-id. Ports are chosen by rtpengine and cannot be spoofed by a
party, unlike source addresses (NAT, rtpengine's address learning) or SSRCs
(which change on re-INVITE or transfer).

Samples are placed on one timeline: each stream (port, SSRC) is anchored at
the capture time of its first packet and then advanced by RTP timestamps, so
lost packets and silence suppression become silence; when timestamps and
capture times drift apart by more than :data:`MAX_SKEW_SAMPLES` (a timestamp
jump, a new talk spurt after a long pause) the stream is re-anchored.
Only G.711 is decoded (PT 0 µ-law, PT 8 A-law — the codecs the engine
offers); other payloads (telephone-event, comfort noise) leave silence.

Pure Python on purpose: the pcap format is a 24-byte header and 16 bytes per
packet, rtpengine writes raw IP headers it made itself, and G.711 is a
256-entry table — no dependency (dpkt, audioop, which Python 3.13 removes)
is worth it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
import tempfile
import wave
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import quote

SAMPLE_RATE = 8000
MAX_SKEW_SAMPLES = SAMPLE_RATE  # 1 s between RTP time and capture time → re-anchor

PCMU = "PCMU"
PCMA = "PCMA"
STATIC_CODECS: Mapping[int, str] = {0: PCMU, 8: PCMA}

# Link types (pcap file header) and how to find the IP packet inside.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = {12, 14, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6}  # 12/14: DLT_RAW as some OSes wrote it

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}

META_PREFIX = "rtpengine-meta-"


class PcapError(ValueError):
    """Not a pcap file this module can read."""


# -- rtpengine's files --------------------------------------------------------


def escape_call_id(call_id: str) -> str:
    """The call-id as rtpengine puts it into file names (``g_uri_escape_string``)."""
    return quote(call_id, safe="")


@dataclass(frozen=True)
class Recording:
    """One finished rtpengine pcap recording."""

    pcap: Path
    metadata: Path
    sdps: tuple[tuple[str, str], ...] = field(default=())  # (mode, SDP rtpengine sent)

    def offer_ports(self) -> list[int]:
        """rtpengine's ports in the SDPs it produced for offers (employee-facing in a call-back)."""
        return _ports(sdp for mode, sdp in self.sdps if mode == "offer")

    def answer_ports(self) -> list[int]:
        """rtpengine's ports in the SDPs it produced for answers (B-/client-facing in a call-back)."""
        return _ports(sdp for mode, sdp in self.sdps if mode == "answer")


_AUDIO_PORT = re.compile(r"^m=audio (\d+)", re.MULTILINE)
_SDP_BLOCK = re.compile(
    r"SDP mode: (\S+)\nSDP before RTP packet: \d+\n\n(.*?)(?=\n(?:Timestamp |Label: )|\Z)", re.S
)


def _ports(sdps: Iterator[str] | Collection[str]) -> list[int]:
    ports: list[int] = []
    for sdp in sdps:
        match = _AUDIO_PORT.search(sdp)
        if match and int(match.group(1)) not in ports:
            ports.append(int(match.group(1)))
    return ports


def parse_metadata(recording_dir: str | os.PathLike[str], metadata: Path) -> Recording | None:
    """A finished metadata file → :class:`Recording`, None if unreadable."""
    try:
        text = metadata.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    first = text.split("\n", 1)[0].strip()
    if not first:
        return None
    pcap = Path(first)
    if not pcap.is_file():
        # The spool seen under another path (container, mount): same file name.
        pcap = Path(recording_dir) / "pcaps" / Path(first).name
    sdps = tuple((m.group(1), m.group(2)) for m in _SDP_BLOCK.finditer(text))
    return Recording(pcap=pcap, metadata=metadata, sdps=sdps)


def find_recording(recording_dir: str | os.PathLike[str], call_id: str) -> Recording | None:
    """The call's finished recording (the newest, should the call-id recur), or None.

    None while rtpengine still records (no ``metadata/*.txt`` yet).
    """
    pattern = re.compile(re.escape(META_PREFIX + escape_call_id(call_id)) + r"-[0-9a-f]{16}\.txt")
    meta_dir = Path(recording_dir) / "metadata"
    try:
        candidates = [p for p in meta_dir.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return None
    for metadata in sorted(candidates, key=_mtime, reverse=True):
        recording = parse_metadata(recording_dir, metadata)
        if recording is not None and recording.pcap.is_file():
            return recording
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def remove_recording(recording: Recording) -> None:
    """Take a finished recording out of rtpengine's spool: its pcap and its metadata.

    A file already gone is no error; ``OSError`` when the spool is not the
    engine's to change.
    """
    for path in (recording.pcap, recording.metadata):
        path.unlink(missing_ok=True)


def find_pcap(recording_dir: str | os.PathLike[str], call_id: str) -> Path | None:
    """Path of the call's pcap once rtpengine has finished writing it, else None."""
    recording = find_recording(recording_dir, call_id)
    return recording.pcap if recording else None


# -- pcap → UDP datagrams -----------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_pcap(path: str | os.PathLike[str]) -> Iterator[tuple[float, int, bytes]]:
    """``(time, linktype, frame)`` for each record; a truncated tail ends it quietly."""
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24 or header[:4] not in _MAGIC:
            raise PcapError(f"{path}: not a libpcap file (pcapng is not supported)")
        order, unit = _MAGIC[header[:4]]
        linktype = struct.unpack(order + "I", header[20:24])[0] & 0xFFFF
        record = struct.Struct(order + "IIII")
        while True:
            head = f.read(16)
            if len(head) < 16:
                return
            sec, frac, incl_len, _orig_len = record.unpack(head)
            data = f.read(incl_len)
            if len(data) < incl_len:
                return
            yield sec + frac * unit, linktype, data


def _ip_packet(linktype: int, frame: bytes) -> bytes | None:
    if linktype in _RAW_ALIASES:
        return frame
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, frame[12:14]
        while ethertype in (b"\x81\x00", b"\x88\xa8"):  # VLAN tags
            ethertype = frame[offset + 2 : offset + 4]
            offset += 4
        return frame[offset:] if ethertype in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == LINKTYPE_LINUX_SLL:
        return frame[16:] if frame[14:16] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return frame[20:] if frame[0:2] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == LINKTYPE_NULL:
        return frame[4:]
    return None


def _udp(ip: bytes) -> tuple[tuple[str, int], tuple[str, int], bytes] | None:
    if len(ip) < 20:
        return None
    version = ip[0] >> 4
    if version == 4:
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or len(ip) < ihl + 8:
            return None
        if struct.unpack("!H", ip[6:8])[0] & 0x3FFF:  # a fragment
            return None
        src_ip, dst_ip = _ipv4(ip[12:16]), _ipv4(ip[16:20])
        udp = ip[ihl:]
    elif version == 6:
        if len(ip) < 48 or ip[6] != 17:
            return None
        src_ip, dst_ip = _ipv6(ip[8:24]), _ipv6(ip[24:40])
        udp = ip[40:]
    else:
        return None
    sport, dport, length = struct.unpack("!HHH", udp[:6])
    payload = udp[8:length] if 8 <= length <= len(udp) else udp[8:]
    return (src_ip, sport), (dst_ip, dport), payload


def _ipv4(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _ipv6(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


def udp_datagrams(path: str | os.PathLike[str]) -> Iterator[Datagram]:
    """The UDP datagrams of a pcap, in file order."""
    for time, linktype, frame in read_pcap(path):
        ip = _ip_packet(linktype, frame)
        if ip is None:
            continue
        parsed = _udp(ip)
        if parsed is not None:
            yield Datagram(time, *parsed)


# -- RTP and G.711 ------------------------------------------------------------


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """An RTP packet (RFC 3550), None for RTCP and anything else."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    payload_type = data[1] & 0x7F
    if 72 <= payload_type <= 76:  # RTCP SR/RR/SDES/BYE/APP (PT 200-204 with marker)
        return None
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack("!H", data[offset + 2 : offset + 4])[0]
    end = len(data)
    if data[0] & 0x20:  # padding
        end -= data[-1]
    if offset > end:
        return None
    sequence, timestamp, ssrc = struct.unpack("!HII", data[2:12])
    return RtpPacket(payload_type, sequence, timestamp, ssrc, data[offset:end])


def ulaw_to_linear(byte: int) -> int:
    """G.711 µ-law → 16-bit linear (ITU-T G.711, as Sun's g711.c)."""
    u = ~byte & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def alaw_to_linear(byte: int) -> int:
    """G.711 A-law → 16-bit linear (ITU-T G.711, as Sun's g711.c)."""
    a = byte ^ 0x55
    t = (a & 0x0F) << 4
    segment = (a & 0x70) >> 4
    if segment == 0:
        t += 8
    elif segment == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (segment - 1)
    return t if a & 0x80 else -t


@cache
def _tables(codec: str) -> tuple[bytes, bytes]:
    """Low and high bytes (little-endian) of each code's sample, for ``bytes.translate``."""
    decode = ulaw_to_linear if codec == PCMU else alaw_to_linear
    samples = [decode(code) & 0xFFFF for code in range(256)]
    return bytes(s & 0xFF for s in samples), bytes(s >> 8 for s in samples)


def decode_g711(codec: str, payload: bytes) -> bytes:
    """G.711 payload → 16-bit little-endian PCM."""
    low, high = _tables(codec)
    pcm = bytearray(2 * len(payload))
    pcm[0::2] = payload.translate(low)
    pcm[1::2] = payload.translate(high)
    return bytes(pcm)


# -- timeline -----------------------------------------------------------------


class _Channel:
    """One party's audio: 16-bit LE PCM placed by sample position."""

    def __init__(self) -> None:
        self.pcm = bytearray()
        self.packets = 0
        # per SSRC: (anchor sample, anchor RTP timestamp unwrapped, last unwrapped timestamp)
        self._streams: dict[int, tuple[int, int, int]] = {}

    def add(self, arrival: int, rtp: RtpPacket, pcm: bytes) -> None:
        state = self._streams.get(rtp.ssrc)
        if state is None:
            anchor, anchor_ts, last_ts = arrival, rtp.timestamp, rtp.timestamp
            ts = rtp.timestamp
        else:
            anchor, anchor_ts, last_ts = state
            delta = (rtp.timestamp - last_ts) & 0xFFFFFFFF
            ts = last_ts + (delta - (1 << 32) if delta >= 1 << 31 else delta)  # unwrap
        position = anchor + (ts - anchor_ts)
        if abs(position - arrival) > MAX_SKEW_SAMPLES:
            anchor, anchor_ts, position = arrival, ts, arrival
        self._streams[rtp.ssrc] = (anchor, anchor_ts, max(ts, last_ts))
        start = 2 * max(position, 0)
        end = start + len(pcm)
        if end > len(self.pcm):
            self.pcm.extend(bytes(end - len(self.pcm)))
        self.pcm[start:end] = pcm
        self.packets += 1


@dataclass(frozen=True)
class Conversion:
    """What :func:`pcap_to_wav` wrote."""

    wav: Path
    frames: int
    employee_packets: int
    client_packets: int
    skipped_packets: int

    @property
    def duration(self) -> float:
        return self.frames / SAMPLE_RATE


def _as_ports(ports: int | Collection[int]) -> frozenset[int]:
    return frozenset([ports]) if isinstance(ports, int) else frozenset(ports)


def pcap_to_wav(
    pcap: str | os.PathLike[str],
    wav: str | os.PathLike[str],
    employee_ports: int | Collection[int],
    client_ports: int | Collection[int],
    codecs: Mapping[int, str] = STATIC_CODECS,
) -> Conversion:
    """Write ``wav``: stereo, 8 kHz, 16-bit; left = employee, right = client.

    ``employee_ports``/``client_ports``: rtpengine's receiving port(s) for each
    party (see the module doc). ``codecs`` maps payload types to ``PCMU`` or
    ``PCMA``. The WAV appears atomically (written aside, then renamed); its
    directory is created.
    """
    employee, client = _as_ports(employee_ports), _as_ports(client_ports)
    if employee & client:
        raise ValueError(f"a port is both the employee's and the client's: {sorted(employee & client)}")
    channels = {"employee": _Channel(), "client": _Channel()}
    skipped = 0
    start: float | None = None
    for datagram in udp_datagrams(pcap):
        port = datagram.dst[1]
        name = "employee" if port in employee else "client" if port in client else None
        rtp = parse_rtp(datagram.payload) if name else None
        codec = codecs.get(rtp.payload_type) if rtp else None
        if name is None or rtp is None or codec is None:
            skipped += 1
            continue
        if start is None:
            start = datagram.time
        arrival = round((datagram.time - start) * SAMPLE_RATE)
        channels[name].add(arrival, rtp, decode_g711(codec, rtp.payload))
    left, right = channels["employee"].pcm, channels["client"].pcm
    frames = max(len(left), len(right)) // 2
    left.extend(bytes(2 * frames - len(left)))
    right.extend(bytes(2 * frames - len(right)))
    interleaved = bytearray(4 * frames)
    interleaved[0::4], interleaved[1::4] = left[0::2], left[1::2]
    interleaved[2::4], interleaved[3::4] = right[0::2], right[1::2]
    out = Path(wav)
    _write_wav(out, bytes(interleaved))
    return Conversion(out, frames, channels["employee"].packets, channels["client"].packets, skipped)


def _write_wav(path: Path, frames: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".wav", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(frames)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_recording(recording: Recording, wav: str | os.PathLike[str]) -> Conversion:
    """Convert a call-back's recording using the ports in its metadata.

    In a call-back the offer comes from the PBX side (``B``), so the offer's
    SDP (sent to the employee) has the employee-facing port and the answer's
    SDP the client-facing one. Raises ``ValueError`` if the metadata lacks them.
    """
    employee, client = recording.offer_ports(), recording.answer_ports()
    if not employee or not client:
        raise ValueError(f"{recording.metadata}: no offer/answer SDP with an audio port")
    return pcap_to_wav(recording.pcap, wav, employee, client)
