"""RTPengine ng control protocol client.

The ng protocol is one UDP datagram per request: ``<cookie> <bencoded dict>``;
the reply echoes the cookie. RTPengine caches replies by cookie, so a request
retransmitted with the *same* cookie is answered again without being executed
twice: retries here always reuse the cookie of the first attempt.

The call-back uses one rtpengine call per call-back (one call-id) with two
monologues (see shared/notes/rtpengine-callback-media.md):

* ``B`` (the PBX side): first a placeholder SDP, later the client's own SDP
  (:meth:`NgClient.rebind`, once the client answered);
* ``EMP`` (the employee): the SDP of the employee's 200 OK.

Each side is bound to the address its SDP names, never learnt from traffic
(:data:`BOUND_MEDIA_FLAGS`, tested with rtpengine 10.5): by default rtpengine
re-learns a side's address from whoever sends to its port during the first
seconds after each signalling, and without ``strict source`` forwards
packets from anyone even after that. So a stranger who sends first to the
B-facing port would hear the employee, and RFC 4733 events sprayed at the
employee-facing port would be forwarded and logged with tag ``EMP``. With
``asymmetric`` (take the SDP's address, learn nothing) plus ``strict source``
(drop what comes from elsewhere), only the SDP's address:port is heard, from
the first packet on. The price: a party whose RTP leaves from another
address or port than its SDP says (a NAT in front of a phone) is not heard;
the engine's parties are behind the trunk, which does symmetric RTP.

Which tag to name in which command (tested with rtpengine 10.5):

* ``offer``/``answer``: from-tag ``B``, to-tag ``EMP`` (the offer is ours).
* ``play media``/``stop media`` towards the employee: from-tag ``EMP`` —
  rtpengine plays to the party the from-tag names, from that party's facing
  port (with ``B`` the employee hears nothing). ``play DTMF`` is the other way
  round: the from-tag's *peer* hears the digit.
* DTMF typed by the employee is logged with ``source_tag`` = ``EMP`` (the
  tag of the monologue that sent it). A digit injected with ``play DTMF`` is
  logged as well, with the from-tag of the command as ``source_tag``.
* ``delete`` closes the recording only after the daemon's ``delete-delay``
  unless the command says ``delete-delay: 0`` (:meth:`NgClient.delete` does).

Synchronous on purpose: the engine calls it from its reactor thread and each
exchange is sub-millisecond on loopback; sockets have timeouts and one lock
serialises the requests of several threads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import bencodepy

log = logging.getLogger(__name__)

# One codec for the whole module: byte strings come back as str when they are
# UTF-8 (everything rtpengine sends: SDP, tags, reasons), dicts as plain dicts.
_BENCODE = bencodepy.Bencode(encoding="utf-8", encoding_fallback="value")

MAX_DATAGRAM = 65535

# Placeholder media address for a leg whose far end is not known yet
# (RFC 3264 discard port 9, as the notes did it).
PLACEHOLDER_ADDRESS = "127.0.0.1"
PLACEHOLDER_PORT = 9
TELEPHONE_EVENT_PT = 101

# Flags of every offer/answer of a call-back: see the module's docstring.
BOUND_MEDIA_FLAGS = ("asymmetric", "strict source")
# A later offer/answer of the same call keeps rtpengine's local ports, so the
# employee, who was given the employee-facing port, needs no re-INVITE.
REBIND_FLAGS = (*BOUND_MEDIA_FLAGS, "port latching")


class NgError(Exception):
    """rtpengine answered ``result: error``."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"rtpengine {command}: {reason}")
        self.command = command
        self.reason = reason


class NgTimeout(NgError):
    """No reply with our cookie after all retries."""


def ng_key(name: str) -> str:
    """Python keyword → ng dictionary key: ``call_id`` → ``call-id``."""
    return name.replace("_", "-")


def _ng_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return [_ng_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _ng_value(v) for k, v in value.items() if v is not None}
    return value


def encode_request(cookie: str, command: str, params: dict[str, Any]) -> bytes:
    """The datagram for one ng request (``None`` values are left out)."""
    body = {"command": command}
    body.update({ng_key(k): _ng_value(v) for k, v in params.items() if v is not None})
    return cookie.encode("ascii") + b" " + _BENCODE.encode(body)


