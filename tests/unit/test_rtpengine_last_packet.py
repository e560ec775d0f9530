"""When media last flowed in a call, read off RTPengine's ng `query` reply (the shape 10.5 sends)."""

from callbackd.rtpengine import last_packet


def stream(port, last, flags=("RTP",)):
    return {"local port": port, "last packet": last, "flags": list(flags),
            "stats": {"packets": 0, "bytes": 0, "errors": 0}}


def reply(*tags):
    return {"created": 1000, "result": "ok",
            "tags": {name: {"tag": name, "medias": [{"index": 1, "streams": streams}]}
                     for name, streams in tags}}


def test_the_newest_packet_of_any_stream_of_any_side():
    r = reply(("B", [stream(30000, 1010), stream(30001, 1003, ("RTCP",))]),
              ("EMP", [stream(30002, 1042), stream(30003, 1001, ("RTCP",))]))
    assert last_packet(r) == 1042


def test_a_call_without_packets_counts_from_its_creation():
    assert last_packet(reply(("B", [stream(30000, 0)]))) == 1000
    assert last_packet({"created": 1000, "tags": {}}) == 1000


def test_missing_parts_are_no_packets():
    assert last_packet({"created": 5, "tags": {"B": {"medias": None}, "EMP": {}}}) == 5
    assert last_packet({}) == 0
