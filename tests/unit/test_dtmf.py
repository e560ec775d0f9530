"""DTMF digits from rtpengine's DTMF log and from SIP INFO bodies."""

import json

import pytest

from callbackd.dtmf import DtmfEvent, event_to_digit, parse_rtpengine_log, parse_sip_info, sent_by

# A datagram exactly as rtpengine 10.5 sent it (integration test, this machine).
RTPENGINE_DATAGRAM = (
    b'{"callid":"cb-2","source_tag":"EMP","tags":["EMP","B"],"type":"DTMF",'
    b'"timestamp":1795637499,"source_ip":"127.0.0.201","event":5,"duration":80,"volume":10}'
)


def log_datagram(**fields):
    data = {"callid": "cb-1", "source_tag": "EMP", "event": 5, "duration": 80, "volume": 10}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def test_rtpengine_datagram_gives_call_tag_digit_and_source():
    assert parse_rtpengine_log(RTPENGINE_DATAGRAM) == DtmfEvent("cb-2", "EMP", "5", "127.0.0.201")


def test_event_unpacks_as_a_tuple():
    call_id, source_tag, digit, source_ip = parse_rtpengine_log(RTPENGINE_DATAGRAM)
    assert (call_id, source_tag, digit, source_ip) == ("cb-2", "EMP", "5", "127.0.0.201")


def test_datagram_without_source_ip_has_none():
    assert parse_rtpengine_log(log_datagram()).source_ip is None
    assert parse_rtpengine_log(log_datagram(source_ip=5)).source_ip is None


def test_digit_counts_when_sent_by_the_party_from_its_own_address():
    assert sent_by(parse_rtpengine_log(RTPENGINE_DATAGRAM), "EMP", "127.0.0.201")


def test_digit_from_another_address_at_the_partys_port_does_not_count():
    assert not sent_by(parse_rtpengine_log(RTPENGINE_DATAGRAM), "EMP", "127.0.0.203")


def test_digit_of_the_other_party_does_not_count():
    assert not sent_by(DtmfEvent("cb", "B", "5", "127.0.0.201"), "EMP", "127.0.0.201")


@pytest.mark.parametrize(("source_ip", "address"), [(None, "127.0.0.201"), ("127.0.0.201", None),
                                                    ("garbage", "garbage")])
def test_digit_from_an_unknown_address_does_not_count(source_ip, address):
    assert not sent_by(DtmfEvent("cb", "EMP", "5", source_ip), "EMP", address)


def test_ipv6_addresses_compare_in_any_spelling():
    assert sent_by(DtmfEvent("cb", "EMP", "5", "2001:db8::1"), "EMP", "2001:DB8:0::1")


@pytest.mark.parametrize(
    ("event", "digit"),
    [(0, "0"), (9, "9"), (10, "*"), (11, "#"), (12, "A"), (13, "B"), (14, "C"), (15, "D")],
)
def test_event_codes_map_to_digits(event, digit):
    assert parse_rtpengine_log(log_datagram(event=event)).digit == digit


def test_str_datagram_is_accepted():
    assert parse_rtpengine_log(RTPENGINE_DATAGRAM.decode()).digit == "5"


def test_datagram_without_type_is_dtmf():
    assert parse_rtpengine_log(log_datagram(type=None)).digit == "5"


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"garbage",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        b'"just a string"',
        b"{" * 100_000,
        log_datagram(event=16),
        log_datagram(event=-1),
        log_datagram(event="5"),
        log_datagram(event=True),
        log_datagram(event=None),
        log_datagram(callid=None),
        log_datagram(callid=""),
        log_datagram(callid=7),
        log_datagram(source_tag=None),
        log_datagram(type="something-else"),
        # rtpengine does not escape the call-id: a quote in it breaks the JSON
        b'{"callid":"a"b","source_tag":"EMP","type":"DTMF","event":5}',
    ],
)
def test_unusable_datagram_gives_none(datagram):
    assert parse_rtpengine_log(datagram) is None


@pytest.mark.parametrize(("event", "digit"), [(0, "0"), (11, "#"), (15, "D"), (16, None), ("1", None)])
def test_event_to_digit(event, digit):
    assert event_to_digit(event) == digit


@pytest.mark.parametrize(
    ("body", "digit"),
    [
        ("Signal=5\r\nDuration=160\r\n", "5"),
        ("Signal=*\r\nDuration=160", "*"),
        ("Signal=#\r\nDuration=160", "#"),
        ("Signal=10\r\nDuration=160", "*"),
        ("Signal=11\r\nDuration=160", "#"),
        ("signal = 7\nduration=100\n", "7"),
        ("Duration=160\r\nSignal=0\r\n", "0"),
        ("Signal=a\r\n", "A"),
        (b"Signal=9\r\nDuration=250\r\n", "9"),
    ],
)
def test_dtmf_relay_body_gives_digit(body, digit):
    assert parse_sip_info("application/dtmf-relay", body) == digit


@pytest.mark.parametrize(
    "body",
    ["", "Duration=160\r\n", "Signal=\r\n", "Signal=55\r\n", "Signal=16\r\n", "Signal=x\r\n", b"\xff\xfe"],
)
def test_bad_dtmf_relay_body_gives_none(body):
    assert parse_sip_info("application/dtmf-relay", body) is None


@pytest.mark.parametrize(
    ("body", "digit"), [("5", "5"), ("5\r\n", "5"), ("#", "#"), ("11", "#"), (b"*", "*")]
)
def test_dtmf_body_gives_digit(body, digit):
    assert parse_sip_info("application/dtmf", body) == digit


@pytest.mark.parametrize("body", ["", "55", "hello", "Signal=5"])
def test_bad_dtmf_body_gives_none(body):
    assert parse_sip_info("application/dtmf", body) is None


def test_content_type_parameters_and_case_are_ignored():
    assert parse_sip_info("Application/DTMF-Relay; charset=utf-8", "Signal=3\r\n") == "3"


def test_other_content_type_gives_none():
    assert parse_sip_info("application/sdp", "Signal=5\r\n") is None
