"""Bench KEMI script: the per-INVITE decision of kemi/vpbx_router.py, alone.

Rules of the road:
- Kamailio (app_python3) calls `mod_init()` once, in the main process before
  the workers fork, then `ksr_request_route` of the object it returns for
  every request. Returning 1 ends the request route.
- The decision is the real one: `vpbx.decide.Router.trunk_for($si)` then
  `Router.decide(origin, $rU, caller)` over the `routing.json` beside this
  script, loaded with `vpbx.routing_file.RoutingFile` and asked on every
  request whether the file was replaced, as the router does.
- The action is a stateless final reply whose code follows the action:
  TriggerCallback -> its reply_code, Reject -> its code, RouteScheme -> 480
  (a stand-in for relaying, which this bench leaves out).
- `pythonpath` beside this script lists directories added with
  `site.addsitedir` and moved to the front of sys.path, as the real router
  does, so the interpreter resolves packages as it does live.
- VPBX_BENCH_KEMI in the environment picks what runs (the bench's profile
  step uses the floor to split the cost):
    decision  (default) the real vpbx.decide.Router, as above
    floor     the same KSR reads and reply, no vpbx at all: app_python3's own cost
"""

import os
import site
import sys
import time
from pathlib import Path

import KSR

HERE = Path(__file__).resolve().parent
ROUTING_FILE = HERE / "routing.json"
PYTHONPATH_FILE = HERE / "pythonpath"

# What each action answers, statelessly.
RELAY_STAND_IN = (480, "Temporarily Unavailable")
TRIGGER_REASON = "Call Back Follows"
LOG_PREFIX = "vpbx-bench: "


def _use_runtime() -> None:
    """The same sys.path set-up as kemi/vpbx_router.py: the runtime first, so
    that a Debian package of the same name (python3-phonenumbers) does not win."""
    before = list(sys.path)
    for line in PYTHONPATH_FILE.read_text().split():
        site.addsitedir(line)
    sys.path[:] = [p for p in sys.path if p not in before] + before


def mod_init():
    _use_runtime()
    import netaddr
    import phonenumbers

    from vpbx import decide
    from vpbx.routing_file import RoutingFile

    mode = os.environ.get("VPBX_BENCH_KEMI", "decision")
    started = time.perf_counter()
    routing = RoutingFile(ROUTING_FILE)
    config = routing.load()
    router = decide.Router(config)
    seconds = time.perf_counter() - started
    listed = sum(len(v) for v in config.number_lists.values())
    # One line the bench reads back: what was loaded, how long it took, from where.
    KSR.err(f"{LOG_PREFIX}loaded mode={mode} listed={listed} seconds={seconds:.3f} "
            f"vpbx={decide.__file__} phonenumbers={phonenumbers.__version__}@{phonenumbers.__file__} "
            f"netaddr={netaddr.__version__}@{netaddr.__file__}\n")
    if mode == "floor":
        return FloorBench()
    return DecisionBench(decide, routing, router)


class DecisionBench:
    def __init__(self, decide, routing, router):
        self.decide = decide
        self.routing = routing
        self.router = router

    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        # As kemi/vpbx_router.py: a replaced routing.json applies with the next request.
        config = self.routing.replaced()
        if config is not None:
            self.router = self.decide.Router(config)
        # Only INVITEs are decided; ACKs to our replies are absorbed by sl before this.
        if not KSR.is_INVITE():
            if not KSR.is_ACK():
                KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        # Who is calling: a trunk by source address, or a stranger (no extensions here).
        trunk = self.router.trunk_for(KSR.pv.get("$si"))
        d = self.decide
        origin = d.FromTrunk(trunk) if trunk is not None else d.FromStranger()
        # The carrier asserts the caller in P-Asserted-Identity, or else in From.
        caller = KSR.pv.get("$fU")
        if trunk is not None and KSR.hdr.is_present("P-Asserted-Identity") > 0:
            caller = KSR.pv.get("$(ai{uri.user})") or caller
        # The decision, then a stateless reply standing for the action.
        action = self.router.decide(origin, KSR.pv.get("$rU"), caller)
        if isinstance(action, d.TriggerCallback):
            KSR.sl.sl_send_reply(action.reply_code, TRIGGER_REASON)
        elif isinstance(action, d.Reject):
            KSR.sl.sl_send_reply(action.code, action.reason)
        else:
            KSR.sl.sl_send_reply(*RELAY_STAND_IN)
        return 1


class FloorBench:
    """The same KSR calls as DecisionBench and a 480, without vpbx: what app_python3 itself costs."""

    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        if not KSR.is_INVITE():
            if not KSR.is_ACK():
                KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        KSR.pv.get("$si")
        caller = KSR.pv.get("$fU")
        if KSR.hdr.is_present("P-Asserted-Identity") > 0:
            caller = KSR.pv.get("$(ai{uri.user})") or caller
        KSR.pv.get("$rU")
        KSR.sl.sl_send_reply(*RELAY_STAND_IN)
        return 1
