"""SIP as an attacker writes it: hand-made requests from a chosen address, raw UDP.

SIPp plays the well-behaved peers; what a forger or a scanner sends (a To-tag
and Route for no dialog, a Contact aimed at the trunk, a thousand requests a
second, guessed passwords) is easier to say here, one datagram at a time.

    with RawSip("127.0.0.71", pbx) as sip:
        status = sip.register("100", "guess", contact_host="127.0.0.5", contact_port=5080)
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
import uuid

from vpbx import model

# How long to wait for the answer to one request: generous, a busy machine
# answers late; an answer that never comes is what some tests want to see.
ANSWER_WAIT_S = 3.0
# An OPTIONS probe: how often it is sent, and how long each answer is waited for.
OPTIONS_TRIES = 3
OPTIONS_WAIT = 1.0
CHALLENGE = re.compile(r"^(?:WWW|Proxy)-Authenticate:\s*Digest\s+(.*)$", re.IGNORECASE | re.MULTILINE)
PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]+))')


def status_code(message: str) -> int | None:
    match = re.match(r"SIP/2\.0 (\d{3}) ", message)
    return int(match.group(1)) if match else None


def _md5(text: str) -> str:
    # RFC 2617 digest is MD5.
    return hashlib.md5(text.encode()).hexdigest()


def digest_authorization(challenge: str, method: str, uri: str, user: str, password: str,
                         nc: int = 1, header: str = "Authorization") -> str:
    """The Authorization header answering a WWW-Authenticate challenge (qop=auth when offered)."""
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in PARAM.finditer(challenge)}
    realm, nonce = params["realm"], params["nonce"]
    ha1 = _md5(f"{user}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    fields = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"',
              "algorithm=MD5"]
    if "auth" in params.get("qop", "").split(","):
        cnonce = uuid.uuid4().hex[:16]
        count = f"{nc:08x}"
        response = _md5(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        response = _md5(f"{ha1}:{nonce}:{ha2}")
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return f"{header}: Digest " + ", ".join([*fields, f'response="{response}"'])


class RawSip:
    """One UDP socket on `source_ip` (port: the kernel's pick unless given) talking to the PBX."""

    def __init__(self, source_ip: str, pbx: model.HostPort, port: int = 0):
        self.pbx = pbx
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((source_ip, port))
        self.ip, self.port = self.sock.getsockname()

    def __enter__(self) -> RawSip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, method: str, ruri: str, *, call_id: str | None = None, cseq: int = 1,
                aor: str | None = None, from_uri: str | None = None, to_tag: str | None = None,
                contact: str | None = None,
                extra: list[str] | None = None, body: str = "") -> str:
        """A request from this socket; the Call-ID is new unless given.

        `aor`: From and To (a REGISTER's address of record), else From is
        `from_uri` or ours and To the R-URI. `contact`: the Contact URI, else
        our address.
        """
        call_id = call_id or uuid.uuid4().hex
        here = f"{self.ip}:{self.port}"
        to = f"<{aor or ruri}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {here};branch=z9hG4bK{uuid.uuid4().hex[:20]};rport",
            f"From: <{aor or from_uri or f'sip:attacker@{self.ip}'}>;tag={call_id[:10]}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <{contact or f'sip:attacker@{here}'}>",
            "Max-Forwards: 70",
            *(extra or []),
            f"Content-Length: {len(body.encode())}",
        ]
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def send(self, message: str) -> None:
        self.sock.sendto(message.encode(), (self.pbx.host, self.pbx.port))

    def final_answer(self, call_id: str, wait: float = ANSWER_WAIT_S) -> str | None:
        """The first final (>= 200) answer to `call_id` within `wait` s, or None."""
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                return None
            code = status_code(data)
            if code is not None and code >= 200 and f"Call-ID: {call_id}" in data:
                return data
        return None

    def ask(self, message: str, wait: float = ANSWER_WAIT_S) -> str | None:
        call_id = re.search(r"^Call-ID: (.*)$", message, re.MULTILINE).group(1).strip()
        self.send(message)
        return self.final_answer(call_id, wait)

    def register(self, user: str, password: str, *, contact_host: str | None = None,
                 contact_port: int | None = None, expires: int = 300) -> int | None:
        """REGISTER `user`, answering the digest challenge; the final code, None if nothing answers."""
        call_id = uuid.uuid4().hex
        ruri = f"sip:{self.pbx}"
        binding = {"aor": f"sip:{user}@{self.pbx.host}", "call_id": call_id,
                   "contact": f"sip:{user}@{contact_host or self.ip}:{contact_port or self.port}"}
        expiry = f"Expires: {expires}"
        answer = self.ask(self.request("REGISTER", ruri, extra=[expiry], **binding))
        if answer is None or status_code(answer) != 401:
            return None if answer is None else status_code(answer)
        auth = digest_authorization(CHALLENGE.search(answer).group(1), "REGISTER", ruri, user, password)
        answer = self.ask(self.request("REGISTER", ruri, cseq=2, extra=[expiry, auth], **binding))
        return None if answer is None else status_code(answer)


