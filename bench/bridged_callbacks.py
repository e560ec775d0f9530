"""Concurrent bridged callbacks: how many complete callbacks, RTP both ways, the deploy holds.

    .venv/bin/python bench/bridged_callbacks.py [--steps 100,200,300,400] [--steady 20] [--keep-deploy]

Deploys a copy of the lab inventory whose callback list holds one employee per
callback (recording off). Each step starts N complete callbacks, RATE
triggers a second, on the deployed Kamailio, callbackd and RTPengine: SIPp
plays the carrier (triggers) and, at the trunk, both mobiles of every
callback (one far end). The employee answers, types the client's number as
RFC 4733 events and then sends a tone; the client answers and sends another:
G.711 A-law, 20 ms packets, both ways through RTPengine. Every client hangs up
after the same hold, so all N are bridged at once for a steady window.

Measured in that window (the window is read off the CDRs: from the last
client answer to the first end):
* loss: RTP packets arriving at an RTPengine port (from one mobile) against
  packets leaving the paired port (towards the other mobile), counted on a
  loopback capture; pairs are read from RTPengine itself (ng `query`);
* failed calls: SIPp failures, CDRs that are not `bridged` for the whole hold;
* CPU (share of one core) and memory (PSS) of each service, and of the load
  generators, which share the two cores (SIPp at nice 10: the services get
  the CPU first, and a generator that falls behind shows in packets/s).

A step passes with every callback bridged, no SIPp failure, loss <= 1 % and
the RTP going in at >= 95 % of its nominal rate.
After the first failing step the ramp tries once halfway back (in steps of 25), then stops.
Finally the lab is deployed again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from lab import (
    LAB,
    REPO,
    SERVICES,
    UsageMeter,
    bench_inventory,
    callback_list,
    callbackd_settings,
    deploy,
    machine,
    numbered,
    say,
    wait_until_quiet,
)
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap
from vpbx_testing.sipp import SippRunner

from callbackd.recording import parse_rtp, udp_datagrams
from callbackd.rtpengine import NgClient
from vpbx import model

TRIGGER = REPO / "bench" / "callback" / "trigger.xml"
RTPENGINE_CONFIG = Path("/etc/rtpengine/rtpengine.conf")
EMPLOYEE_PREFIX = "+4219052"  # employees +4219052NNNNN; the client is elsewhere
CLIENT_TYPED = "0907123456"
CLIENT_E164 = "+421907123456"
EMPLOYEE_SSRC, CLIENT_SSRC = 0xE0E0E0E0, 0xC1C1C1C1
RATE = 25  # triggers per second
# Trigger -> bridged: callback.delay, answer, the digits (0.5 s lead + 11 x 0.24 s), the client's ring.
SETUP_S = 5.0
MARGIN_S = 3.0
GOAL = 300
LOSS_LIMIT = 0.01
DEFAULT_STEPS = (100, 200, 300, 400, 500)
REFINE_GRAIN = 25
PACKET_S = 0.020
# The load generators yield the CPU to the services: SIPp starts a thread per
# RTP stream, and on two shared cores hundreds of them would starve the PBX.
# Where SIPp then falls behind, its packets/s into RTPengine show it.
GENERATOR_NICE = 10
KEEP_UP = 0.95  # packets/s into RTPengine against 2 streams x 50/s per callback
CAPTURE_BUFFER_MIB = 512
CAPTURE_SNAPLEN = 64  # Ethernet + IPv4 + UDP + the RTP header


def rtpengine_ports() -> tuple[int, int]:
    values = {}
    for line in RTPENGINE_CONFIG.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return int(values.get("port-min", 30000)), int(values.get("port-max", 40000))


class RtpCapture:
    """dumpcap on loopback, headers only: tshark's own pass over each packet costs a core at this rate."""

    def __init__(self, path: Path, bpf: str):
        self.path, self.bpf = path, bpf
        self.log = path.with_suffix(".dumpcap.log")
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> RtpCapture:
        argv = ["dumpcap", "-i", "lo", "-f", self.bpf, "-s", str(CAPTURE_SNAPLEN),
                "-B", str(CAPTURE_BUFFER_MIB), "-P", "-w", str(self.path)]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while b"Capturing on" not in self.log.read_bytes():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dumpcap did not start: {self.log.read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self._process.send_signal(signal.SIGINT)
        self._process.wait(30)

    def dropped(self) -> str:
        """dumpcap's own count of packets it could not keep (its last line)."""
        lines = [x for x in self.log.read_text().splitlines() if "dropped" in x]
        return lines[-1].strip() if lines else "unknown"


def rtpengine_pairs(ng: NgClient) -> dict[int, int]:
    """Each callback's RTPengine port facing one mobile -> the port facing the other, both ways."""
    pairs: dict[int, int] = {}
    for call_id in ng.request("list", limit=100000).get("calls", []):
        try:
            tags = ng.request("query", **{"call-id": call_id}).get("tags", {})
        except Exception:  # deleted in between
            continue
        ports = []
        for tag in tags.values():
            for media in tag.get("medias", []):
                ports += [s["local port"] for s in media.get("streams", []) if "RTP" in s.get("flags", [])]
        if len(ports) == 2:
            pairs[ports[0]], pairs[ports[1]] = ports[1], ports[0]
    return pairs


def new_cdrs(path: Path, offset: int) -> list[dict]:
    with path.open("rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


@dataclass
class Loss:
    sent: int = 0       # into RTPengine, in the window, on a paired port that carried media
    forwarded: int = 0  # out of the paired port, in the window shifted by the forwarding delay
    streams: int = 0
    silent: int = 0     # a stream into RTPengine with nothing coming out of its pair
    worst: float = 0.0  # the worst stream's loss

    @property
    def ratio(self) -> float:
        return 1 - self.forwarded / self.sent if self.sent else 1.0


def rtp_loss(capture: Path, pairs: dict[int, int], start: float, end: float) -> tuple[Loss, float]:
    """Loss through RTPengine in [start, end]; and the packets per second that went in."""
    into: Counter[int] = Counter()
    out_of: Counter[int] = Counter()
    for d in udp_datagrams(capture):
        if not start <= d.time <= end or parse_rtp(d.payload) is None:
            continue
        if d.dst[1] in pairs and d.dst[0] == "127.0.0.1":
            into[d.dst[1]] += 1
        elif d.src[1] in pairs and d.src[0] == "127.0.0.1":
            out_of[d.src[1]] += 1
    loss = Loss()
    for port, count in into.items():
        forwarded = min(out_of[pairs[port]], count)
        loss.sent += count
        loss.forwarded += forwarded
        loss.streams += 1
        loss.silent += forwarded == 0
        loss.worst = max(loss.worst, 1 - forwarded / count)
    return loss, loss.sent / max(end - start, 1e-6)


@dataclass
class Step:
    calls: int
    held: int
    results: Counter
    sipp_failed: list[str]
    loss: Loss
    pps_in: float
    window_s: float
    usage: dict
    capture_drops: str
    sipp_overloaded: int  # SIPp's own warnings that it fell behind its schedule

    @property
    def load_reached(self) -> float:
        """Packets/s into RTPengine against the nominal 50/s of each of the 2 x N streams."""
        return self.pps_in * PACKET_S / (2 * self.calls)

    @property
    def passed(self) -> bool:
        return (self.held == self.calls and not self.sipp_failed and self.loss.streams == 2 * self.calls
                and self.loss.ratio <= LOSS_LIMIT and self.load_reached >= KEEP_UP)


def run_step(calls: int, steady_s: float, config: model.Config, did: model.Did, work: Path) -> Step:
    ramp_s = calls / RATE
    hold_s = ramp_s + steady_s + 2 * MARGIN_S
    budget = SETUP_S + ramp_s + hold_s + 60
    runner = SippRunner(work / f"sipp-{calls}", timeout=budget)
    trunk = config.trunks[0]
    keys = {
        "employee": EMPLOYEE_PREFIX, "did": did.number, "employee_mode": "answer",
        "employee_pcap": dtmf_then_tone_pcap(work / "employee.pcap", CLIENT_TYPED + "#", EMPLOYEE_SSRC, 440,
                                             SETUP_S + hold_s + 10),
        "employee_info": "-", "info_type": "dtmf-relay", "employee_hangup": "remote",
        "client": CLIENT_E164, "client_mode": "answer",
        "client_pcap": tone_pcap(work / "client.pcap", CLIENT_SSRC, 660, hold_s + 5),
        "client_hangup": f"local:{round(hold_s * 1000)}", "ring_ms": 100,
    }
    csv = work / f"triggers-{calls}.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{e};{did.number}\n" for e in numbered(EMPLOYEE_PREFIX, calls)))
    settings = callbackd_settings()
    cdr_path = settings.cdr_file
    cdr_offset = cdr_path.stat().st_size if cdr_path.exists() else 0
    low, high = rtpengine_ports()
    capture = work / f"rtp-{calls}.pcap"
    meter = UsageMeter({**SERVICES, "sipp (load)": ["-x", "sipp"], "dumpcap (capture)": ["-x", "dumpcap"]})
    failed: list[str] = []
    overloaded = 0
    with RtpCapture(capture, f"udp and portrange {low}-{high}") as cap, NgClient(settings.rtpengine_ng) as ng:
        try:
            far_end = runner.start_uas("far_end.xml", trunk.address.host, trunk.address.port, keys,
                                       calls=2 * calls, timeout=budget)
            os.setpriority(os.PRIO_PROCESS, far_end.pid, GENERATOR_NICE)
            argv = ["-inf", str(csv), "-r", str(RATE)]
            say(f"  $ sipp -sf {TRIGGER.relative_to(REPO)} -m {calls} {shlex.join(argv)} "
                f"-i {trunk.address.host} {config.sip_listen}   (+ far_end.xml at {trunk.address}, "
                f"client hold {hold_s:.0f} s)")
            carrier = runner.start_uac(TRIGGER, trunk.address.host, str(config.sip_listen), {},
                                       calls=calls, timeout=budget, extra=argv)
            os.setpriority(os.PRIO_PROCESS, carrier.pid, GENERATOR_NICE)
            started = time.monotonic()
            # All bridged from ~SETUP_S + ramp_s to ~SETUP_S + hold_s: measure usage inside it.
            time.sleep(SETUP_S + ramp_s + MARGIN_S)
            meter.start()
            time.sleep(max(1.0, steady_s / 2))
            pairs = rtpengine_pairs(ng)
            time.sleep(max(0.0, started + SETUP_S + hold_s - MARGIN_S - time.monotonic()))
            usage = meter.stop()
            for name, sipp in (("carrier", carrier), ("far end", far_end)):
                code = sipp.wait()
                if code != 0:
                    failed.append(f"{name}: exit {code} (logs {runner.log_dir})")
                if sipp.error_log.exists():  # SIPp writes it at the first error only
                    overloaded += sipp.error_log.read_text(errors="replace").count("Overload warning")
        finally:
            runner.close()
    cdrs = wait_for_cdrs(cdr_path, cdr_offset, calls)
    results = Counter(c["result"] for c in cdrs)
    answers = [epoch(c["client_answer_at"]) for c in cdrs if c["client_answer_at"]]
    ends = [epoch(c["end_at"]) for c in cdrs if c["result"] == "bridged"]
    start, end = (max(answers) + 0.5, min(ends) - 0.5) if answers and ends else (0.0, 0.0)
    held = sum(1 for c in cdrs if c["result"] == "bridged" and c["bridged_seconds"] >= hold_s - 1)
    loss, pps = rtp_loss(capture, pairs, start, end) if end > start else (Loss(), 0.0)
    capture.unlink()
    return Step(calls, held, results, failed, loss, pps, end - start, usage, cap.dropped(), overloaded)


