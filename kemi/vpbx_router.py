"""vPBX CallBack's SIP router: Kamailio KEMI script (app_python3).

Rules of the road:
- Kamailio calls `mod_init()` once, then the methods of the object it returns:
  `ksr_request_route` for every request, and the event handlers named in
  `t_on_failure` / `t_on_reply` / `t_on_branch` (constants below).
- Returning -255 from a route step means "stop": a reply was sent or the
  request was dropped. 1 means "go on".
- The decision (callback trigger, routing step, reject) is `vpbx.decide`, a
  pure function; this script only reads the message, asks it, and acts.
- Routing data is `routing.json` beside this script, rendered by Ansible from
  the inventory and replaced by rename. Each worker notices a new file on its
  next request and loads it itself: a changed list applies within one request
  in every worker, without a restart and without app_python's reload, which
  runs the workers' reloads one at a time and lets a worker that finds the
  reload lock taken decide with the old script meanwhile.
  `kamcmd app_python.reload` (re-runs `mod_init()`) is for new code, and for
  a new `edge.json` (the edge's own protections, rendered from role variables).
- Who may make the PBX dial (shared/DESIGN.md, "Trust"): a flooding or
  scanning source is banned and then dropped without a reply; in-dialog
  requests are relayed only for dialogs an edge of this PBX set up (its
  Record-Route signed with the edges' key, `RouteSigner`); contacts are
  bound to the address a phone registered from; our X-Vpbx-* headers and,
  from anyone but a trunk or an engine, asserted identities are removed
  before anything reads them.
- Memory: a new INVITE is refused statelessly with 503 (Retry-After) while
  Kamailio's free shared memory is under the reserve (`MemoryGuard`), so that
  the transactions already set up, their in-dialog requests and replies
  finish, and no call goes unanswered for want of memory.
- Registrations live in the location store (usrloc over db_redis, one Redis
  for every edge), not in this process: a binding made through another edge,
  or before a restart, is found here. When that store does not answer, a
  REGISTER is refused with 503 and the log says so; calls that need no
  registration go on.
"""

import hashlib
import hmac
import importlib
import json
import re
import secrets
import sys
import time
import types
from pathlib import Path

import KSR

HERE = Path(__file__).resolve().parent
ROUTING_FILE = HERE / "routing.json"
EDGE_FILE = HERE / "edge.json"
# The key every edge of the PBX signs its Record-Routes with (the role makes it once).
ROUTE_KEY_FILE = HERE / "route.key"
PYTHONPATH_FILE = HERE / "pythonpath"

STOP = -255
GO_ON = 1

# Names Kamailio calls back by; each is a method of VpbxRouter.
FAILURE_ROUTE = "ksr_failure_manage"
ONREPLY_ROUTE = "ksr_onreply_manage"
BRANCH_ROUTE = "ksr_branch_manage"
TRIGGER_BRANCH_ROUTE = "ksr_branch_trigger"

# What rtpengine does to every SDP it sees: media anchored on the relay.
RTPENGINE_FLAGS = "replace-origin replace-session-connection ICE=remove"

# Transaction AVPs that carry the routing scheme across failure routes.
AVP_DID = "$avp(vpbx_did)"
AVP_STEP = "$avp(vpbx_step)"
AVP_TRIGGER = "$avp(vpbx_trigger)"
AVP_CALLER = "$avp(vpbx_caller)"
# Set while a scheme's forward step relays: the one branch meant for a trunk.
AVP_OUT = "$avp(vpbx_out)"
# The moment the INVITE came (epoch seconds): the whole walk reads `when:` at it.
AVP_TIME = "$avp(vpbx_time)"

# Callback engines: dispatcher set wire.ENGINE_SET, probed with OPTIONS. The
# engine marks a trigger it took with wire.ACCEPT_HEADER; anything else
# (timeout, 5xx) means the caller is routed by the DID's scheme instead.
# Hash over dispatcher's hash_pvar (kamailio.cfg), which is AVP_CALLER:
# the employee's number. Each employee's triggers reach one engine while it is
# up; when it is down, the next one (ds_next_dst in the failure route).
ENGINE_ALGORITHM = 7
ENGINE_TIMEOUT_MS = 2000
# Record-Route parameter of dialogs an engine placed: their media is the engine's.
ENGINE_DIALOG = "vpbx=engine"
# Record-Route parameters of every dialog the edge relays: until when its
# in-dialog requests are relayed, and the edges' signature over it (RouteSigner).
ROUTE_EXPIRES = "vpbx_exp"
ROUTE_SIGNATURE = "vpbx_sig"
# pv_auth_check results that are no failed attempt (stale nonce, no
# credentials, a nonce count replayed): a fresh challenge, not counted.
AUTH_RECHALLENGE = (-4, -5, -6)
# auth_challenge flags: offer qop=auth (the nonce count is then checked).
CHALLENGE_QOP = 1
# Our own headers: whatever arrives under these names was forged.
OWN_HEADERS_RE = "^[Xx]-[Vv][Pp][Bb][Xx]-"
# Identities only a trunk (the carrier) or an engine (the DID it presents) asserts.
ASSERTED_IDENTITY_HEADERS = ("P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID")
LOCATION = "location"
# registrar save() flag: send no reply; the router answers (503 when the store is down).
SAVE_NO_REPLY = 2
# Defined (kamailio -A) when Kamailio was started while the location store did
# not answer: usrloc runs without it (kamailio.cfg) and REGISTERs get 503.
STORE_DOWN_DEFINE = "VPBX_LOCATION_STORE_DOWN"
# ndb_redis server (kamailio.cfg) that reaches the location store, and its reply's name.
LOCATION_STORE = "vpbx_location"
LOCATION_PING = "vpbx_location_ping"
# reg_fetch_contacts profile: an extension's bindings, read to see where it registered from.
BINDINGS = "vpbx_bindings"
# What an unknown extension's credentials are checked against: a secret of
# this process, so no digest matches it.
NO_PASSWORD = secrets.token_hex(32)
LOG_PREFIX = "vpbx: "
# Free shared memory as the kex module counts it: each process reads the
# allocator's figures (under its lock) at most once per timer tick (1/16 s)
# and answers from that copy otherwise, so one read per new INVITE costs a
# name lookup, not a walk of the allocator.
SHM_FREE = "$stat(free_size)"
SHM_TOTAL = "$stat(total_size)"
# Seconds between two log lines of one worker about INVITEs refused for memory.
MEMORY_LOG_INTERVAL = 10
# The SIP proxies' replication (dmq): its request method.
DMQ_METHOD = "KDMQ"
# Kamailio's figures for Prometheus (xhttp_prom, kamailio.cfg): xhttp's
# event_callback, and the one socket that serves them (and takes no SIP).
XHTTP_EVENT = "ksr_xhttp_event"
METRICS_SOCKET = "vpbx_metrics"
# The router's own counters (declared in kamailio.cfg): decisions by action, bans by reason.
DECISIONS_METRIC = "vpbx_decisions_total"
BANS_METRIC = "vpbx_bans_total"
STATE_MODULE = "vpbx_router_state"