def decode_reply(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """``(cookie, dict)`` of a reply datagram, or None if it is not one."""
    cookie, sep, body = data.partition(b" ")
    if not sep or not cookie:
        return None
    try:
        decoded = _BENCODE.decode(body)
    except Exception:
        return None
    if not isinstance(decoded, dict):
        return None
    try:
        return cookie.decode("ascii"), dict(decoded)
    except UnicodeDecodeError:
        return None


class NgClient:
    """A client of one rtpengine's ng port (UDP)."""

    def __init__(self, address: tuple[str, int], timeout: float = 1.0, retries: int = 2) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._prefix = os.urandom(4).hex()
        self._counter = 0

    # -- plumbing -------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> NgClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect(self.address)
            self._sock = sock
        return self._sock

    def _next_cookie(self) -> str:
        self._counter += 1
        return f"{self._prefix}_{self._counter}"

    def request(self, command: str, **params: Any) -> dict[str, Any]:
        """Send one ng command and return the reply dictionary.

        Keyword names are ng keys with ``_`` for ``-`` (``call_id``,
        ``from_tag``, ``record_call``); ``True``/``False`` become
        ``yes``/``no``. Raises :class:`NgError` when rtpengine answers
        ``result: error`` and :class:`NgTimeout` when it does not answer.
        """
        with self._lock:
            cookie = self._next_cookie()
            datagram = encode_request(cookie, command, params)
            sock = self._socket()
            for attempt in range(self.retries + 1):
                try:
                    sock.send(datagram)
                except OSError as exc:  # e.g. ECONNREFUSED from an earlier ICMP
                    log.debug("ng %s send attempt %d: %s", command, attempt + 1, exc)
                    continue
                reply = self._wait_reply(sock, cookie)
                if reply is not None:
                    break
            else:
                raise NgTimeout(command, f"no reply from {self.address[0]}:{self.address[1]}")
        if reply.get("result") == "error":
            raise NgError(command, str(reply.get("error-reason", "unknown error")))
        if "warning" in reply:
            log.warning("rtpengine %s: %s", command, reply["warning"])
        return reply

    def _wait_reply(self, sock: socket.socket, cookie: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                return None
            except OSError as exc:  # ICMP port unreachable: nobody listens (yet)
                log.debug("ng recv: %s", exc)
                return None
            decoded = decode_reply(data)
            if decoded is None:
                log.debug("ng: dropped a datagram that is not a reply")
                continue
            reply_cookie, reply = decoded
            if reply_cookie != cookie:
                log.debug("ng: dropped a stale reply (cookie %s)", reply_cookie)
                continue
            return reply
        return None

    # -- what the engine does -------------------------------------------------

    def ping(self) -> bool:
        """True when rtpengine answers ``pong``."""
        return self.request("ping").get("result") == "pong"

    def offer(
        self,
        call_id: str,
        from_tag: str,
        sdp: str,
        record: bool = False,
        **extra: Any,
    ) -> str:
        """Offer ``sdp`` from ``from_tag``; returns rtpengine's SDP for the other side.

        ``record`` starts the call's recording (``record call: yes``): with
        ``recording-method = pcap`` the reply's ``recordings`` list names the
        pcap (use :meth:`request` to see it); it is complete once the call is
        deleted (see :func:`callbackd.recording.find_pcap`). ``extra`` is
        passed as ng keys, e.g. ``flags=["inject-DTMF"]`` (needed, in offer and
        answer, for :meth:`play_dtmf` to reach the peer without transcoding).
        """
        reply = self.request(
            "offer",
            call_id=call_id,
            from_tag=from_tag,
            sdp=sdp,
            record_call=True if record else None,
            **extra,
        )
        return str(reply["sdp"])

    def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str, **extra: Any) -> str:
        """Answer with ``to_tag``'s ``sdp``; returns rtpengine's SDP for ``from_tag``'s side."""
        reply = self.request("answer", call_id=call_id, from_tag=from_tag, to_tag=to_tag, sdp=sdp, **extra)
        return str(reply["sdp"])

    def rebind(self, call_id: str, from_tag: str, to_tag: str, from_sdp: str, to_sdp: str) -> tuple[str, str]:
        """Tell rtpengine ``from_tag``'s real SDP, after a placeholder, keeping its ports.

        A new offer (``from_sdp``) and answer (``to_sdp``, the SDP ``to_tag``
        answered with before) with :data:`REBIND_FLAGS`. Returns rtpengine's
        SDPs of the offer (for ``to_tag``: its port must be the one it had)
        and of the answer (for ``from_tag``).
        """
        flags = list(REBIND_FLAGS)
        offered = self.offer(call_id, from_tag, from_sdp, flags=flags)
        answered = self.answer(call_id, from_tag, to_tag, to_sdp, flags=flags)
        return offered, answered

    def play_media(
        self, call_id: str, from_tag: str, file: str, repeat_times: int | None = None
    ) -> int | None:
        """Play an audio file (a path on rtpengine's host, readable by its user) to ``from_tag``.

        Returns the duration in ms when rtpengine tells it.
        """
        reply = self.request(
            "play media", call_id=call_id, from_tag=from_tag, file=file, repeat_times=repeat_times
        )
        duration = reply.get("duration")
        return int(duration) if isinstance(duration, int) else None

    def stop_media(self, call_id: str, from_tag: str) -> None:
        self.request("stop media", call_id=call_id, from_tag=from_tag)

    def block_media(self, call_id: str, from_tag: str) -> None:
        """Stop relaying what ``from_tag`` sends (its peer hears nothing of it); ``from_tag`` still hears.

        A file played to the peer meanwhile is heard alone: ``play media``
        adds its stream beside the relayed one, it does not replace it.
        """
        self.request("block media", call_id=call_id, from_tag=from_tag)

    def unblock_media(self, call_id: str, from_tag: str) -> None:
        self.request("unblock media", call_id=call_id, from_tag=from_tag)

    def play_dtmf(self, call_id: str, from_tag: str, digit: str, duration_ms: int | None = None) -> None:
        """Inject one DTMF digit (``0-9*#A-D``) as if ``from_tag`` had sent it.

        The digit goes to ``from_tag``'s *peer* (the opposite of play media),
        and only if offer and answer carried ``flags=["inject-DTMF"]``; rtpengine
        also logs it as a DTMF event with ``source_tag`` = ``from_tag``.
        """
        self.request("play DTMF", call_id=call_id, from_tag=from_tag, code=digit, duration=duration_ms)

    def last_media_at(self, call_id: str) -> float | None:
        """When RTPengine last received a packet of the call (epoch s); None
        when the call is gone (RTPengine's own media timeout deletes it)."""
        try:
            return last_packet(self.request("query", call_id=call_id))
        except NgError as exc:
            if "unknown call" in exc.reason.lower():
                return None
            raise

    def delete(self, call_id: str, delay: int | None = 0) -> dict[str, Any]:
        """Delete the call. ``delay`` 0 (default) overrides the daemon's
        ``delete-delay`` so the recording is closed at once; ``None`` keeps it."""
        return self.request("delete", call_id=call_id, delete_delay=delay)


def last_packet(query_reply: dict[str, Any]) -> float:
    """The newest ``last packet`` (epoch s) over every stream of an ng ``query``
    reply; its creation time when no stream has seen one."""
    newest = float(query_reply.get("created", 0))
    for tag in (query_reply.get("tags") or {}).values():
        for media in tag.get("medias") or ():
            for stream in media.get("streams") or ():
                newest = max(newest, float(stream.get("last packet", 0)))
    return newest


# -- SDP helpers --------------------------------------------------------------


@dataclass(frozen=True)
class MediaEndpoint:
    """Where an SDP says its audio goes."""

    address: str
    port: int


def placeholder_sdp(
    address: str = PLACEHOLDER_ADDRESS,
    port: int = PLACEHOLDER_PORT,
    session_id: int | None = None,
) -> str:
    """SDP for a leg whose far end is unknown yet: PCMU, PCMA, telephone-event.

    Offered from the PBX side (tag ``B``) when calling the employee: rtpengine
    answers with its employee-facing port; the client's real address is learnt
    from its first RTP packet.
    """
    sid = session_id if session_id is not None else int(time.time())
    ip = "IP6" if ":" in address else "IP4"
    return (
        "v=0\r\n"
        f"o=callbackd {sid} {sid} IN {ip} {address}\r\n"
        "s=callbackd\r\n"
        f"c=IN {ip} {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 {TELEPHONE_EVENT_PT}\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000\r\n"
        f"a=fmtp:{TELEPHONE_EVENT_PT} 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def sdp_audio_endpoint(sdp: str) -> MediaEndpoint | None:
    """The address and port of the first audio stream of ``sdp``.

    A media-level ``c=`` wins over the session-level one. On an SDP returned
    by rtpengine this is rtpengine's own port for that side: the recording
    converter uses it to tell the parties' streams apart.
    """
    session_addr: str | None = None
    media_addr: str | None = None
    port: int | None = None
    section = "session"  # "session", "audio" (the first audio m=) or "other"
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if port is not None:
                break
            fields = line[2:].split()
            section = "audio" if len(fields) >= 2 and fields[0] == "audio" else "other"
            if section == "audio":
                try:
                    port = int(fields[1].split("/")[0])
                except ValueError:
                    return None
        elif line.startswith("c=") and section != "other":
            fields = line[2:].split()
            if len(fields) < 3:
                continue
            addr = fields[2].split("/")[0]
            if section == "session":
                session_addr = addr
            else:
                media_addr = addr
    addr = media_addr or session_addr
    if port is None or addr is None:
        return None
    return MediaEndpoint(addr, port)
