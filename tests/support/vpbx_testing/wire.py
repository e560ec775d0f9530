"""What went over the wire: capture loopback traffic with tshark, read its RTP.

    with Capture(bpf="udp and host 127.0.0.1 and host 127.0.0.5") as cap:   # or Capture(path, bpf=...)
        ...                                 # the call
    streams = rtp_streams(cap.path)
    [s for s in streams if s.ssrc == CLIENT_SSRC and s.dst == employee_media]

The capture is a classic pcap (``-F pcap``; tshark would write pcapng), link
type Ethernet on ``lo``, read with :mod:`callbackd.recording`'s reader. Capturing
needs root (or the capture capabilities on dumpcap).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from callbackd.recording import RtpPacket, parse_rtp, udp_datagrams

TSHARK = os.environ.get("VPBX_TSHARK", "tshark")
START_TIMEOUT = 10.0
# Packets sent just before the capture stops still reach it: wait this long first.
SETTLE = 0.3
STOP_TIMEOUT = 5.0

EVENT_DIGITS = "0123456789*#ABCD"

Address = tuple[str, int]


class CaptureError(RuntimeError):
    """tshark did not start or stop as it should."""


class Capture:
    """tshark writing what passes ``interface`` (matching ``bpf``) to ``path``, as a context manager.

    Without ``path`` the file goes to a new temporary directory (``.path``).

    On entry it returns once tshark really captures; on exit it waits
    :data:`SETTLE` seconds, stops tshark (SIGINT, like Ctrl-C, so the file is
    complete) and waits for it.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, interface: str = "lo",
                 bpf: str = "udp"):
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="vpbx-capture-")) / "capture.pcap"
        self.path = Path(path)
        self.interface = interface
        self.bpf = bpf
        self.log = self.path.with_suffix(self.path.suffix + ".tshark.log")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [TSHARK, "-n", "-q", "-i", self.interface, "-f", self.bpf, "-F", "pcap", "-w", str(self.path)]

    def start(self) -> Capture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        # tshark says "Capturing on 'Loopback: lo'" on stderr once dumpcap captures.
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while "Capturing on" not in self._log_text():
            if self._process.poll() is not None:
                raise CaptureError(f"tshark exited ({self._process.returncode}): {self._log_text().strip()}")
            if time.monotonic() > deadline:
                self._kill()
                raise CaptureError(f"tshark did not start capturing within {START_TIMEOUT:g} s: "
                                   f"{self._log_text().strip()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop capturing (idempotent); the file is complete afterwards."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        time.sleep(SETTLE)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise CaptureError(f"tshark did not stop within {STOP_TIMEOUT:g} s, killed") from None

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Stream:
    """RTP packets with one source, destination and SSRC, in capture order."""

    src: Address
    dst: Address
    ssrc: int
    payload_types: set[int] = field(default_factory=set)
    packets: int = 0
    first_time: float = 0.0
    last_time: float = 0.0

    def __str__(self) -> str:
        return (f"{self.src[0]}:{self.src[1]} -> {self.dst[0]}:{self.dst[1]} ssrc={self.ssrc:#010x} "
                f"pt={sorted(self.payload_types)} packets={self.packets}")


def rtp_packets(pcap_path: str | os.PathLike[str]) -> Iterator[tuple[float, Address, Address, RtpPacket]]:
    """``(time, src, dst, RtpPacket)`` for each UDP datagram that parses as RTP."""
    for datagram in udp_datagrams(pcap_path):
        rtp = parse_rtp(datagram.payload)
        if rtp is not None:
            yield datagram.time, datagram.src, datagram.dst, rtp


def rtp_streams(pcap_path: str | os.PathLike[str]) -> list[Stream]:
    """The RTP streams of a pcap, by (source, destination, SSRC), in order of first packet.

    Anything UDP with RTP version 2 counts; narrow the capture's BPF (or
    check ``payload_types``) when other UDP traffic could look like RTP.
    """
    streams: dict[tuple[Address, Address, int], Stream] = {}
    for time_, src, dst, rtp in rtp_packets(pcap_path):
        key = (src, dst, rtp.ssrc)
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = Stream(src, dst, rtp.ssrc, first_time=time_)
        stream.payload_types.add(rtp.payload_type)
        stream.packets += 1
        stream.last_time = time_
    return list(streams.values())


def telephone_events(
    pcap_path: str | os.PathLike[str],
    *,
    payload_type: int = 101,
    ssrc: int | None = None,
    dst: Address | None = None,
) -> str:
    """The RFC 4733 digits in a pcap, one per event (RTP timestamp), in order: e.g. ``"12#"``.

    Only packets of ``payload_type`` count, and of ``ssrc``/to ``dst`` if given.
    """
    return "".join(EVENT_DIGITS[e] if e < len(EVENT_DIGITS) else "?"
                   for e in _events(rtp_packets(pcap_path), payload_type, ssrc, dst))


def _events(packets: Iterable[tuple[float, Address, Address, RtpPacket]], payload_type: int,
            ssrc: int | None, dst: Address | None) -> list[int]:
    seen: set[tuple[int, int]] = set()
    events: list[int] = []
    for _time, _src, to, rtp in packets:
        if rtp.payload_type != payload_type or len(rtp.payload) < 4:
            continue
        if (ssrc is not None and rtp.ssrc != ssrc) or (dst is not None and to != dst):
            continue
        key = (rtp.ssrc, rtp.timestamp)
        if key not in seen:
            seen.add(key)
            events.append(rtp.payload[0])
    return events