def _use_runtime() -> None:
    """The runtime virtualenv's site-packages (the project's wheel and the
    dependencies it pins), named in `pythonpath`, first on sys.path: this
    interpreter is Debian's, and a Debian package of the same name must not win."""
    for path in reversed(PYTHONPATH_FILE.read_text().split()):
        if path not in sys.path:
            sys.path.insert(0, path)


def _fresh_vpbx():
    """The vpbx package executed anew: a reload re-runs this script only, and
    new routing code must not meet old modules cached by the worker."""
    for name in [n for n in sys.modules if n == "vpbx" or n.startswith("vpbx.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    return (importlib.import_module("vpbx.decide"), importlib.import_module("vpbx.model"),
            importlib.import_module("vpbx.routing_file"))


def timed(load, decide):
    """A decide.Router over what `load()` returns, with a log line saying how long it took."""
    started = time.monotonic()
    routing = load()
    if routing is None:
        return None
    router = decide.Router(routing)
    KSR.info(f"{LOG_PREFIX}routing loaded in {(time.monotonic() - started) * 1000:.0f} ms: "
             f"{len(routing.numbers)} DIDs, {sum(len(v) for v in routing.number_lists.values())} "
             f"listed numbers\n")
    return router


def mod_init():
    # What survives a reload of this script: the last router that loaded.
    state = sys.modules.setdefault(STATE_MODULE, types.ModuleType(STATE_MODULE))
    try:
        _use_runtime()
        decide, model, vpbx_routing_file = _fresh_vpbx()
        routing_file = vpbx_routing_file.RoutingFile(ROUTING_FILE)
        edge = EdgeSettings.load(EDGE_FILE)
        signer = RouteSigner(ROUTE_KEY_FILE.read_text().strip(), edge.dialog_lifetime)
        state.router = VpbxRouter(decide, model, routing_file, timed(routing_file.load, decide), edge, signer)
    except Exception as exc:
        # A router that cannot load must not take Kamailio down with it.
        previous = getattr(state, "router", None)
        KSR.err(f"{LOG_PREFIX}routing NOT loaded ({type(exc).__name__}: {exc}); "
                f"{'keeping the previous routing' if previous else 'answering 503'}\n")
        return previous or Unavailable()
    return state.router


class EdgeSettings:
    """The edge's protections from edge.json: who is never banned, what bans."""

    def __init__(self, trusted_sources=(), engines=(), auth_failures=5, scanner_user_agents=(),
                 location_store="", location_retry_after=30, dialog_lifetime=43200,
                 dmq_socket="", dmq_peers=(), shm_reserve_percent=0, overload_retry_after=5):
        import netaddr  # from the runtime virtualenv, on sys.path only after _use_runtime()

        self.trusted = netaddr.IPSet(trusted_sources)
        # Empty: registrations in Kamailio's memory, no store to ask.
        self.location_store = location_store
        self.location_retry_after = int(location_retry_after)
        self.engine_hosts = frozenset(e.rpartition(":")[0].strip("[]") for e in engines)
        self.auth_failures = int(auth_failures)
        self.dialog_lifetime = int(dialog_lifetime)
        # The replication socket's name (kamailio.cfg) and the SIP proxies it takes KDMQ from.
        self.dmq_socket = dmq_socket
        self.dmq_peers = frozenset(p.rpartition(":")[0].strip("[]") for p in dmq_peers)
        # Share of shared memory kept for what is under way: below it, new INVITEs get 503.
        self.shm_reserve_percent = int(shm_reserve_percent)
        self.overload_retry_after = int(overload_retry_after)
        self.scanner = (re.compile("|".join(f"(?:{p})" for p in scanner_user_agents), re.IGNORECASE)
                        if scanner_user_agents else None)

    @classmethod
    def load(cls, path):
        return cls(**json.loads(Path(path).read_text()))


class RouteSigner:
    """Signs the Record-Route of every dialog the edge relays, and checks the Route of its
    in-dialog requests.

    Why a signature, not the dialog module's memory (is_known_dlg): a dialog
    known only to the process that set it up dies with that process (a
    deploy, a crash that supervisord repairs within a second), and no other
    edge ever knows it; every call in progress then gets 481 for its BYE and
    stays up, billed, on the other side. Keeping dialogs in Redis (dialog's
    db_mode) would make them need the store, which may be down, and an
    edge would still have to load each one it did not set up; DMQ
    replication restores nothing on a lone edge. The route set itself is
    what outlives everything: a real dialog carries it in every in-dialog
    request, and only the edges, which share the key, can sign it. So the
    Record-Route carries an expiry and an HMAC (SHA-256, kept to 128 bits)
    of the Call-ID, the caller's From tag (rr's ftag), the expiry and
    whether an engine placed the call, under a key shared by every edge
    (route.key, made once by the role, never in the repository or a log).
    A stranger, who has no signature for his Call-ID, gets 481 and reaches
    nobody; any edge, restarted or not, relays the requests of a real
    dialog until its expiry (kamailio_dialog_timeout, as the dialog
    module's timeout did).
    """

    def __init__(self, key: str, lifetime: int):
        if len(key) < 32:
            raise ValueError(f"{ROUTE_KEY_FILE}: the route key is missing or too short")
        self.key = key.encode()
        self.lifetime = lifetime

    def signature(self, call_id: str, from_tag: str, expires: int, engine: bool) -> str:
        text = f"{call_id}\n{from_tag}\n{expires}\n{'engine' if engine else 'edge'}"
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def params(self, call_id: str, from_tag: str, engine: bool, now: float) -> str:
        """The Record-Route parameters of a new dialog."""
        expires = int(now) + self.lifetime
        signature = self.signature(call_id, from_tag, expires, engine)
        signed = f";{ROUTE_EXPIRES}={expires};{ROUTE_SIGNATURE}={signature}"
        return f";{ENGINE_DIALOG}{signed}" if engine else signed

    def verify(self, call_id: str, tags: tuple, route_uri: str, now: float) -> bool:
        """Whether `route_uri` (the edge's own Route entry) was signed by an edge for this dialog
        (`tags`: the request's From and To tags, either of which is the caller's) and has not expired."""
        params = route_params(route_uri)
        try:
            expires = int(params.get(ROUTE_EXPIRES, ""))
        except ValueError:
            return False
        from_tag = params.get("ftag", "")
        if not from_tag or from_tag not in tags or expires < now:
            return False
        engine = params.get("vpbx") == "engine"
        return hmac.compare_digest(self.signature(call_id, from_tag, expires, engine),
                                   params.get(ROUTE_SIGNATURE, ""))


class MemoryGuard:
    """Refuses a new INVITE with 503 while free shared memory is under the reserve.

    tm keeps every transaction in shared memory; once it runs out, new_t()
    fails and the INVITE gets no answer at all, and replies and BYEs of
    calls in progress fail as well. Refusing new INVITEs statelessly (sl, no
    shared memory) while `reserve_percent` of it is still free keeps that
    share for what is under way, and tells the carrier to come back
    (Retry-After) instead of leaving it to time out. One log line per worker
    and interval says how many were refused, not one per INVITE.
    """

    def __init__(self, reserve_percent: int, retry_after: int, limiter):
        self.reserve_percent = reserve_percent
        self.retry_after = retry_after
        self.limiter = limiter
        # Bytes; read from the running Kamailio on the first INVITE (its -m may not be the role's).
        self.reserve = None if reserve_percent > 0 else 0

    def refused(self) -> bool:
        """Whether this INVITE was answered 503 for want of memory."""
        if self.reserve is None:
            self.reserve = _unsigned(KSR.pv.get(SHM_TOTAL) or 0) * self.reserve_percent // 100
        free = KSR.pv.get(SHM_FREE)
        if free is None or _unsigned(free) >= self.reserve:
            return False
        self.refuse(f"shared memory low ({_unsigned(free) >> 20} MB free, reserve {self.reserve >> 20} MB)")
        return True

    def new_transaction(self) -> bool:
        """tm's transaction for this INVITE (False: none, the caller stops). The statistic the
        guard reads is a few milliseconds old: should tm find no memory after all, a 503 still
        answers the INVITE."""
        created = KSR.tm.t_newtran()
        if created < 0:
            self.refuse("shared memory exhausted (tm found none for a transaction)")
        return created > 0

    def refuse(self, why: str) -> None:
        KSR.hdr.append_to_reply(f"Retry-After: {self.retry_after}\r\n")
        KSR.sl.sl_send_reply(503, "Server Overloaded")
        left_out = self.limiter.allow()
        if left_out is not None:
            KSR.err(f"{LOG_PREFIX}{why}: new INVITEs refused with 503, Retry-After {self.retry_after} "
                    f"({left_out} more refused since this worker's last line)\n")


def _unsigned(value: int) -> int:
    """A statistic as Kamailio counts it: $stat is an unsigned 32-bit figure that KEMI hands over
    as a signed int, so that 2-4 GiB of memory comes out negative (the role keeps it under 4 GiB)."""
    return value & 0xFFFFFFFF


def route_params(uri: str) -> dict:
    """The parameters of a Route URI ("<sip:192.0.2.1;lr;ftag=a;vpbx_exp=1>" -> {"lr": "", ...})."""
    uri = (uri or "").strip().strip("<>").split(">", 1)[0]
    params = {}
    for part in uri.split(";")[1:]:
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip()
    return params


def serve_metrics():
    """An HTTP request: /metrics on the metrics socket is answered by xhttp_prom, anything else 404."""
    if KSR.pv.get("$Rn") == METRICS_SOCKET and KSR.xhttp_prom.check_uri() > 0:
        KSR.xhttp_prom.dispatch()
    else:
        KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "")
    return 1


