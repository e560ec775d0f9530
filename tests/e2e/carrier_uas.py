"""The carrier's far end when no call needs media: every INVITE gets the reply its number's policy says.

SIPp's far_end.xml plays calls that are answered and typed into; the limits'
tests need something else: many short calls in a row, each refused the way
a mobile refuses (603 declined, 486 busy, ringing until cancelled), and a
record of every INVITE that left through the trunk, to tell what the PBX
dialled and what it did not.

    with CarrierUas("127.0.0.5", 5080, {"+421905111222": 603, "+421233999888": 480}) as carrier:
        ...
        [invite] = carrier.wait_for_invites("+421905111222", 1, timeout=30)
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

RING = "ring"  # 180, then 487 once the PBX cancels
REASONS = {180: "Ringing", 200: "OK", 480: "Temporarily Unavailable", 486: "Busy Here",
           487: "Request Terminated", 603: "Decline"}
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
USER = re.compile(r"sips?:([^@;>]+)@")


@dataclass(frozen=True)
class Invite:
    ruri_user: str
    from_user: str
    call_id: str
    at: float  # time.monotonic() of its first arrival


def _headers(message: str) -> tuple[str, list[tuple[str, str]]]:
    head = message.split("\r\n\r\n", 1)[0].split("\r\n")
    fields = []
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip().lower()
            fields.append((COMPACT.get(name, name), value.strip()))
    return head[0], fields


def _first(fields: list[tuple[str, str]], name: str) -> str:
    return next((v for n, v in fields if n == name), "")


class CarrierUas:
    """A UDP listener on the trunk's address answering by R-URI user; `default` for any other number."""

    def __init__(self, ip: str, port: int, policy: dict[str, int | str], default: int | str = 480):
        self.policy = dict(policy)
        self.default = default
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((ip, port))
        self._sock.settimeout(0.2)
        self._invites: dict[str, Invite] = {}
        self._ringing: dict[str, tuple[list[tuple[str, str]], tuple[str, int]]] = {}
        self._tags: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="carrier-uas", daemon=True)

    def __enter__(self) -> CarrierUas:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def invites(self, user: str | None = None) -> list[Invite]:
        with self._lock:
            found = sorted(self._invites.values(), key=lambda i: i.at)
        return [i for i in found if user is None or i.ruri_user == user]

    def wait_for_invites(self, user: str, count: int, timeout: float) -> list[Invite]:
        """The first `count` INVITEs to `user`, waited for up to `timeout` s; fails if they do not come."""
        deadline = time.monotonic() + timeout
        while len(found := self.invites(user)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} INVITEs to {user} within {timeout} s, wanted {count}; "
                                     f"all INVITEs: {self.invites()}")
            time.sleep(0.05)
        return found[:count]

    # -- the listener thread ---------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            message = data.decode(errors="replace")
            if message.startswith("SIP/2.0"):
                continue  # answers to nothing we sent
            self._handle(message, source)

    def _handle(self, message: str, source: tuple[str, int]) -> None:
        start, fields = _headers(message)
        method = start.split(" ", 1)[0]
        call_id = _first(fields, "call-id")
        if method == "INVITE":
            self._invite(start, fields, call_id, source)
        elif method == "CANCEL":
            self._reply(fields, 200, source)
            with self._lock:
                ringing = self._ringing.pop(call_id, None)
            if ringing is not None:
                self._reply(ringing[0], 487, ringing[1])
        elif method in ("BYE", "OPTIONS", "INFO"):
            self._reply(fields, 200, source)
        # ACK: nothing to answer.

    def _invite(self, start: str, fields: list[tuple[str, str]], call_id: str,
                source: tuple[str, int]) -> None:
        ruri = USER.search(start)
        sender = USER.search(_first(fields, "from"))
        user = ruri.group(1) if ruri else ""
        with self._lock:
            # A retransmission keeps the first arrival's record and gets the same answer.
            self._invites.setdefault(call_id, Invite(user, sender.group(1) if sender else "", call_id,
                                                     time.monotonic()))
        action = self.policy.get(user, self.default)
        if action == RING:
            with self._lock:
                self._ringing[call_id] = (fields, source)
            self._reply(fields, 180, source)
        else:
            self._reply(fields, int(action), source)

    def _reply(self, fields: list[tuple[str, str]], code: int, source: tuple[str, int]) -> None:
        call_id = _first(fields, "call-id")
        to = _first(fields, "to")
        # One To-tag per call: the CANCEL's 200 and the INVITE's 487 carry the 180's.
        if ";tag=" not in to:
            with self._lock:
                to += ";tag=" + self._tags.setdefault(call_id, uuid.uuid4().hex[:10])
        lines = [f"SIP/2.0 {code} {REASONS.get(code, 'Refused')}"]
        lines += [f"Via: {value}" for name, value in fields if name == "via"]
        lines += [f"From: {_first(fields, 'from')}", f"To: {to}", f"Call-ID: {call_id}",
                  f"CSeq: {_first(fields, 'cseq')}", "Content-Length: 0"]
        self._sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), source)