SDP_OFFER = ("v=0\r\no=raw 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
             "m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def call_as_extension(sip: RawSip, user: str, password: str, callee: str,
                      media_port: int = 40998, extra: list[str] | None = None) -> int | None:
    """An extension's INVITE to `callee` answering the proxy's challenge; the final code (ACKed)."""
    call_id = uuid.uuid4().hex
    ruri = f"sip:{callee}@{sip.pbx}"
    aor = f"sip:{user}@{sip.pbx.host}"
    body = SDP_OFFER.format(ip=sip.ip, port=media_port)
    sdp = [*(extra or []), "Content-Type: application/sdp"]
    answer = sip.ask(sip.request("INVITE", ruri, call_id=call_id, from_uri=aor, extra=sdp, body=body))
    if answer is None or status_code(answer) not in (401, 407):
        return None if answer is None else status_code(answer)
    _ack(sip, answer, ruri)
    header = "Proxy-Authorization" if status_code(answer) == 407 else "Authorization"
    auth = digest_authorization(CHALLENGE.search(answer).group(1), "INVITE", ruri, user, password,
                                header=header)
    answer = sip.ask(sip.request("INVITE", ruri, call_id=call_id, cseq=2, from_uri=aor,
                                 extra=[*sdp, auth], body=body))
    if answer is not None:
        _ack(sip, answer, ruri)
    return None if answer is None else status_code(answer)


def _ack(sip: RawSip, answer: str, ruri: str) -> None:
    """The ACK of a negative final answer: same Via branch, From, Call-ID and CSeq number, their To."""
    header = {name.lower(): value for name, value in
              (line.split(":", 1) for line in answer.split("\r\n")[1:] if ":" in line)}
    cseq = header["cseq"].split()[0]
    sip.send("\r\n".join([
        f"ACK {ruri} SIP/2.0", f"Via:{header['via']}", f"From:{header['from']}", f"To:{header['to']}",
        f"Call-ID:{header['call-id']}", f"CSeq: {cseq} ACK", "Max-Forwards: 70", "Content-Length: 0",
    ]) + "\r\n\r\n")


def listen_udp(ip: str, port: int) -> socket.socket:
    """A socket where a peer (the carrier) would receive; tests read it to see that nothing came."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, port))
    return sock


def received(sock: socket.socket, wait: float) -> list[str]:
    """Every datagram arriving on `sock` within `wait` s."""
    got = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(65535).decode(errors="replace"))
        except TimeoutError:
            break
    return got


def sip_options(target: model.HostPort, source_ip: str, tries: int = OPTIONS_TRIES,
                wait: float = OPTIONS_WAIT) -> str | None:
    """Send OPTIONS from source_ip (`tries` times, `wait` s each); the status line of the answer,
    or None if nothing answers."""
    call_id = uuid.uuid4().hex
    family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip if family == socket.AF_INET else "::1", 0))
        sock.settimeout(wait)
        here = sock.getsockname()
        local = f"[{here[0]}]:{here[1]}" if family == socket.AF_INET6 else f"{here[0]}:{here[1]}"
        request = (
            f"OPTIONS sip:{target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local};branch=z9hG4bK{call_id[:16]};rport\r\n"
            f"From: <sip:e2e-probe@{local}>;tag={call_id[16:]}\r\n"
            f"To: <sip:{target}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        for _ in range(tries):
            sock.sendto(request, (target.host, target.port))
            try:
                while True:
                    data = sock.recv(65535).decode(errors="replace")
                    # Only an answer to this very request counts.
                    if data.startswith("SIP/2.0 ") and call_id in data:
                        return data.split("\r\n", 1)[0]
            except TimeoutError:
                continue
    return None
