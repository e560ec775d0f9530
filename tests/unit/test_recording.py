"""rtpengine pcap recordings → stereo WAV (employee left, client right)."""

import bisect
import math
import struct
import warnings
import wave
from array import array

import pytest

from callbackd.recording import (
    PcapError,
    alaw_to_linear,
    convert_recording,
    decode_g711,
    escape_call_id,
    find_pcap,
    find_recording,
    parse_rtp,
    pcap_to_wav,
    remove_recording,
    udp_datagrams,
    ulaw_to_linear,
)

EMPLOYEE_PORT = 41000  # rtpengine's employee-facing port
CLIENT_PORT = 41012  # rtpengine's B-facing port, where the client sends
EMPLOYEE = ("127.0.0.201", 30000)
CLIENT = ("127.0.0.202", 30002)
RTPENGINE = "127.0.0.1"
PTIME = 160  # samples per 20 ms packet


# -- building a pcap as rtpengine writes it (raw IP, µs stamps) ----------------


def _encoder(decode):
    pairs = sorted((decode(code), code) for code in range(256))
    values = [v for v, _ in pairs]

    def encode(sample):
        i = bisect.bisect_left(values, sample)
        near = [j for j in (i - 1, i) if 0 <= j < len(values)]
        return pairs[min(near, key=lambda j: abs(values[j] - sample))][1]

    return encode


ULAW = _encoder(ulaw_to_linear)
ALAW = _encoder(alaw_to_linear)


def tone(freq, start, count, encode, amplitude=8000):
    return bytes(
        encode(int(amplitude * math.sin(2 * math.pi * freq * (start + i) / 8000))) for i in range(count)
    )


def rtp(pt, seq, ts, ssrc, payload, marker=False):
    second = (0x80 if marker else 0) | pt
    return struct.pack("!BBHII", 0x80, second, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def ipv4_udp(src, dst, payload):
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
        bytes(int(x) for x in src[0].split(".")), bytes(int(x) for x in dst[0].split(".")),
    )  # fmt: skip
    return ip + udp


def from_employee(payload, port=EMPLOYEE_PORT):
    return ipv4_udp(EMPLOYEE, (RTPENGINE, port), payload)


def from_client(payload, port=CLIENT_PORT):
    return ipv4_udp(CLIENT, (RTPENGINE, port), payload)