class Unavailable:
    """Stands in when no routing ever loaded: every new call is refused, not dropped."""

    def child_init(self, rank):
        return 0

    def ksr_xhttp_event(self, msg, evname):
        return serve_metrics()

    def ksr_request_route(self, msg):
        if KSR.is_ACK() or KSR.pv.get("$Rn") == METRICS_SOCKET:
            return 1
        KSR.sl.sl_send_reply(503, "Routing Not Loaded")
        return 1

    def ksr_failure_manage(self, msg):
        return 1

    def ksr_onreply_manage(self, msg):
        return 1

    def ksr_branch_manage(self, msg):
        return 1

    def ksr_branch_trigger(self, msg):
        return 1


class VpbxRouter:
    def __init__(self, decide, model, routing_file, router, edge, signer):
        import netaddr

        from vpbx import wire
        from vpbx.loglimit import LogLimiter

        # The names the engines and kamailio.cfg share with this script.
        self.wire = wire
        self._ipset = netaddr.IPSet
        self.signer = signer
        self.memory = MemoryGuard(edge.shm_reserve_percent, edge.overload_retry_after,
                                  LogLimiter(burst=1, interval=MEMORY_LOG_INTERVAL))
        self.decide = decide
        self.model = model
        self.routing_file = routing_file
        self.edge = edge
        # Started without the location store: this process never uses it.
        self.location_store_down = bool(edge.location_store) and KSR.kx.ifdef(STORE_DOWN_DEFINE) > 0
        if self.location_store_down:
            KSR.err(f"{LOG_PREFIX}started while the location store {edge.location_store} did not answer: "
                    f"REGISTERs are refused with 503 and no phone is rung until Kamailio goes back "
                    f"to the store, by itself once it answers; calls by the schemes and trunks go on\n")
        self.use(router)

    def use(self, router):
        self.router = router
        # The routing data (vpbx.model.Config) the router decides over.
        self.routing = router.config
        self.realm = router.config.sip_listen.host
        trunks = [cidr for t in self.routing.trunks for cidr in t.inbound_sources]
        # Never banned: the carrier's sources, what the admin trusts, the other SIP proxies.
        self.never_banned = self._ipset(trunks) | self.edge.trusted | self._ipset(self.edge.dmq_peers)
        # Where no phone may be: calls ringing it would leave through a trunk,
        # reach an engine as a trigger, or loop through the PBX itself.
        self.not_a_phone = (self._ipset(trunks) | self._ipset(t.address.host for t in self.routing.trunks)
                            | self._ipset([*self.edge.engine_hosts, self.routing.sip_listen.host]))

    def child_init(self, rank):
        return 0

    def ksr_xhttp_event(self, msg, evname):
        return serve_metrics()

    def refresh_routing(self):
        """Load routing.json if it was replaced since this worker loaded it (vpbx.routing_file)."""
        try:
            router = timed(self.routing_file.replaced, self.decide)
        except Exception as exc:
            KSR.err(f"{LOG_PREFIX}new routing NOT loaded ({type(exc).__name__}: {exc}); "
                    f"keeping the routing in use\n")
            return
        if router is not None:
            self.use(router)

    # -- request route -----------------------------------------------------

    def ksr_request_route(self, msg):
        # Read once: every step below asks for them.
        source = KSR.pv.get("$si")
        method = KSR.pv.get("$rm")
        # Replication between the SIP proxies: on its own socket, from them alone.
        if self.ksr_route_dmq(source, method) == STOP:
            return 1
        self.refresh_routing()
        # Banned, flooding or scanning sources get nothing, not even a reply.
        if self.ksr_route_shield(source) == STOP:
            return 1
        # Sanity, loops, retransmissions.
        if self.ksr_route_reqinit(source, method) == STOP:
            return 1
        # CANCEL goes where its INVITE went, or nowhere.
        if method == "CANCEL":
            if KSR.tm.t_check_trans() > 0:
                self.ksr_route_relay()
            return 1
        # Requests inside an established dialog follow the Route set.
        if self.ksr_route_withindlg() == STOP:
            return 1
        KSR.tm.t_check_trans()
        # Our headers are ours alone, whoever sent them.
        KSR.textops.remove_hf_re(OWN_HEADERS_RE)
        # Phones register with digest authentication.
        if method == "REGISTER":
            self.ksr_route_registrar()
            return 1
        if method == "OPTIONS" and KSR.is_myself_ruri() and not KSR.pv.get("$rU"):
            KSR.sl.sl_send_reply(200, "OK")
            return 1
        if method != "INVITE":
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        # A new call needs shared memory for its transaction: none to spare, a 503.
        if self.memory.refused():
            return 1
        # Who is calling: a trunk (trusted caller ID), an extension, or nobody we know.
        origin = self.ksr_route_origin(source)
        if origin is None:
            return 1
        # The decision, then the action.
        self.ksr_route_decide(origin, source)
        return 1

    def ksr_route_dmq(self, source, method):
        """KDMQ (bans, failed authentications) from another SIP proxy goes to dmq; anything else
        on the replication socket, and KDMQ from anyone else or elsewhere, is dropped unanswered.
        So is any SIP on the metrics socket, which serves HTTP (ksr_xhttp_event) alone."""
        socket = KSR.pv.get("$Rn")
        if socket == METRICS_SOCKET:
            return STOP
        on_dmq_socket = bool(self.edge.dmq_socket) and socket == self.edge.dmq_socket
        is_dmq = method == DMQ_METHOD
        if not on_dmq_socket and not is_dmq:
            return GO_ON
        if on_dmq_socket and is_dmq and source in self.edge.dmq_peers:
            KSR.dmq.handle_message()
            return STOP
        if KSR.htable.sht_get(self.wire.BAN_TABLE, source) is None:
            KSR.info(f"{LOG_PREFIX}{method} from {source} dropped: "
                     f"{'not a SIP proxy of this PBX' if is_dmq else 'not KDMQ'} on the replication socket\n"
                     if on_dmq_socket else
                     f"{LOG_PREFIX}KDMQ from {source} dropped: not on the replication socket\n")
        return STOP

    def ksr_route_shield(self, source):
        if KSR.htable.sht_get(self.wire.BAN_TABLE, source) is not None:
            return STOP
        if self.trusted(source):
            return GO_ON
        if KSR.pike.pike_check_req() < 0:
            self.ban(source, "flooding")
            return STOP
        user_agent = KSR.pv.get("$ua")
        if self.edge.scanner is not None and user_agent and self.edge.scanner.search(user_agent):
            self.ban(source, "scanner", f"scanner (User-Agent {user_agent!r})")
            return STOP
        return GO_ON

    def trusted(self, source):
        """Trunks, engines and the admin's trusted sources are never banned."""
        return source in self.never_banned or KSR.dispatcher.ds_is_from_list(self.wire.ENGINE_SET) > 0

    def ban(self, source, reason, why=None):
        """`reason`: the counter's label (flooding, scanner, authentication); `why`: the log's words."""
        KSR.htable.sht_seti(self.wire.BAN_TABLE, source, 1)
        KSR.xhttp_prom.counter_inc_l1(BANS_METRIC, 1, reason)
        KSR.notice(f"{LOG_PREFIX}ban: {source} banned ({why or reason}), its requests are dropped\n")

    def auth_failed(self, source, user, rc):
        """Credentials that do not verify: counted per source; too many in the window ban it."""
        if KSR.htable.sht_get(self.wire.AUTH_FAIL_TABLE, source) is None:
            KSR.htable.sht_seti(self.wire.AUTH_FAIL_TABLE, source, 1)
            failures = 1
        else:
            failures = KSR.htable.sht_inc(self.wire.AUTH_FAIL_TABLE, source)
        KSR.info(f"{LOG_PREFIX}authentication of {user} from {source} failed "
                 f"(auth {rc}, {failures} in a row)\n")
        if failures >= self.edge.auth_failures:
            KSR.htable.sht_rm(self.wire.AUTH_FAIL_TABLE, source)
            self.ban(source, "authentication", f"{failures} failed authentications")

    def ksr_route_reqinit(self, source, method):
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return STOP
        if KSR.sanity.sanity_check(1511, 7) < 0:
            KSR.info(f"{LOG_PREFIX}malformed request from {source} dropped\n")
            return STOP
        # Retransmissions are absorbed by the transaction they belong to.
        if method != "ACK":
            if KSR.tmx.t_precheck_trans() > 0:
                KSR.tm.t_check_trans()
                return STOP
            if KSR.tm.t_check_trans() == 0:
                return STOP
        return GO_ON

    def ksr_route_withindlg(self):
        if KSR.siputils.has_totag() < 0:
            return GO_ON
        # Only dialogs an edge of this PBX set up, whichever edge and however
        # often restarted since: a forged To-tag and Route must not make the
        # PBX relay a stranger's INVITE to the trunk (RouteSigner).
        if not self.in_our_dialog():
            if KSR.is_ACK():
                # The ACK of a negative reply belongs to its transaction.
                KSR.tm.t_check_trans()
                return STOP
            KSR.info(f"{LOG_PREFIX}in-dialog {KSR.pv.get('$rm')} from {KSR.pv.get('$si')} "
                     f"for no dialog of ours refused\n")
            KSR.sl.sl_send_reply(481, "Call/Transaction Does Not Exist")
            return STOP
        engine_dialog = KSR.rr.check_route_param(ENGINE_DIALOG) > 0
        if KSR.is_BYE() and not engine_dialog:
            KSR.rtpengine.rtpengine_delete0()
        self.ksr_route_relay(media=not engine_dialog)
        return STOP

    def in_our_dialog(self):
        """Whether the request is loose-routed by the edge's own Route entry, signed for its dialog."""
        # -3 (the next hop is a preloaded Route, not us) and -1 (no Route) are not ours.
        if KSR.rr.loose_route() != 1 or KSR.rr.check_route_param(f"{ROUTE_SIGNATURE}=") < 0:
            return False
        # The edge's entry is the top Route; a strict router puts it in the R-URI instead.
        route = KSR.pv.get("$route_uri") or ""
        if f"{ROUTE_SIGNATURE}=" not in route:
            route = KSR.pv.get("$ru") or ""
        tags = (KSR.pv.get("$ft") or "", KSR.pv.get("$tt") or "")
        return self.signer.verify(KSR.pv.get("$ci") or "", tags, route, time.time())

    def record_route(self, engine=False):
        """Record-Route with the signature that lets any edge relay the dialog's requests."""
        params = self.signer.params(KSR.pv.get("$ci") or "", KSR.pv.get("$ft") or "", engine, time.time())
        KSR.rr.record_route_params(params)

    def ksr_route_registrar(self):
        source = KSR.pv.get("$si")
        user = KSR.pv.get("$au")
        if not user:
            KSR.auth.auth_challenge(self.realm, CHALLENGE_QOP)
            return STOP
        # An unknown extension is checked against a password nobody has, so it
        # answers exactly as a wrong password does: no extension enumeration.
        password = self.routing.extensions.get(user, NO_PASSWORD)
        rc = KSR.auth.pv_auth_check(self.realm, password, 0, 1)
        if rc < 0 or user not in self.routing.extensions:
            # Every refusal is a new challenge, never a 403: a phone whose
            # nonce went stale (or predates a restart) just answers it again.
            if rc not in AUTH_RECHALLENGE:
                self.auth_failed(source, user, rc)
            KSR.auth.auth_challenge(self.realm, CHALLENGE_QOP)
            return STOP
        KSR.auth.consume_credentials()
        contact_host = KSR.pv.get("$(ct{nameaddr.uri}{uri.host})")
        if contact_host and self.is_not_a_phone(contact_host.strip("[]")):
            KSR.notice(f"{LOG_PREFIX}REGISTER of {user} from {source} with Contact at {contact_host} "
                       f"refused: a trunk, an engine or the PBX itself is not a phone\n")
            KSR.sl.sl_send_reply(403, "Contact Not Allowed")
            return STOP
        # Bound to where the phone really is: calls to it go to this source.
        KSR.nathelper.fix_nated_register()
        if self.location_store_down:
            KSR.err(f"{LOG_PREFIX}REGISTER of {user} from {source} not saved: Kamailio started while the "
                    f"location store {self.edge.location_store} did not answer; refused with 503 until "
                    f"it goes back to the store\n")
            KSR.hdr.append_to_reply(f"Retry-After: {self.edge.location_retry_after}\r\n")
            KSR.sl.sl_send_reply(503, "Location Store Unavailable")
            return STOP
        if KSR.registrar.save(LOCATION, SAVE_NO_REPLY) < 0:
            if not self.location_store_answers():
                KSR.err(f"{LOG_PREFIX}REGISTER of {user} from {source} not saved: the location store "
                        f"{self.edge.location_store} does not answer; refused with 503, "
                        f"registered phones are not found meanwhile\n")
                KSR.hdr.append_to_reply(f"Retry-After: {self.edge.location_retry_after}\r\n")
                KSR.sl.sl_send_reply(503, "Location Store Unavailable")
                return STOP
            KSR.notice(f"{LOG_PREFIX}REGISTER of {user} from {source} not saved: refused by the "
                       f"registrar (its error line says why)\n")
        else:
            KSR.htable.sht_sets(self.wire.REGSRC_TABLE, source, user)
        # The registrar's own answer: 200 with the bindings, or its error.
        KSR.registrar.reg_send_reply()
        return STOP

    def location_store_answers(self):
        """The location store answers a PING (always true without a store: memory never goes away;
        never while this process runs without it)."""
        if not self.edge.location_store:
            return True
        if self.location_store_down:
            return False
        answered = KSR.ndb_redis.redis_cmd(LOCATION_STORE, "PING", LOCATION_PING) > 0
        KSR.ndb_redis.redis_free(LOCATION_PING)
        return answered

    def registered_from(self, source):
        """Whether an extension registered from `source`: this edge's table of sources, else the
        bindings of the extension the request claims to be (From), which may have been saved
        through another edge or before a restart of this one."""
        if KSR.htable.sht_get(self.wire.REGSRC_TABLE, source) is not None:
            return True
        user = KSR.pv.get("$fU")
        if user not in self.routing.extensions:
            return False
        if KSR.registrar.reg_fetch_contacts(LOCATION, f"sip:{user}@{self.realm}", BINDINGS) < 0:
            return False
        try:
            count = int(KSR.pv.get(f"$(ulc({BINDINGS}=>count))") or 0)
            received = [KSR.pv.get(f"$(ulc({BINDINGS}=>received)[{i}])") for i in range(count)]
        finally:
            KSR.registrar.reg_free_contacts(BINDINGS)
        if source not in received_hosts(received):
            return False
        KSR.htable.sht_sets(self.wire.REGSRC_TABLE, source, user)
        return True

    def ksr_route_origin(self, source):
        trunk = self.router.trunk_for(source)
        if trunk is not None:
            return self.decide.FromTrunk(trunk, self.verification(trunk))
        if KSR.dispatcher.ds_is_from_list(self.wire.ENGINE_SET) > 0:
            return self.decide.FromEngine()
        user = KSR.pv.get("$au")
        if not user:
            # Only addresses that registered are worth a challenge.
            if not self.registered_from(source):
                return self.decide.FromStranger()
            KSR.auth.auth_challenge(self.realm, CHALLENGE_QOP)
            return None
        rc = KSR.auth.pv_auth_check(self.realm, self.routing.extensions.get(user, NO_PASSWORD), 0, 1)
        if rc in AUTH_RECHALLENGE:
            KSR.auth.auth_challenge(self.realm, CHALLENGE_QOP)
            return None
        if rc < 0 or user not in self.routing.extensions:
            self.auth_failed(source, user, rc)
            return self.decide.FromStranger()
        KSR.auth.consume_credentials()
        return self.decide.FromExtension(user)

    def verification(self, trunk):
        """The carrier's STIR/SHAKEN verdict on the caller ID, where the trunk reports one."""
        header = self.router.trunks[trunk].attestation_header
        if header is None:
            return None
        # verstat=TN-Validation-Passed as a URI parameter (P-Asserted-Identity) or a header's value.
        value = KSR.pv.get(f"$hdr({header})") or ""
        return "tn-validation-passed" in value.lower()

    def is_not_a_phone(self, host):
        try:
            return host in self.not_a_phone
        except Exception:
            # A name, not an address: nothing resolves it, the call goes to the source.
            return False

    def ksr_route_decide(self, origin, source):
        if not isinstance(origin, (self.decide.FromTrunk, self.decide.FromEngine)):
            for name in ASSERTED_IDENTITY_HEADERS:
                KSR.hdr.remove(name)
        # The carrier asserts the caller in P-Asserted-Identity, or else in From.
        caller = KSR.pv.get("$fU")
        if isinstance(origin, self.decide.FromTrunk) and KSR.hdr.is_present("P-Asserted-Identity") > 0:
            caller = KSR.pv.get("$(ai{uri.user})") or caller
        did = KSR.pv.get("$rU")
        action = self.router.decide(origin, did, caller,
                                    withheld=self.decide.withheld(caller, KSR.pv.get("$hdr(Privacy)")))
        KSR.xhttp_prom.counter_inc_l1(DECISIONS_METRIC, 1, type(action).__name__)
        KSR.info(f"{LOG_PREFIX}decision: from={source} origin={origin.log} "
                 f"caller={caller} ruri={did} -> {action.log}\n")
        d = self.decide
        if isinstance(action, d.Reject):
            KSR.sl.sl_send_reply(action.code, action.reason)
            return
        if isinstance(action, d.TriggerCallback):
            self.ksr_route_callback(action)
        elif isinstance(action, d.CallOut):
            self.ksr_route_call_out(action)
        elif isinstance(action, d.RingExtension):
            self.record_route()
            self.ksr_route_ring_extension(action.extension)
        else:
            now = int(time.time())
            first = self.router.step(action.did, 0, now)
            if first is None or isinstance(first[1], d.Reject):
                # A scheme that now only refuses: nothing to relay, so no transaction
                # and no Record-Route; retransmissions get the same reply from sl.
                code, reason = (480, "Temporarily Unavailable") if first is None else (
                    first[1].code, first[1].reason)
                KSR.sl.sl_send_reply(code, reason)
                return
            self.record_route()
            if not self.memory.new_transaction():
                return
            KSR.pv.sets(AVP_DID, action.did)
            KSR.pv.seti(AVP_TIME, now)
            self.ksr_route_scheme_step(action.did, 0)

    def ksr_route_callback(self, action):
        # Hand the trigger to a callback engine; its reply is never a 200, so
        # the employee's call costs nothing. No engine up: the scheme routes it.
        self.record_route()
        if not self.memory.new_transaction():
            return
        KSR.pv.sets(AVP_DID, action.did)
        KSR.pv.sets(AVP_CALLER, action.caller)
        KSR.pv.seti(AVP_TIME, int(time.time()))
        if KSR.dispatcher.ds_select_dst(self.wire.ENGINE_SET, ENGINE_ALGORITHM) < 0:
            KSR.info(f"{LOG_PREFIX}no callback engine up, {action.did} routed by its scheme\n")
            self.ksr_route_scheme_step(action.did, 0)
            return
        KSR.pv.seti(AVP_TRIGGER, action.reply_code)
        KSR.tm.t_set_fr(ENGINE_TIMEOUT_MS, ENGINE_TIMEOUT_MS)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        KSR.tm.t_on_branch(TRIGGER_BRANCH_ROUTE)
        if KSR.tm.t_relay() < 0:
            self.ksr_route_trigger_failed(action.did)

    def ksr_route_trigger_failed(self, did):
        KSR.info(f"{LOG_PREFIX}callback engine did not take the trigger, {did} routed by its scheme\n")
        KSR.pv.unset(AVP_TRIGGER)
        KSR.tm.t_reset_fr()
        self.ksr_route_scheme_step(did, 0)

    def ksr_route_call_out(self, action):
        # A call-back leg: out through the trunk, media already anchored by the engine.
        self.record_route(engine=True)
        if not self.memory.new_transaction():
            return
        KSR.seturi(action.uri)
        KSR.resetdsturi()
        if KSR.tm.t_relay() < 0:
            KSR.tm.t_reply(500, "Server Error")

    def ksr_route_ring_extension(self, extension):
        if not self.memory.new_transaction():
            return
        if not self.lookup_extensions((extension,)):
            KSR.tm.t_reply(480, "Temporarily Unavailable")
            return
        # Its failure (busy, no answer) ends the media session too.
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        self.ksr_route_relay()

    # -- routing scheme ------------------------------------------------------

    def ksr_route_scheme_step(self, did, index, offered=False):
        """Try the DID's steps from `index` until one is relayed or ends the call.

        `offered`: an earlier step's branch offered media to RTPengine (in a
        failure route), so a call that ends here deletes that session.
        """
        now = KSR.pv.get(AVP_TIME)
        found = self.router.step(did, index, now)
        while found is not None:
            index, step = found
            KSR.pv.seti(AVP_STEP, index)
            if isinstance(step, self.decide.Reject):
                self.end_call(step.code, step.reason, offered)
                return
            if isinstance(step, self.decide.Ring):
                KSR.pv.unset(AVP_OUT)
                if self.lookup_extensions(step.extensions):
                    KSR.tm.t_set_fr(step.timeout_ms, step.timeout_ms)
                    KSR.tm.t_on_failure(FAILURE_ROUTE)
                    self.ksr_route_relay()
                    return
                KSR.info(f"{LOG_PREFIX}step {index}: none of {','.join(step.extensions)} registered\n")
            else:
                KSR.resetdsturi()
                KSR.tm.t_reset_fr()
                KSR.seturi(step.uri)
                KSR.pv.seti(AVP_OUT, 1)
                KSR.tm.t_on_failure(FAILURE_ROUTE)
                self.ksr_route_relay()
                return
            found = self.router.step(did, index + 1, now)
        self.end_call(480, "Temporarily Unavailable", offered)

    def end_call(self, code, reason, offered):
        if offered:
            KSR.rtpengine.rtpengine_delete0()
        KSR.tm.t_reply(code, reason)

    def lookup_extensions(self, extensions):
        """Put every registered contact of `extensions` in the destination set."""
        found = False
        KSR.resetdsturi()
        for ext in extensions:
            aor = f"sip:{ext}@{self.realm}"
            # The first registered extension takes the R-URI, the others become branches.
            if found:
                KSR.registrar.lookup_to_dset(LOCATION, aor)
            else:
                found = KSR.registrar.lookup_uri(LOCATION, aor) > 0
        # The registrar finds no binding in a store that does not answer either: say which it was.
        if not found and not self.location_store_answers():
            KSR.err(f"{LOG_PREFIX}the location store {self.edge.location_store} does not answer: "
                    f"{','.join(extensions)} taken as not registered\n")
        return found

    def ksr_route_relay(self, media=True):
        if media and KSR.is_INVITE():
            KSR.tm.t_on_branch(BRANCH_ROUTE)
            KSR.tm.t_on_reply(ONREPLY_ROUTE)
        if KSR.tm.t_relay() < 0:
            KSR.tm.t_reply(500, "Server Error")
        return STOP

    # -- event routes ----------------------------------------------------------

    def ksr_branch_manage(self, msg):
        self.refresh_routing()
        # However an extension's binding came to be, a branch to a trunk, an
        # engine or the PBX itself never leaves: extensions do not dial out.
        if KSR.pv.get(AVP_OUT) is None:
            host = KSR.pv.get("$dd") if KSR.pv.get("$du") else KSR.pv.get("$rd")
            if host and self.is_not_a_phone(host.strip("[]")):
                KSR.notice(f"{LOG_PREFIX}branch to {KSR.pv.get('$du') or KSR.pv.get('$ru')} "
                           f"dropped: not a phone\n")
                KSR.drop()
                return 1
        return self.manage_media()

    def ksr_branch_trigger(self, msg):
        # Only the branch to the engine is told the decision, in E.164, so it
        # need not parse the carrier's notation.
        KSR.hdr.append(f"{self.wire.DID_HEADER}: {KSR.pv.get(AVP_DID)}\r\n")
        KSR.hdr.append(f"{self.wire.EMPLOYEE_HEADER}: {KSR.pv.get(AVP_CALLER)}\r\n")
        return 1

    def ksr_onreply_manage(self, msg):
        self.refresh_routing()
        return self.manage_media()

    def manage_media(self):
        """The SDP of an outgoing branch (offer) or of a reply (answer) goes through RTPengine."""
        if KSR.textops.has_body_type("application/sdp") > 0:
            KSR.rtpengine.rtpengine_manage(RTPENGINE_FLAGS)
        return 1

    def ksr_failure_manage(self, msg):
        # The timer process runs this too: it must see a replaced routing as well.
        self.refresh_routing()
        if KSR.tm.t_is_canceled() > 0:
            KSR.rtpengine.rtpengine_delete0()
            return 1
        did = KSR.pv.get(AVP_DID)
        trigger_code = KSR.pv.get(AVP_TRIGGER)
        if trigger_code is not None and did in self.routing.numbers:
            if KSR.pv.get(f"$T_rpl($hdr({self.wire.ACCEPT_HEADER}))"):
                KSR.tm.t_reply(int(trigger_code), "Call Back Follows")
            elif KSR.dispatcher.ds_next_dst() > 0:
                KSR.tm.t_on_failure(FAILURE_ROUTE)
                KSR.tm.t_on_branch(TRIGGER_BRANCH_ROUTE)
                KSR.tm.t_relay()
            else:
                self.ksr_route_trigger_failed(did)
            return 1
        step = KSR.pv.get(AVP_STEP)
        if did is None or step is None or did not in self.routing.numbers:
            KSR.rtpengine.rtpengine_delete0()
            return 1
        code = KSR.pv.get("$T_reply_code")
        KSR.info(f"{LOG_PREFIX}step {step} of {did} failed with {code}, next step\n")
        if self.router.step(did, int(step) + 1, KSR.pv.get(AVP_TIME)) is None:
            KSR.rtpengine.rtpengine_delete0()
            return 1
        self.ksr_route_scheme_step(did, int(step) + 1, offered=True)
        return 1


def received_hosts(uris) -> set:
    """The hosts of the received URIs of bindings ("sip:192.0.2.7:5060;transport=tcp", "sip:[::1]:5060")."""
    hosts = set()
    for uri in uris:
        if not uri:
            continue
        hostport = uri.split(":", 1)[-1].split(";", 1)[0].rsplit("@", 1)[-1]
        if hostport.startswith("["):
            hosts.add(hostport[1:].split("]", 1)[0])
        else:
            hosts.add(hostport.rsplit(":", 1)[0])
    return hosts

