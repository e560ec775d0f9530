"""A call-back's media through a real rtpengine: prompt, DTMF, relay, recording.

The story follows shared/notes/rtpengine-callback-media.md and what the
engine does (callbackd.engine): one rtpengine call per call-back, side ``B``
(the PBX: placeholder, later the client) offers with recording on, the
employee (``EMP``) answers, hears a prompt, types a digit, the client answers
and its SDP replaces the placeholder (``rebind``), both hear each other;
after ``delete`` the pcap becomes a stereo WAV. Every offer/answer carries
the engine's flags (each side bound to its SDP's address).

The phones are plain UDP sockets on 127.0.0.201 (employee) and 127.0.0.202
(client) sending RTP generated here. The test starts its own rtpengine (own
ports, pcap recording into a temporary directory, DTMF log to a socket of the
test) and stops it at the end; the deployed one is left alone. Runs as root
with ``rtpengine`` and ``sox`` installed, skips otherwise.
"""

from __future__ import annotations

import math
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

import pytest

pytest.importorskip("bencodepy", reason="bencode.py (callbackd's ng codec) is not installed")

from callbackd.dtmf import DtmfEvent, parse_rtpengine_log
from callbackd.recording import convert_recording, find_pcap, find_recording
from callbackd.rtpengine import (
    BOUND_MEDIA_FLAGS,
    NgClient,
    NgError,
    NgTimeout,
    placeholder_sdp,
    sdp_audio_endpoint,
)

needs_rtpengine = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("rtpengine") or not shutil.which("sox"),
    reason="needs root, rtpengine and sox",
)

EMPLOYEE_IP = "127.0.0.201"
CLIENT_IP = "127.0.0.202"
MEDIA_IP = "127.0.0.1"
PORT_MIN, PORT_MAX = 41000, 41999
CALL_ID = "cb-media-1@callbackd"
PTIME = 0.02
SAMPLES = 160


# -- G.711 encoding for the phones (nearest code of the decoder's table) --------


def _encoder(decode):
    from bisect import bisect_left

    pairs = sorted((decode(code), code) for code in range(256))
    values = [v for v, _ in pairs]

    def encode(sample: int) -> int:
        i = bisect_left(values, sample)
        near = [j for j in (i - 1, i) if 0 <= j < len(values)]
        return pairs[min(near, key=lambda j: abs(values[j] - sample))][1]

    return encode


def _g711_tone(freq: float, packets: int, law: str) -> list[bytes]:
    from callbackd.recording import alaw_to_linear, ulaw_to_linear

    encode = _encoder(ulaw_to_linear if law == "PCMU" else alaw_to_linear)
    codes = [encode(int(8000 * math.sin(2 * math.pi * freq * n / 8000))) for n in range(8000)]
    return [bytes(codes[(i * SAMPLES + k) % 8000] for k in range(SAMPLES)) for i in range(packets)]


# -- the parties ----------------------------------------------------------------


@dataclass
class Phone:
    """A UDP socket that sends RTP at 20 ms and keeps what it receives."""

    ip: str
    payload_type: int
    ssrc: int
    sock: socket.socket = field(init=False)
    seq: int = 0
    ts: int = 0
    received: list[tuple[tuple[str, int], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.ip, 0))
        self.sock.setblocking(False)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def sdp(self) -> str:
        return placeholder_sdp(self.ip, self.port)

    def send(self, to: tuple[str, int], payload: bytes, pt: int | None = None, marker: bool = False) -> None:
        second = (0x80 if marker else 0) | (self.payload_type if pt is None else pt)
        header = struct.pack("!BBHII", 0x80, second, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc)
        self.sock.sendto(header + payload, to)
        self.seq += 1

    def rtp_from(self, port: int, payload_type: int | None = None) -> int:
        """How many RTP packets came from rtpengine's ``port`` (of ``payload_type``)."""
        return sum(
            1
            for src, data in self.received
            if src == (MEDIA_IP, port) and (payload_type is None or data[1] & 0x7F == payload_type)
        )

    def close(self) -> None:
        self.sock.close()


def rfc4733(event: int, duration: int, end: bool, volume: int = 10) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


