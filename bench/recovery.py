"""A crash against the goal: how soon each service killed outright answers again (goal <= 5 s).

    .venv/bin/python bench/recovery.py [--rounds 10] [--services kamailio,rsyslog]

On the lab deploy as it is (nothing is deployed). For each service, `--rounds`
times: SIGKILL to the main process its service manager reports (systemd or
supervisord, as vpbx_testing.services asks), then the service is asked the way
its peers ask it, every `--poll` s, until it answers:

- kamailio: SIP OPTIONS to the edge;
- rtpengine-daemon: an ng ping;
- callbackd: OPTIONS from the edge's address, as the edge's dispatcher probes it;
- rsyslog: Kamailio's decision on a carrier INVITE (to a number that is no
  DID, refused 404) written to Kamailio's log file.

Printed per service: when the manager had a new process running, and when the
service answered again (median and worst of the rounds), against the goal.
Kill to answer includes the manager's own delay (systemd's RestartSec=1;
supervisord restarts at once) and the service's start. Calls in progress on
the killed service are lost: run it on the lab, not beside a call.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from lab import LAB, machine, say, wait_until_quiet
from vpbx_testing import health, services
from vpbx_testing.loopbacks import STRANGER_FROM, untrusted_loopbacks

from vpbx import model

GOAL_S = 5.0
# A kill that finds no answer within this long counts as never back.
GIVE_UP_S = 60.0
# Between rounds: the service has run past supervisord's startsecs (1 s), so
# the next kill is a crash of a running service, not a failed start.
SETTLE_S = 2.0
# On no list: the probe's From on the carrier's INVITEs.
PROBE_CALLER = "+421905999002"


@dataclass
class Rounds:
    name: str
    running: list[float] = field(default_factory=list)
    answering: list[float] = field(default_factory=list)
    never: int = 0


def probes(config: model.Config, inventory: dict, wait: float) -> dict[str, Callable[[], bool]]:
    """For each service, whether it answers now."""
    pbx = config.sip_listen
    stranger = untrusted_loopbacks(config, STRANGER_FROM, 1)[0]
    carrier = config.trunks[0].address.host
    ng = health.project_address("rtpengine_ng_listen")
    engine = health.project_address("callbackd_sip_listen")
    log = health.kamailio_log_file(inventory)
    number = health.not_a_did(config)
    sent: list[str] = []
    since = [0]

    def decision_written() -> bool:
        if not sent:
            since[0] = log.stat().st_size
        sent.append(health.send_decision_probe(pbx, carrier, number, PROBE_CALLER, wait=wait))
        if any(health.decision_logged(log, call_id, since[0]) for call_id in sent):
            sent.clear()
            return True
        return False

    return {
        services.KAMAILIO: lambda: health.kamailio_answers(pbx, stranger, wait=wait),
        services.RTPENGINE: lambda: health.rtpengine_answers(ng, wait=wait),
        services.CALLBACKD: lambda: health.callbackd_answers(engine, pbx, wait=wait),
        services.RSYSLOG: decision_written,
    }


def crash(name: str, answers: Callable[[], bool], poll: float) -> tuple[float | None, float | None]:
    """Kill `name` once; (s until a new main process, s until it answers), None for never."""
    killed = services.main_pid(name)
    if killed is None:
        sys.exit(f"{name} does not run: deploy the lab first")
    started = time.monotonic()
    os.kill(killed, signal.SIGKILL)
    running = answering = None
    while (elapsed := time.monotonic() - started) < GIVE_UP_S:
        if running is None:
            pid = services.main_pid(name)
            if pid is not None and pid != killed:
                running = elapsed
        # A process of the killed instance may still answer: only the new one counts.
        if running is not None and answers():
            answering = time.monotonic() - started
            break
        time.sleep(poll)
    return running, answering


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="kills per service")
    parser.add_argument("--services", default=",".join([services.KAMAILIO, services.RTPENGINE,
                                                         services.CALLBACKD, services.RSYSLOG]),
                        help="comma-separated service names")
    parser.add_argument("--poll", type=float, default=0.05, help="s between two questions")
    args = parser.parse_args()
    wait_until_quiet()
    inventory = yaml.safe_load((LAB / "group_vars" / "all.yml").read_text())
    config = model.load({k: v for k, v in inventory.items() if k in model.CONTRACT_KEYS})
    asks = probes(config, inventory, wait=args.poll)
    names = args.services.split(",")
    unknown = [n for n in names if n not in asks]
    if unknown:
        sys.exit(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(asks)}")
    for key, value in machine().items():
        say(f"{key}: {value}")
    say(f"service manager: {services.manager()}; {args.rounds} kills per service, "
        f"asked every {args.poll * 1000:.0f} ms (each question waits as long)")
    results = []
    for name in names:
        rounds = Rounds(name)
        deadline = time.monotonic() + SETTLE_S * 5
        while not asks[name]():
            if time.monotonic() > deadline:
                sys.exit(f"{name} does not answer before any kill: deploy the lab first")
            time.sleep(args.poll)
        for n in range(1, args.rounds + 1):
            running, answering = crash(name, asks[name], args.poll)
            if answering is None:
                rounds.never += 1
                say(f"{name} #{n}: no answer within {GIVE_UP_S:.0f} s")
            else:
                rounds.running.append(running)
                rounds.answering.append(answering)
                say(f"{name} #{n}: running again after {running:.2f} s, answering after {answering:.2f} s")
            time.sleep(SETTLE_S)
        results.append(rounds)

    say()
    say("| service | kills | new process (median / worst) | answering (median / worst) "
        f"| goal <= {GOAL_S:.0f} s |")
    say("|---|---|---|---|---|")
    missed = False
    for r in results:
        if r.answering:
            worst = max(r.answering)
            met = r.never == 0 and worst <= GOAL_S
            missed |= not met
            say(f"| {r.name} | {len(r.answering) + r.never} "
                f"| {statistics.median(r.running):.2f} s / {max(r.running):.2f} s "
                f"| {statistics.median(r.answering):.2f} s / {worst:.2f} s "
                f"| {'met' if met else 'MISSED'}{f' ({r.never} never back)' if r.never else ''} |")
        else:
            missed = True
            say(f"| {r.name} | {r.never} | — | never back | MISSED |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
