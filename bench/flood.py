"""An INVITE flood against the edge: how soon the flooder is banned, and what the carrier's calls feel.

    .venv/bin/python bench/flood.py [--rate 2000] [--calls-per-second 10] [--seconds 10]

On the lab deploy as it is (nothing is deployed): the carrier (SIPp at the
trunk's address) places forwarded calls at a steady rate to the far end (SIPp
at the trunk), first alone (the baseline), then again while one untrusted
address sends INVITEs to a DID at `--rate` per second. Printed: the calls
that succeeded in both runs, when the flooder got its last answer after the
flood began (the ban delay; goal <= 2 s), and how many of its INVITEs were
answered at all. The ban is lifted at the end, as an admin would
(`kamcmd htable.delete vpbx_ban <ip>`).
"""

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from lab import LAB, say, wait_until_quiet
from vpbx_testing.peers import callee_keys, caller_keys
from vpbx_testing.raw_sip import RawSip
from vpbx_testing.sipp import SippRunner

from vpbx import model, wire

FLOODER = "127.0.0.222"
GOAL_BAN_S = 2.0
HOLD_MS = 500
KAMAILIO_CTL = "unix:/run/kamailio/kamailio_ctl"
SUCCESS = re.compile(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)")
FAILED = re.compile(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)")


class Flooder(threading.Thread):
    """INVITEs from one address at `rate`/s until stopped; notes when answers arrive."""

    def __init__(self, pbx: model.HostPort, did: str, rate: int):
        super().__init__(daemon=True)
        self.pbx, self.did, self.rate = pbx, did, rate
        self.sent = 0
        self.answered = 0
        self.started_at = 0.0
        self.last_answer_at: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        with RawSip(FLOODER, self.pbx) as sip:
            sip.sock.setblocking(False)
            self.started_at = time.monotonic()
            while not self._halt.is_set():
                elapsed = time.monotonic() - self.started_at
                while self.sent < elapsed * self.rate:
                    sip.send(sip.request("INVITE", f"sip:{self.did}@{self.pbx}"))
                    self.sent += 1
                try:
                    while True:
                        sip.sock.recv(65535)
                        self.answered += 1
                        self.last_answer_at = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.0005)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def carrier_calls(runner: SippRunner, config: model.Config, did: model.Did, caller: str,
                  forward: str, rate: int, seconds: int) -> tuple[int, int]:
    """Forwarded calls at `rate`/s for `seconds`; (succeeded, failed) as the carrier's SIPp counts them."""
    trunk = config.trunks[0]
    calls = rate * seconds
    budget = seconds + 60
    far_end = runner.start_uas("callee.xml", trunk.address.host, trunk.address.port,
                               {**callee_keys("answer", user=forward), "ring_ms": 0},
                               calls=calls, timeout=budget)
    keys = {**caller_keys(did.number, caller), "hold_ms": HOLD_MS}
    carrier = runner.run_uac("carrier_call.xml", trunk.address.host, str(config.sip_listen), keys,
                             calls=calls, timeout=budget, extra=["-r", str(rate)], check=False)
    far_end.wait(budget + 10)
    screen = carrier.screen_log.read_text(errors="replace")
    ok, failed = SUCCESS.findall(screen), FAILED.findall(screen)
    return (int(ok[-1]) if ok else 0), (int(failed[-1]) if failed else calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000, help="flood INVITEs per second")
    parser.add_argument("--calls-per-second", type=int, default=10, help="the carrier's calls per second")
    parser.add_argument("--seconds", type=int, default=10, help="how long each run lasts")
    args = parser.parse_args()
    wait_until_quiet()
    variables = yaml.safe_load((LAB / "group_vars" / "all.yml").read_text())
    config = model.load({k: v for k, v in variables.items() if k in model.CONTRACT_KEYS})
    did = next(d for d in config.numbers.values() if d.callback and d.callback.enabled)
    scheme = config.routing_schemes[did.routing]
    forward = next(s.number for s in scheme if isinstance(s, model.ForwardStep))
    caller = "+421905999001"  # on no list: routed by the scheme, forwarded through the trunk
    work = Path(tempfile.mkdtemp(prefix="vpbx-bench-flood-"))
    runner = SippRunner(work / "sipp", timeout=args.seconds + 60)
    say(f"$ carrier: sipp -sf carrier_call.xml -r {args.calls_per_second} "
        f"-m {args.calls_per_second * args.seconds} (forwarded, {HOLD_MS} ms each)")
    try:
        base_ok, base_failed = carrier_calls(runner, config, did, caller, forward,
                                             args.calls_per_second, args.seconds)
        say(f"baseline, no flood: {base_ok} calls succeeded, {base_failed} failed")
        time.sleep(2)
        flooder = Flooder(config.sip_listen, did.number, args.rate)
        say(f"$ flood: INVITE from {FLOODER} at {args.rate}/s during the same carrier load")
        flooder.start()
        try:
            ok, failed = carrier_calls(runner, config, did, caller, forward,
                                       args.calls_per_second, args.seconds)
        finally:
            flooder.stop()
    finally:
        runner.close()
        subprocess.run(["kamcmd", "-s", KAMAILIO_CTL, "htable.delete", wire.BAN_TABLE, FLOODER],
                       capture_output=True, check=False)
    duration = time.monotonic() - flooder.started_at
    ban = (flooder.last_answer_at - flooder.started_at) if flooder.last_answer_at else 0.0
    say(f"under the flood:    {ok} calls succeeded, {failed} failed "
        f"(baseline {base_ok}/{base_ok + base_failed})")
    say(f"flooder: {flooder.sent} INVITEs in {duration:.1f} s ({flooder.sent / duration:.0f}/s), "
        f"{flooder.answered} answered, last answer {ban:.2f} s after the flood began "
        f"(goal <= {GOAL_BAN_S:.0f} s: {'met' if ban <= GOAL_BAN_S else 'MISSED'})")
    say(f"the ban in the log: grep 'ban: {FLOODER}' /var/log/vpbx/kamailio.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