class Media:
    """Runs the phones in real time: one 20 ms tick sends, the rest receives."""

    def __init__(self, dtmf_log: socket.socket, *phones: Phone) -> None:
        self.dtmf_log = dtmf_log
        self.phones = phones
        self.dtmf_datagrams: list[bytes] = []
        self.next_tick = time.monotonic()

    def tick(self) -> None:
        """Wait for the next 20 ms boundary, receiving meanwhile."""
        self.next_tick += PTIME
        by_sock = {p.sock: p for p in self.phones}
        while (left := self.next_tick - time.monotonic()) > 0:
            ready, _, _ = select.select([self.dtmf_log, *by_sock], [], [], left)
            for sock in ready:
                try:
                    data, src = sock.recvfrom(65535)
                except BlockingIOError:
                    continue
                if sock is self.dtmf_log:
                    self.dtmf_datagrams.append(data)
                else:
                    by_sock[sock].received.append((src, data))


# -- our own rtpengine ------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rtpengine:
    ng: NgClient
    recording_dir: str
    dtmf_log: socket.socket
    log_path: str

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-40:])


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rtpengine")
    recording_dir = workdir / "recordings"
    recording_dir.mkdir()
    dtmf_log = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dtmf_log.bind(("127.0.0.1", 0))
    dtmf_log.setblocking(False)
    ng_port = _free_udp_port()
    log_path = workdir / "rtpengine.log"
    command = [
        "rtpengine",
        "--config-file=none",  # not /etc/rtpengine/rtpengine.conf: that is the deployed instance's
        "--foreground",
        "--log-stderr",
        "--log-level=6",
        "--table=-1",
        f"--interface={MEDIA_IP}",
        f"--listen-ng=127.0.0.1:{ng_port}",
        f"--port-min={PORT_MIN}",
        f"--port-max={PORT_MAX}",
        "--recording-method=pcap",
        f"--recording-dir={recording_dir}",
        f"--dtmf-log-dest=127.0.0.1:{dtmf_log.getsockname()[1]}",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    ng = NgClient(("127.0.0.1", ng_port), timeout=0.2, retries=0)
    engine = Rtpengine(ng, str(recording_dir), dtmf_log, str(log_path))
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"rtpengine exited with {proc.returncode}:\n{engine.log_tail()}")
            try:
                if ng.ping():
                    break
            except NgError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"rtpengine does not answer ping:\n{engine.log_tail()}")
            time.sleep(0.1)
        ng.timeout, ng.retries = 1.0, 2
        yield engine
    finally:
        ng.close()
        dtmf_log.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt") / "prompt.wav"
    subprocess.run(
        ["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(path), "synth", "1", "sine", "600"],
        check=True,
    )
    return str(path)


# -- the call-back ------------------------------------------------------------------


@dataclass
class CallBack:
    employee_facing: int
    client_facing: int
    employee: Phone
    client: Phone
    prompt_packets: int
    dtmf: list[DtmfEvent]
    dtmf_datagrams: list[bytes]
    pcap_before_delete: object
    recording: object
    wav: str


@pytest.fixture(scope="module")
def callback(rtpengine, prompt_wav, tmp_path_factory):
    """One whole call-back; the tests below check what each step did."""
    ng = rtpengine.ng
    employee = Phone(EMPLOYEE_IP, payload_type=0, ssrc=0x1111)  # PCMU
    client = Phone(CLIENT_IP, payload_type=8, ssrc=0x2222)  # PCMA
    media = Media(rtpengine.dtmf_log, employee, client)
    try:
        # Calling the employee: side B offers a placeholder, recording on.
        flags = list(BOUND_MEDIA_FLAGS)
        sdp_to_employee = ng.offer(CALL_ID, "B", placeholder_sdp(), record=True, flags=flags)
        employee_facing = sdp_audio_endpoint(sdp_to_employee).port
        # The employee answers.
        sdp_for_b = ng.answer(CALL_ID, "B", "EMP", employee.sdp(), flags=flags)
        client_facing = sdp_audio_endpoint(sdp_for_b).port
        to_employee_side = (MEDIA_IP, employee_facing)
        to_client_side = (MEDIA_IP, client_facing)

        employee_voice = _g711_tone(440, 200, "PCMU")
        client_voice = _g711_tone(1000, 200, "PCMA")
        silence = bytes([0xFF]) * SAMPLES

        # The prompt plays while the employee's phone sends silence.
        ng.play_media(CALL_ID, "EMP", prompt_wav)
        for _ in range(60):
            employee.send(to_employee_side, silence)
            employee.ts += SAMPLES
            media.tick()
        prompt_packets = employee.rtp_from(employee_facing, payload_type=0)
        ng.stop_media(CALL_ID, "EMP")

        # The employee types 5 (RFC 4733: start, continuation, three end packets).
        event_ts = employee.ts
        for i, end in enumerate([False, False, False, True, True, True]):
            employee.ts = event_ts
            employee.send(to_employee_side, rfc4733(5, SAMPLES * min(i + 1, 4), end), pt=101, marker=i == 0)
            media.tick()
        employee.ts = event_ts + 4 * SAMPLES

        # The client answers, its SDP takes the placeholder's place, and both talk for 2 s.
        to_employee, _ = ng.rebind(CALL_ID, "B", "EMP", client.sdp(), employee.sdp())
        assert sdp_audio_endpoint(to_employee).port == employee_facing
        for n in range(100):
            employee.send(to_employee_side, employee_voice[n])
            employee.ts += SAMPLES
            client.send(to_client_side, client_voice[n])
            client.ts += SAMPLES
            media.tick()
        for _ in range(10):
            media.tick()

        pcap_before_delete = find_pcap(rtpengine.recording_dir, CALL_ID)
        ng.delete(CALL_ID)
        deadline = time.monotonic() + 5
        while (recording := find_recording(rtpengine.recording_dir, CALL_ID)) is None:
            assert time.monotonic() < deadline, "rtpengine did not finish the recording"
            time.sleep(0.05)
        wav = str(tmp_path_factory.mktemp("recordings") / "cb-media-1.wav")
        convert_recording(recording, wav)
        yield CallBack(
            employee_facing=employee_facing,
            client_facing=client_facing,
            employee=employee,
            client=client,
            prompt_packets=prompt_packets,
            dtmf=[e for e in map(parse_rtpengine_log, media.dtmf_datagrams) if e],
            dtmf_datagrams=media.dtmf_datagrams,
            pcap_before_delete=pcap_before_delete,
            recording=recording,
            wav=wav,
        )
    finally:
        employee.close()
        client.close()


@needs_rtpengine
def test_rtpengine_answers_ping(rtpengine):
    assert rtpengine.ng.ping()


@needs_rtpengine
def test_unknown_call_is_an_ng_error(rtpengine):
    with pytest.raises(NgError, match="Unknown call-ID"):
        rtpengine.ng.stop_media("no-such-call", "EMP")


@needs_rtpengine
def test_employee_hears_the_prompt_from_the_employee_facing_port(callback):
    # 60 ticks of 20 ms during a 1 s prompt: about 50 packets
    assert 40 <= callback.prompt_packets <= 60


@needs_rtpengine
def test_employee_digit_arrives_as_one_dtmf_log_event(callback):
    assert callback.dtmf == [DtmfEvent(CALL_ID, "EMP", "5", EMPLOYEE_IP)], callback.dtmf_datagrams


@needs_rtpengine
def test_client_audio_reaches_the_employee(callback):
    assert callback.employee.rtp_from(callback.employee_facing, payload_type=8) >= 90


@needs_rtpengine
def test_employee_audio_reaches_the_client(callback):
    assert callback.client.rtp_from(callback.client_facing, payload_type=0) >= 90


@needs_rtpengine
def test_pcap_is_complete_only_after_delete(callback):
    assert callback.pcap_before_delete is None
    assert callback.recording.pcap.name.startswith("cb-media-1%40callbackd-")
    assert callback.recording.offer_ports() == [callback.employee_facing]
    assert callback.recording.answer_ports() == [callback.client_facing]


def _sox_stat(wav: str, channel: int) -> dict[str, float]:
    out = subprocess.run(
        ["sox", wav, "-n", "remix", str(channel), "stat"], capture_output=True, text=True, check=True
    ).stderr
    return {
        m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^(.+?):\s+(-?[\d.]+)\s*$", out, re.M)
    }


@needs_rtpengine
def test_recording_is_a_stereo_8khz_wav(callback):
    info = subprocess.run(["sox", "--i", callback.wav], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Channels\s*:\s*2\b", info)
    assert re.search(r"Sample Rate\s*:\s*8000\b", info)
    assert re.search(r"Precision\s*:\s*16-bit", info)


@needs_rtpengine
def test_both_parties_are_audible_each_on_its_channel(callback):
    employee, client = _sox_stat(callback.wav, 1), _sox_stat(callback.wav, 2)
    assert employee["RMS     amplitude"] > 0.05
    assert client["RMS     amplitude"] > 0.05
    assert employee["Rough   frequency"] == pytest.approx(440, rel=0.1)
    assert client["Rough   frequency"] == pytest.approx(1000, rel=0.1)


# -- the ng client against a fake ng server (no rtpengine needed) ----------------------


class FakeNg:
    """A UDP ng server whose ``behave(cookie, request)`` returns the datagrams to send back."""

    def __init__(self, behave) -> None:
        import threading

        import bencodepy

        self.codec = bencodepy.Bencode(encoding="utf-8", encoding_fallback="value")
        self.behave = behave
        self.requests: list[tuple[str, dict]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def reply(self, cookie: str, body: dict) -> bytes:
        return cookie.encode() + b" " + self.codec.encode(body)

    def _serve(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            cookie, _, body = data.partition(b" ")
            request = dict(self.codec.decode(body))
            self.requests.append((cookie.decode(), request))
            for datagram in self.behave(cookie.decode(), request):
                self.sock.sendto(datagram, peer)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def fake_ng():
    servers = []

    def start(behave):
        servers.append(FakeNg(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_ng_stale_replies_are_ignored(fake_ng):
    server = fake_ng(
        lambda cookie, req: [
            server.reply("old_1", {"result": "error", "error-reason": "stale"}),
            b"not even bencode",
            server.reply(cookie, {"result": "pong"}),
        ]
    )
    with NgClient(server.address, timeout=1.0) as ng:
        assert ng.ping()


def test_ng_error_reply_raises_with_its_reason(fake_ng):
    server = fake_ng(lambda cookie, req: [server.reply(cookie, {"result": "error", "error-reason": "nope"})])
    with NgClient(server.address) as ng, pytest.raises(NgError, match="nope") as raised:
        ng.request("query", call_id="x")
    assert raised.value.reason == "nope" and raised.value.command == "query"


def test_ng_retry_reuses_the_cookie(fake_ng):
    server = fake_ng(
        lambda cookie, req: [server.reply(cookie, {"result": "ok"})] if len(server.requests) > 1 else []
    )
    with NgClient(server.address, timeout=0.2, retries=2) as ng:
        assert ng.request("delete", call_id="x") == {"result": "ok"}
    assert len(server.requests) == 2 and server.requests[0] == server.requests[1]


def test_ng_no_reply_is_a_timeout(fake_ng):
    server = fake_ng(lambda cookie, req: [])
    with NgClient(server.address, timeout=0.1, retries=2) as ng, pytest.raises(NgTimeout):
        ng.ping()
    assert len(server.requests) == 3


def test_ng_nobody_listening_is_a_timeout():
    with NgClient(("127.0.0.1", _free_udp_port()), timeout=0.1, retries=1) as ng, pytest.raises(NgTimeout):
        ng.ping()


def test_ng_keys_and_values_are_translated(fake_ng):
    server = fake_ng(lambda cookie, req: [server.reply(cookie, {"result": "ok", "sdp": "v=0\r\n"})])
    with NgClient(server.address) as ng:
        assert ng.offer("c1", "B", "v=0\r\n", record=True, flags=["inject-DTMF"]) == "v=0\r\n"
        ng.play_media("c1", "EMP", "/p.wav")
    offer, play = (request for _, request in server.requests)
    assert offer == {
        "command": "offer",
        "call-id": "c1",
        "from-tag": "B",
        "sdp": "v=0\r\n",
        "record-call": "yes",
        "flags": ["inject-DTMF"],
    }
    assert play == {"command": "play media", "call-id": "c1", "from-tag": "EMP", "file": "/p.wav"}


def test_placeholder_sdp_and_its_endpoint():
    sdp = placeholder_sdp()
    assert "c=IN IP4 127.0.0.1\r\n" in sdp and "m=audio 9 RTP/AVP 0 8 101\r\n" in sdp
    assert "a=rtpmap:101 telephone-event/8000\r\n" in sdp
    endpoint = sdp_audio_endpoint(sdp)
    assert (endpoint.address, endpoint.port) == ("127.0.0.1", 9)


def test_sdp_endpoint_prefers_the_audio_stream_connection():
    sdp = (
        "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=video 5000 RTP/AVP 96\r\nc=IN IP4 192.0.2.9\r\n"
        "m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.2\r\n"
    )
    endpoint = sdp_audio_endpoint(sdp)
    assert (endpoint.address, endpoint.port) == ("192.0.2.2", 4000)
    assert (
        sdp_audio_endpoint("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n").address == "192.0.2.1"
    )
    assert sdp_audio_endpoint("v=0\r\n") is None
