"""DTMF digits from the two places they reach the engine.

* RTPengine's DTMF log (``dtmf-log-dest = IP:PORT`` in its config): one JSON
  datagram per RFC 4733 digit, for example (rtpengine 10.5)::

    {"callid":"cb-1","source_tag":"EMP","tags":["EMP","B"],"type":"DTMF",
     "timestamp":1795637472,"source_ip":"127.0.0.201","event":5,
     "duration":80,"volume":10}

  ``source_tag`` is the tag of the party that *sent* the digit. Digits
  injected with ``play DTMF`` are logged too (``source_tag`` = that command's
  from-tag), so a consumer keeps only the tag it listens to. ``source_tag``
  alone proves little: rtpengine logs with that party's tag whatever reaches
  the party's port, from anyone; ``source_ip`` is the packet's real source
  (the port is not in the datagram), so :func:`sent_by` checks both. rtpengine prints
  the call-id unescaped: a call-id with ``"`` or ``\\`` makes the datagram
  invalid JSON, so give rtpengine call-ids without them.

* SIP INFO bodies: ``application/dtmf-relay`` (``Signal=5\\r\\nDuration=160``)
  and ``application/dtmf`` (``5``).

Every parser returns None on anything it does not understand; none raises.
"""

from __future__ import annotations

import ipaddress
import json
from typing import NamedTuple

# RFC 4733 event codes 0-15.
EVENT_DIGITS = "0123456789*#ABCD"
DIGITS = frozenset(EVENT_DIGITS)


class DtmfEvent(NamedTuple):
    """One digit from rtpengine's DTMF log."""

    call_id: str
    source_tag: str
    digit: str
    source_ip: str | None = None


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False


def sent_by(event: DtmfEvent, tag: str, address: str | None) -> bool:
    """Whether the digit came from party `tag`'s own media `address` (its SDP's c=).

    A datagram without ``source_ip`` (not what rtpengine 10.5 sends) or a
    party whose address is unknown never counts.
    """
    if event.source_tag != tag or address is None or event.source_ip is None:
        return False
    return _same_ip(event.source_ip, address)


def event_to_digit(event: object) -> str | None:
    """RFC 4733 event code (0-15) → ``0-9 * # A-D``."""
    if isinstance(event, bool) or not isinstance(event, int):
        return None
    if 0 <= event < len(EVENT_DIGITS):
        return EVENT_DIGITS[event]
    return None


def parse_rtpengine_log(datagram: bytes | str) -> DtmfEvent | None:
    """A DTMF log datagram → ``DtmfEvent(call_id, source_tag, digit, source_ip)``.

    None for garbage, non-DTMF ``type``, missing fields or an event that is no
    digit (e.g. 16, flash).
    """
    try:
        text = datagram.decode("utf-8") if isinstance(datagram, bytes) else datagram
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type", "DTMF")
    if kind != "DTMF":
        return None
    call_id = data.get("callid")
    source_tag = data.get("source_tag")
    if not isinstance(call_id, str) or not call_id or not isinstance(source_tag, str):
        return None
    digit = event_to_digit(data.get("event"))
    if digit is None:
        return None
    source_ip = data.get("source_ip")
    return DtmfEvent(call_id, source_tag, digit, source_ip if isinstance(source_ip, str) else None)


def _signal_to_digit(value: str) -> str | None:
    value = value.strip().upper()
    if len(value) == 1 and value in DIGITS:
        return value
    if value.isdigit():  # "10" = *, "11" = #, ... as some phones send it
        return event_to_digit(int(value))
    return None


def parse_sip_info(content_type: str, body: bytes | str) -> str | None:
    """The digit of a SIP INFO body, by its Content-Type, or None.

    ``application/dtmf-relay``: ``Signal=<d>`` line (``Duration=`` ignored);
    ``application/dtmf``: the body is the digit. Parameters of the content
    type (``; charset=...``) and letter case are ignored.
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/dtmf-relay":
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "signal":
                return _signal_to_digit(value)
        return None
    if media_type == "application/dtmf":
        return _signal_to_digit(text)
    return None
