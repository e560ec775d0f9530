"""Ask a PBX port whether it answers, the way its peers ask: run inside a host.

    python3 probes.py ng 10.77.0.21:2223     # RTPengine's ng ping
    python3 probes.py redis 10.77.0.41:6379  # Redis PING
    python3 probes.py sip 10.77.0.31:5070    # SIP OPTIONS
    python3 probes.py metrics 10.77.0.21:9495  # Prometheus GET /metrics

Prints the answer and exits 0, or exits 1 when nothing answers in WAIT_S.
The tests run it in a host's network (nsenter --net) or in a stranger's
namespace, so that the source is that host. Standard library only.
"""

from __future__ import annotations

import http.client
import re
import socket
import sys
import uuid

WAIT_S = 2.0
# One line of Prometheus' text format: a metric's name, its labels, a value.
SAMPLE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEINaf]+", re.MULTILINE)
TRIES = 2


def ng(host: str, port: int) -> str | None:
    cookie = uuid.uuid4().hex[:8]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT_S)
        for _ in range(TRIES):
            sock.sendto(f"{cookie} d7:command4:pinge".encode(), (host, port))
            try:
                answer = sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if answer.startswith(cookie):
                return answer
    return None


def redis(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=WAIT_S) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).decode(errors="replace").strip() or None
    except OSError:
        return None


def sip(host: str, port: int) -> str | None:
    call_id = uuid.uuid4().hex
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT_S)
        sock.connect((host, port))
        here, local_port = sock.getsockname()
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {here}:{local_port};branch=z9hG4bK{call_id[:16]};rport\r\n"
            f"From: <sip:cluster-probe@{here}:{local_port}>;tag={call_id[16:]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        for _ in range(TRIES):
            sock.send(request)
            try:
                while True:
                    answer = sock.recv(65535).decode(errors="replace")
                    if answer.startswith("SIP/2.0 ") and call_id in answer:
                        return answer.split("\r\n", 1)[0]
            except (TimeoutError, ConnectionRefusedError):
                continue
    return None


def metrics(host: str, port: int) -> str | None:
    """The status line of a scrape, when the answer holds Prometheus figures."""
    connection = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    # Kamailio's xhttp_prom writes samples without # TYPE lines: a sample is the proof.
    return f"{response.status} {response.reason}" if response.status == 200 and SAMPLE.search(body) else None


PROBES = {"ng": ng, "redis": redis, "sip": sip, "metrics": metrics}


def main(kind: str, target: str) -> int:
    host, _, port = target.rpartition(":")
    answer = PROBES[kind](host, int(port))
    if answer is None:
        print(f"no answer from {target}")
        return 1
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