def wait_for_cdrs(path: Path, offset: int, count: int, limit_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + limit_s
    while True:
        cdrs = new_cdrs(path, offset)
        if len(cdrs) >= count or time.monotonic() > deadline:
            return cdrs
        time.sleep(0.5)


def report(step: Step) -> None:
    verdict = "passes" if step.passed else "FAILS"
    loss = step.loss
    say(f"  {step.calls} callbacks: {step.held} bridged for the whole hold; results {dict(step.results)}; "
        f"SIPp failures: {step.sipp_failed or 'none'}")
    say(f"  steady window {step.window_s:.1f} s: {loss.streams} RTP streams into RTPengine "
        f"({step.pps_in:,.0f} packets/s, {step.load_reached:.0%} of nominal), {loss.sent:,} in, "
        f"{loss.forwarded:,} forwarded: "
        f"loss {loss.ratio:.3%} (worst stream {loss.worst:.2%}, {loss.silent} with nothing forwarded)")
    say(f"  capture: {step.capture_drops}")
    if step.sipp_overloaded:
        say(f"  SIPp fell behind its schedule {step.sipp_overloaded} times (its 'Overload warning': "
            f"the load generator, not the PBX, ran out of CPU)")
    for name, u in step.usage.items():
        say(f"  {name:18} CPU {u.cpu:6.1%} of a core   PSS {u.pss_kb / 1024:7.1f} MiB   "
            f"RSS {u.rss_kb / 1024:7.1f} MiB   ({u.processes} processes)")
    say(f"  -> {verdict} (every callback bridged, no SIPp failure, loss <= {LOSS_LIMIT:.0%}, "
        f"RTP in at >= {KEEP_UP:.0%} of nominal)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)))
    parser.add_argument("--steady", type=float, default=20.0, help="seconds all callbacks are bridged")
    parser.add_argument("--keep-deploy", action="store_true", help="do not deploy the lab again")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: SIPp sends RTP on a raw socket and dumpcap captures loopback")
    steps = [int(n) for n in args.steps.split(",")]
    wait_until_quiet()
    say("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items()))
    work = Path(tempfile.mkdtemp(prefix="vpbx-bench-bridged-"))
    inventory = bench_inventory(work, callback_list(numbered(EMPLOYEE_PREFIX, max(steps))))
    config = model.load(yaml.safe_load((inventory / "group_vars" / "all.yml").read_text()))
    did = next(d for d in config.numbers.values() if d.callback and d.callback.enabled)
    deploy(inventory)
    best = 0
    try:
        pending = list(steps)
        while pending:
            calls = pending.pop(0)
            say(f"\n{calls} concurrent bridged callbacks (triggers at {RATE}/s):")
            step = run_step(calls, args.steady, config, did, work)
            report(step)
            if step.passed:
                best = calls
            elif best and calls - best > 2 * REFINE_GRAIN and calls in steps:
                # Once between the last step held and the first that was not.
                pending = [best + (calls - best) // 2 // REFINE_GRAIN * REFINE_GRAIN]
            else:
                pending = []
            time.sleep(5)
    finally:
        if not args.keep_deploy:
            deploy(LAB)
    verdict = "meets" if best >= GOAL else "MISSES"
    say(f"\nMost held with <= {LOSS_LIMIT:.0%} loss and no failed call: {best or 'none of the steps'} "
        f"(goal >= {GOAL}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