def write_pcap(path, packets, linktype=101):
    """packets: (time, frame) — frame is an IP packet for link type 101."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for time, frame in packets:
            sec = int(time)
            f.write(struct.pack("<IIII", sec, round((time - sec) * 1e6), len(frame), len(frame)))
            f.write(frame)


def call_packets(t0=1_700_000_000.0):
    """2 s of call: the employee talks (440 Hz, PCMU) in second 0, the client (1 kHz, PCMA) in second 1.

    Both send all the time (silence when not talking), with RTCP, a DTMF event
    and some noise to be ignored.
    """
    packets = []
    for n in range(100):
        t = t0 + n * 0.02
        emp = tone(440, n * PTIME, PTIME, ULAW) if n < 50 else bytes([0xFF]) * PTIME
        cli = tone(1000, n * PTIME, PTIME, ALAW) if n >= 50 else bytes([0xD5]) * PTIME
        packets.append((t, from_employee(rtp(0, n, 1000 + n * PTIME, 0x11, emp))))
        packets.append((t + 0.001, from_client(rtp(8, n, n * PTIME, 0x22, cli))))
    packets.append((t0 + 0.5, from_employee(b"\x81\xc9\x00\x07" + bytes(28), port=EMPLOYEE_PORT + 1)))
    packets.append((t0 + 0.6, from_employee(rtp(101, 999, 5, 0x11, b"\x05\x8a\x01\x40"))))
    packets.append((t0 + 0.7, ipv4_udp(("10.0.0.9", 5), (RTPENGINE, 5060), b"OPTIONS sip:x SIP/2.0\r\n\r\n")))
    return sorted(packets)


def read_wav(path):
    with wave.open(str(path), "rb") as w:
        params = (w.getnchannels(), w.getsampwidth(), w.getframerate())
        samples = array("h", w.readframes(w.getnframes()))
    return params, samples[0::2], samples[1::2]


def rms(samples):
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


@pytest.fixture
def call_pcap(tmp_path):
    path = tmp_path / "call.pcap"
    write_pcap(path, call_packets())
    return path


# -- the conversion -----------------------------------------------------------


def test_wav_is_stereo_8khz_16bit(call_pcap, tmp_path):
    result = pcap_to_wav(call_pcap, tmp_path / "out.wav", EMPLOYEE_PORT, CLIENT_PORT)
    params, left, right = read_wav(tmp_path / "out.wav")
    assert params == (2, 2, 8000)
    assert len(left) == len(right) == result.frames
    assert result.duration == pytest.approx(2.0, abs=0.03)


def test_employee_is_left_and_client_is_right(call_pcap, tmp_path):
    pcap_to_wav(call_pcap, tmp_path / "out.wav", EMPLOYEE_PORT, CLIENT_PORT)
    _, left, right = read_wav(tmp_path / "out.wav")
    first, second = slice(400, 7600), slice(8400, 15600)
    assert rms(left[first]) > 4000 and rms(left[second]) < 50
    assert rms(right[second]) > 4000 and rms(right[first]) < 50


def test_packet_counts_and_ignored_packets(call_pcap, tmp_path):
    result = pcap_to_wav(call_pcap, tmp_path / "out.wav", EMPLOYEE_PORT, CLIENT_PORT)
    assert (result.employee_packets, result.client_packets) == (100, 100)
    assert result.skipped_packets == 3  # RTCP, telephone-event, SIP


def test_lost_packets_become_silence_in_place(tmp_path):
    payload = tone(440, 0, PTIME, ULAW)
    packets = [
        (n * 0.02, from_employee(rtp(0, n, n * PTIME, 1, payload))) for n in range(50) if not 20 <= n < 30
    ]
    write_pcap(tmp_path / "lossy.pcap", packets)
    pcap_to_wav(tmp_path / "lossy.pcap", tmp_path / "out.wav", EMPLOYEE_PORT, CLIENT_PORT)
    _, left, right = read_wav(tmp_path / "out.wav")
    assert len(left) == 50 * PTIME
    assert rms(left[20 * PTIME : 30 * PTIME]) == 0
    assert rms(left[30 * PTIME :]) > 4000
    assert rms(right) == 0


def test_reordered_packets_are_placed_by_rtp_timestamp(tmp_path):
    order = [0, 1, 3, 2, 4]
    packets = [
        (i * 0.02, from_client(rtp(8, n, n * PTIME, 2, bytes([0xD5 ^ n]) * PTIME)))
        for i, n in enumerate(order)
    ]
    write_pcap(tmp_path / "reordered.pcap", packets)
    pcap_to_wav(tmp_path / "reordered.pcap", tmp_path / "out.wav", EMPLOYEE_PORT, CLIENT_PORT)
    _, _, right = read_wav(tmp_path / "out.wav")
    assert [right[n * PTIME] for n in range(5)] == [alaw_to_linear(0xD5 ^ n) for n in range(5)]


def test_timestamp_wrap_and_new_ssrc_stay_on_the_timeline(tmp_path):
    packets = []
    for n in range(100):
        ssrc, ts = (7, 0xFFFFFF00 + n * PTIME) if n < 50 else (8, 12345 + n * PTIME)
        payload = tone(440, n * PTIME, PTIME, ULAW)
        packets.append((n * 0.02, from_employee(rtp(0, n, ts, ssrc, payload))))
    write_pcap(tmp_path / "wrap.pcap", packets)
    result = pcap_to_wav(tmp_path / "wrap.pcap", tmp_path / "out.wav", EMPLOYEE_PORT, CLIENT_PORT)
    _, left, _ = read_wav(tmp_path / "out.wav")
    assert result.frames == 100 * PTIME
    assert rms(left) > 4000


def test_several_ports_per_party(call_pcap, tmp_path):
    result = pcap_to_wav(call_pcap, tmp_path / "out.wav", [EMPLOYEE_PORT, 42000], {CLIENT_PORT})
    assert (result.employee_packets, result.client_packets) == (100, 100)


def test_same_port_for_both_parties_is_refused(call_pcap, tmp_path):
    with pytest.raises(ValueError):
        pcap_to_wav(call_pcap, tmp_path / "out.wav", EMPLOYEE_PORT, [EMPLOYEE_PORT, CLIENT_PORT])


def test_wav_directory_is_created_and_no_part_file_stays(call_pcap, tmp_path):
    out = tmp_path / "recordings" / "2024" / "cb-1.wav"
    pcap_to_wav(call_pcap, out, EMPLOYEE_PORT, CLIENT_PORT)
    assert [p.name for p in out.parent.iterdir()] == ["cb-1.wav"]


def test_empty_recording_gives_an_empty_stereo_wav(tmp_path):
    write_pcap(tmp_path / "empty.pcap", [])
    result = pcap_to_wav(tmp_path / "empty.pcap", tmp_path / "out.wav", EMPLOYEE_PORT, CLIENT_PORT)
    params, left, _ = read_wav(tmp_path / "out.wav")
    assert params == (2, 2, 8000) and result.frames == 0 and len(left) == 0


# -- reading pcaps --------------------------------------------------------------


def test_truncated_last_record_is_ignored(call_pcap):
    data = call_pcap.read_bytes()
    call_pcap.write_bytes(data[:-50])
    assert len(list(udp_datagrams(call_pcap))) == len(call_packets()) - 1


def test_not_a_pcap_is_an_error(tmp_path):
    (tmp_path / "x.pcap").write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))  # pcapng
    with pytest.raises(PcapError):
        list(udp_datagrams(tmp_path / "x.pcap"))


def test_ethernet_link_type_is_read(tmp_path):
    frame = bytes(12) + b"\x08\x00" + from_employee(rtp(0, 1, 2, 3, b"\xff"))
    write_pcap(tmp_path / "eth.pcap", [(1.0, frame)], linktype=1)
    [datagram] = udp_datagrams(tmp_path / "eth.pcap")
    assert (datagram.src, datagram.dst) == (EMPLOYEE, (RTPENGINE, EMPLOYEE_PORT))


def test_rtp_header_with_csrc_extension_and_padding():
    header = struct.pack("!BBHII", 0xB1, 0, 1, 2, 3)  # V=2, P=1, X=1, CC=1
    packet = header + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!" + b"data" + b"\x00\x00\x03"
    parsed = parse_rtp(packet)
    assert parsed.payload == b"data" and parsed.ssrc == 3


def test_rtcp_is_not_rtp():
    assert parse_rtp(b"\x81\xc8\x00\x06" + bytes(24)) is None
    assert parse_rtp(b"\x00" * 20) is None


# -- G.711 ----------------------------------------------------------------------


def test_g711_reference_values():
    assert [ulaw_to_linear(b) for b in (0xFF, 0x7F, 0x00, 0x80)] == [0, 0, -32124, 32124]
    assert [alaw_to_linear(b) for b in (0xD5, 0x55, 0x2A, 0xAA)] == [8, -8, -32256, 32256]


def test_g711_matches_audioop_when_available():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    codes = bytes(range(256))
    assert decode_g711("PCMU", codes) == audioop.ulaw2lin(codes, 2)
    assert decode_g711("PCMA", codes) == audioop.alaw2lin(codes, 2)


# -- rtpengine's files ------------------------------------------------------------


METADATA = """{pcap}


Timestamp started ms: 1795637465078.194
SDP mode: offer
SDP before RTP packet: 1

v=0\r
c=IN IP4 127.0.0.1\r
m=audio {offer_port} RTP/AVP 0 8 101\r
a=rtcp:41001\r

Timestamp started ms: 1795637465078.202
SDP mode: answer
SDP before RTP packet: 1

v=0\r
c=IN IP4 127.0.0.1\r
m=audio {answer_port} RTP/AVP 0 8 101\r

Timestamp terminated ms(first monologue): 1795637476058.969

call start time: 2026-11-25T20:11:05
call end time: 2026-11-25T20:11:16
"""


def spool(tmp_path, call_id, finished=True, pcap_line=None, suffix="81b1479be96bb5ee"):
    for sub in ("pcaps", "metadata", "tmp"):
        (tmp_path / sub).mkdir(exist_ok=True)
    name = f"{escape_call_id(call_id)}-{suffix}"
    pcap = tmp_path / "pcaps" / f"{name}.pcap"
    write_pcap(pcap, call_packets())
    meta_dir = "metadata" if finished else "tmp"
    meta = tmp_path / meta_dir / f"rtpengine-meta-{name}.{'txt' if finished else 'tmp'}"
    text = METADATA.format(pcap=pcap_line or pcap, offer_port=EMPLOYEE_PORT, answer_port=CLIENT_PORT)
    meta.write_text(text)
    return pcap


def test_call_id_is_escaped_like_rtpengine():
    assert escape_call_id('cb-test@x "y"') == "cb-test%40x%20%22y%22"
    assert escape_call_id("a.b_c~d-9") == "a.b_c~d-9"


def test_finished_recording_is_found_with_its_ports(tmp_path):
    pcap = spool(tmp_path, "cb-1@pbx")
    recording = find_recording(tmp_path, "cb-1@pbx")
    assert recording.pcap == pcap
    assert (recording.offer_ports(), recording.answer_ports()) == ([EMPLOYEE_PORT], [CLIENT_PORT])
    assert find_pcap(tmp_path, "cb-1@pbx") == pcap


def test_recording_in_progress_is_not_found(tmp_path):
    spool(tmp_path, "cb-1", finished=False)
    assert find_pcap(tmp_path, "cb-1") is None


def test_other_calls_are_not_found(tmp_path):
    spool(tmp_path, "cb-10")
    assert find_pcap(tmp_path, "cb-1") is None
    assert find_pcap(tmp_path / "missing", "cb-10") is None


def test_pcap_is_found_in_the_spool_when_its_recorded_path_moved(tmp_path):
    pcap = spool(tmp_path, "cb-1", pcap_line="/elsewhere/pcaps/cb-1-81b1479be96bb5ee.pcap")
    assert find_pcap(tmp_path, "cb-1") == pcap


def test_recording_converts_with_the_ports_of_its_metadata(tmp_path):
    spool(tmp_path, "cb-1")
    result = convert_recording(find_recording(tmp_path, "cb-1"), tmp_path / "cb-1.wav")
    assert (result.employee_packets, result.client_packets) == (100, 100)
    _, left, right = read_wav(tmp_path / "cb-1.wav")
    assert rms(left[400:7600]) > 4000 and rms(right[8400:15600]) > 4000


def test_a_removed_recording_leaves_the_spool_and_other_calls_in_it(tmp_path):
    spool(tmp_path, "cb-1")
    other = spool(tmp_path, "cb-2")
    recording = find_recording(tmp_path, "cb-1")
    remove_recording(recording)
    assert not recording.pcap.exists() and not recording.metadata.exists()
    assert find_recording(tmp_path, "cb-1") is None
    assert find_pcap(tmp_path, "cb-2") == other
    remove_recording(recording)  # gone already: no error
