"""The engine: triggers in, one `Session` per callback, commands carried out.

`callbackd.machine.Callback` decides; a `Session` carries its commands out
with the SIP endpoint (legs, timers) and RTPengine (media, recording), and
feeds what happens back to it as events (callbackd.events). Everything
runs on the SIP endpoint's reactor thread; only the recording conversion
runs in a worker thread, and its result comes back to the reactor.

Media, as tried here with RTPengine 10.5 (see callbackd.rtpengine): one
RTPengine call per callback; the PBX side (tag B) offers a placeholder SDP
and gets the employee-facing port for the INVITE to the employee; the
employee's answer gives the B-facing port, which is what the client's INVITE
offers. Every side is bound to its own SDP's address, never to whoever sends
first (callbackd.rtpengine.BOUND_MEDIA_FLAGS): when the client answers, its
SDP replaces the placeholder in a new offer/answer that keeps RTPengine's
ports, so the employee needs no re-INVITE and nobody else can take the
client's place.

Abuse limits (toll fraud: the PBX pays for every leg): a trigger the engine
will not call back (an employee over the DID's max_per_hour/max_per_day, or
the engine at vpbx_callback_max_concurrent) is refused without the accept
header, so the edge routes the caller by the DID's scheme, never drops it.

What the engine promised outlives it (with a state store): each callback's
record (the machine's snapshot, when its timers are due, each leg's SIP
dialog or unanswered INVITE, the media ids) is saved at each transition and
dropped once its CDR is written. A restarted engine resumes its records
(`Engine.attach`): an owed call-back is placed, late; a bridged call goes on
(RTPengine still holds its media) and a BYE from either side still ends the
other; the digits stage ends on both legs with `ended_by: engine_restart`
(callbackd.machine.Callback.restarted); a CDR decided but not yet written is
written, never twice.

Trust: triggers come only from the SIP edges (callbackd.sip), carrying the
edge's decision exactly once; RFC 4733 digits count only in datagrams from
RTPengine's address and only when RTPengine saw them come from the
employee's own media address.
"""

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from callbackd import events, machine, metrics
from callbackd.cdr import CdrWriter
from callbackd.config import Settings, canonical_ip
from callbackd.dtmf import parse_rtpengine_log, sent_by
from callbackd.last_client import LastClients, MemoryLastClients
from callbackd.limits import Limits, MemoryLimits
from callbackd.prompts import Prompts
from callbackd.recording import Recording, convert_recording, find_recording, remove_recording
from callbackd.rtpengine import BOUND_MEDIA_FLAGS, NgClient, NgError, placeholder_sdp, sdp_audio_endpoint
from callbackd.sip import Headers, Leg, LegHandler, ScheduledCall, SipEndpoint
from callbackd.store import CLAIM_RENEW_S, HEARTBEAT_S, Callbacks, StoreDown
from callbackd.trigger import BadTrigger, edge_decision
from vpbx import decide, model, wire
from vpbx.loglimit import LogLimiter
from vpbx.routing_file import RoutingFile

log = logging.getLogger(__name__)

PBX_TAG = "B"
EMPLOYEE_TAG = "EMP"
ACCEPT_HEADER = (wire.ACCEPT_HEADER, wire.ACCEPTED)
NOT_LISTED = (403, "Not A Callback Caller", [])
NOT_DECIDED = (403, "No Decision Of The Edge", [])
# Neither carries the accept header: the edge routes the caller by the scheme.
OVER_LIMIT = (403, "Call-Back Limit Reached", [])
AT_CAPACITY = (503, "Call-Back Capacity Reached", [])
# The shared store did not answer: nothing is promised that it cannot hold,
# and the edge routes the caller by the DID's scheme.
STORE_DOWN = (503, "State Store Unavailable", [])
# How long to wait for RTPengine to close a recording after the call's delete.
RECORDING_WAIT_S = 5.0
RECORDING_POLL_S = 0.2
# Ringback loops until the client answers or the machine stops it.
RINGBACK_REPEATS = 1000
# The SIP leg's own ring limit is a backstop: the machine's timer cancels first.
LEG_RING_MARGIN_S = 5.0
# A bridged callback with no media either way for this long is over: both
# phones are gone without a BYE (a lost network, a crashed far end). Matches
# RTPengine's own `timeout` (role rtpengine), after which it drops the call.
MEDIA_TIMEOUT_S = 60.0
MEDIA_CHECK_S = 15.0
# A relay that did not answer an offer gets no new callback for this long.
RELAY_DOWN_S = 30.0


def _address(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _ip(host: str) -> str:
    try:
        return canonical_ip(host)
    except ValueError:
        return host


class Engine:
    """Takes triggers, runs sessions, writes CDRs."""

    def __init__(self, settings: Settings, routing_file: RoutingFile, routing: model.Config, ng: NgClient,
                 cdr: CdrWriter, prompts: Prompts, limits: Limits | None = None,
                 claims: Callbacks | None = None, last_clients: LastClients | None = None):
        """`routing`: what `routing_file` loaded last; `limits`: the call-back counts (default: this
        engine's); `claims`: who holds each employee's call-back across engines (default: this
        engine's sessions alone); `last_clients`: whom `**` redials (default: this engine's)."""
        self.settings = settings
        self.routing_file = routing_file
        self.router = decide.Router(routing)
        self.ng = ng
        self.cdr = cdr
        self.prompts = prompts
        self.sip: SipEndpoint | None = None
        self.sessions: dict[tuple[str, str], Session] = {}
        self._by_media: dict[str, Session] = {}
        # This engine's relay first, then the others: a callback goes to the first that answers.
        self._relays = [ng] + [NgClient(address) for address in settings.other_relays]
        self._relay_down_until: dict[tuple[str, int], float] = {}
        # RTPengine sends its DTMF log from the host of its ng socket; other
        # engines forward the digits of the callbacks they do not run.
        self._relay_ips = frozenset(_ip(a[0]) for a in (settings.rtpengine_ng, *settings.other_relays))
        self._peers_dtmf: dict[str, tuple[str, int]] = {}  # engine -> its DTMF address
        self.dtmf_socket = None
        self._dtmf_refusals = LogLimiter()
        self.limits = limits if limits is not None else MemoryLimits()
        self.claims = claims
        self.last_clients = last_clients if last_clients is not None else MemoryLastClients()
        # This engine's name in the shared claims: its SIP address is unique among engines.
        self.name = "{}:{}".format(*settings.sip_listen)
        # A flood at capacity is the caller's to make: its log lines are capped.
        self._capacity_refusals = LogLimiter()
        self._store_refusals = LogLimiter()
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recording")
        # Prompts, ringback and deletes go to RTPengine in order on one thread of
        # their own: opening a WAV takes RTPengine milliseconds, and with many
        # callbacks the reactor would keep digits and SIP waiting behind them.
        self._media = ThreadPoolExecutor(max_workers=1, thread_name_prefix="media")

    def attach(self, sip: SipEndpoint) -> None:
        """Serve on `sip`: first take up what this engine owed before it restarted."""
        self.sip = sip
        sip.call_later(MEDIA_CHECK_S, self._check_media)
        if self.claims is not None:
            try:
                self.claims.heartbeat(self.name, self._dtmf_address())
                resumed = self._resume()
                dropped = self.claims.drop_engine(self.name, keep={self._token(i) for i in resumed})
                if dropped:
                    log.warning("%d claims this engine held before it restarted released", dropped)
            except StoreDown as exc:
                log.error("state store down (%s): nothing resumed, earlier claims lapse by themselves", exc)
            sip.call_later(CLAIM_RENEW_S, self._renew_claims)
            sip.call_later(HEARTBEAT_S, self._keep_alive)

    def _dtmf_address(self) -> str:
        return "{}:{}".format(*self.settings.dtmf_listen)

    def _keep_alive(self) -> None:
        """Say this engine lives; take over the callbacks of engines that died."""
        try:
            self.claims.heartbeat(self.name, self._dtmf_address())
            self._peers_dtmf = {name: _address(dtmf) for name, dtmf in self.claims.engines().items()
                                if name != self.name and _address(dtmf) is not None}
            for callback_id, engine in self.claims.orphans().items():
                if engine != self.name:
                    self._take_over(callback_id, engine)
        except StoreDown as exc:
            self._store_refusals.log(log, logging.ERROR, "state store down (%s): no heartbeat", exc)
        self.sip.call_later(HEARTBEAT_S, self._keep_alive)

    def _take_over(self, callback_id: str, engine: str) -> None:
        record = self.claims.owed().get(callback_id)
        if record is None or not self.claims.take_over(callback_id, record, self.name):
            return  # ended meanwhile, or another engine was first
        log.warning("callback %s: taken over from %s, whose heartbeat lapsed", callback_id, engine)
        self._take_up(callback_id, record, taken_from=engine)

    def _resume(self) -> list[str]:
        """Resume the callbacks this engine saved before it restarted; their ids."""
        resumed = [callback_id for callback_id, record in self.claims.owed().items()
                   if record.get("engine") == self.name and self._take_up(callback_id, record)]
        if resumed:
            log.warning("resumed %d callbacks this engine had in progress before it restarted", len(resumed))
        return resumed

    def _take_up(self, callback_id: str, record: dict, taken_from: str | None = None) -> bool:
        """Go on with a callback of `record`: this engine's before it restarted, or a dead one's."""
        try:
            session = Session.resumed(self, record, moved=taken_from is not None)
        except Exception:
            # A record no engine can read is dropped, never retried at every start.
            log.exception("callback %s: record not resumed, dropped", callback_id)
            self._forget_record(callback_id)
            return False
        if session.machine.state is machine.State.DONE:
            # Ended before the restart: what is left is its media, recording and CDR.
            session.complete(session.machine.cdr)
            return True
        self.sessions[(session.did.number, session.employee)] = session
        self._by_media[session.media_call_id] = session
        # Its claim may have lapsed while the engine was down: held again, unless taken meanwhile.
        holder = self.claims.claim(session.did.number, session.employee, self._token(callback_id))
        if holder not in (None, self._token(callback_id)):
            log.warning("callback %s: %s on %s was triggered again meanwhile (%s)", callback_id,
                        session.employee, session.did.number, holder)
        session.feed(events.Restarted())
        return True

    def persist(self, session: "Session") -> None:
        """Save the callback's record as it is now; a store that is down is logged, the call goes on."""
        if self.claims is None:
            return
        try:
            if not self.claims.save(self.name, session.id, session.record(), time.time()):
                # This engine was taken for dead: the callback is another's now.
                log.warning("callback %s: taken over by another engine, let go", session.id)
                session.let_go()
        except StoreDown as exc:
            self._store_refusals.log(log, logging.ERROR, "state store down (%s): callback %s not saved",
                                     exc, session.id)
        except Exception:
            # The call in progress matters more than its record.
            log.exception("callback %s: record not saved", session.id)

    def _forget_record(self, callback_id: str) -> None:
        if self.claims is None:
            return
        try:
            self.claims.forget(callback_id)
        except StoreDown as exc:
            log.error("state store down (%s): the record of callback %s lapses by itself", exc, callback_id)

    def _renew_claims(self) -> None:
        """Keep the leases of the callbacks in progress; a dead engine's lapse by themselves."""
        try:
            for session in list(self.sessions.values()):
                self.claims.renew(session.did.number, session.employee, self._token(session.id))
        except StoreDown as exc:
            log.error("state store down (%s): claims not renewed", exc)
        self.sip.call_later(CLAIM_RENEW_S, self._renew_claims)

    def _check_media(self) -> None:
        """Ask RTPengine, for every bridged callback, whether media still flows."""
        for session in list(self.sessions.values()):
            if session.machine.state is machine.State.BRIDGED:
                self.media(session, self._end_if_silent, session)
        self.sip.call_later(MEDIA_CHECK_S, self._check_media)

    def _end_if_silent(self, session: "Session") -> None:
        last = session.ng.last_media_at(session.media_call_id)
        silent = time.time() - last if last is not None else float("inf")
        if silent > MEDIA_TIMEOUT_S:
            log.warning("callback %s: no media for %s, ending it", session.id,
                        f"{silent:.0f} s" if last is not None else "so long RTPengine dropped the call")
            self.sip.call_soon_threadsafe(session.feed, events.Abort())

    def refresh_routing(self) -> None:
        """A replaced routing file applies to new triggers; sessions in progress keep theirs."""
        started = time.monotonic()
        try:
            routing = self.routing_file.replaced()
        except Exception as exc:
            log.error("new routing refused, keeping the routing in use: %s", exc)
            return
        if routing is not None:
            self.router = decide.Router(routing)
            log.info("routing reloaded in %.0f ms: %d DIDs, %d listed numbers",
                     (time.monotonic() - started) * 1000, len(routing.numbers),
                     sum(len(v) for v in routing.number_lists.values()))

    # -- from the SIP edge -----------------------------------------------------

    def on_trigger(self, did_user: str, caller_user: str, headers: Headers):
        try:
            did_number, employee = edge_decision(headers)
        except BadTrigger as exc:
            log.warning("trigger did=%s caller=%s refused: %s", did_user, caller_user, exc)
            metrics.TRIGGERS.labels("refused").inc()
            return NOT_DECIDED
        self.refresh_routing()
        routing = self.router.config
        did = routing.numbers.get(did_number)
        # The edge decided already; a stale list or a stray INVITE still gets no call-back.
        if did is None or not self.router.is_listed(did, employee):
            log.info("trigger did=%s caller=%s: not a listed caller, refused", did_user, caller_user)
            metrics.TRIGGERS.labels("not_listed").inc()
            return NOT_LISTED
        accepted = (did.callback.reject_code, "Call Back Follows", [ACCEPT_HEADER])
        key = (did.number, employee)
        if key in self.sessions:
            # Not counted either: no call-back is placed for it.
            log.info("callback %s: repeated trigger from %s, no second call-back",
                     self.sessions[key].id, employee)
            metrics.TRIGGERS.labels("repeated").inc()
            return accepted
        callback_id = uuid.uuid4().hex[:12]
        try:
            holder = None
            if self.claims is not None:
                holder = self.claims.claim(did.number, employee, self._token(callback_id))
            if holder is not None:
                # Another engine has it in hand.
                log.info("callback %s: repeated trigger from %s, no second call-back", holder, employee)
                metrics.TRIGGERS.labels("repeated").inc()
                return accepted
            refusal = self._refusal(routing, did, employee)
        except StoreDown as exc:
            log.error("state store down (%s): %s on %s routed by the scheme", exc, employee, did.number)
            self._release(did.number, employee, callback_id)
            metrics.TRIGGERS.labels("store_down").inc()
            return STORE_DOWN
        if refusal is not None:
            self._release(did.number, employee, callback_id)
            metrics.TRIGGERS.labels("at_capacity" if refusal is AT_CAPACITY else "over_limit").inc()
            return refusal
        session = Session(self, did, employee, callback_id)
        self.sessions[key] = session
        self._by_media[session.media_call_id] = session
        session.start()
        metrics.TRIGGERS.labels("accepted").inc()
        return accepted

    def _refusal(self, routing: model.Config, did: model.Did, employee: str):
        """The reply that refuses a call-back over a limit, or None once it is counted."""
        if len(self.sessions) >= routing.callback_max_concurrent:
            self._capacity_refusals.log(
                log, logging.WARNING, "callback capacity: %d callbacks in progress "
                "(vpbx_callback_max_concurrent %d), %s on %s routed by the scheme",
                len(self.sessions), routing.callback_max_concurrent, employee, did.number)
            metrics.LIMIT_HITS.labels("max_concurrent").inc()
            return AT_CAPACITY
        settings = did.callback
        refused = self.limits.admit(did.number, employee, settings.max_per_hour, settings.max_per_day,
                                    time.time())
        if refused is not None:
            log.warning("callback limit: %s on %s: %s, routed by the scheme", employee, did.number, refused)
            metrics.LIMIT_HITS.labels(refused.key).inc()
            return OVER_LIMIT
        return None

    def last_client(self, did: str, employee: str) -> str | None:
        """Whom `**` redials; a store that is down has none (the employee hears "invalid number")."""
        try:
            return self.last_clients.get(did, employee, time.time())
        except StoreDown as exc:
            self._store_refusals.log(log, logging.ERROR, "state store down (%s): no last client of %s on %s",
                                     exc, employee, did)
            return None

    def remember_client(self, did: str, employee: str, e164: str) -> None:
        """The client call placed is the one `**` redials next; a store that is down forgets it."""
        try:
            self.last_clients.put(did, employee, e164, time.time())
        except StoreDown as exc:
            self._store_refusals.log(log, logging.ERROR, "state store down (%s): last client of %s on %s "
                                     "not kept", exc, employee, did)

    def _token(self, callback_id: str) -> str:
        """What this engine's claim on a callback holds: its own name first (see store.drop_engine)."""
        return f"{self.name}/{callback_id}"

    def _release(self, did: str, employee: str, callback_id: str) -> None:
        """The employee's claim on the DID is free again; a store that is down lets it lapse."""
        if self.claims is None:
            return
        try:
            self.claims.release(did, employee, self._token(callback_id))
        except StoreDown as exc:
            log.error("state store down (%s): the claim of callback %s lapses by itself", exc, callback_id)

    def on_dtmf_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        from_relay = _ip(source[0]) in self._relay_ips
        if not from_relay and _ip(source[0]) not in {_ip(a[0]) for a in self._peers_dtmf.values()}:
            self._dtmf_refusals.log(log, logging.WARNING, "DTMF datagram from %s:%s dropped: not RTPengine",
                                    source[0], source[1])
            return
        event = parse_rtpengine_log(data)
        if event is None:
            return
        session = self._by_media.get(event.call_id)
        if session is None:
            if from_relay:  # never forwarded twice
                self._forward_dtmf(data, event.call_id)
            return
        # Only what the employee types counts: the client's keys are the client's,
        # and what anyone else sends to the employee's port is nobody's.
        if sent_by(event, EMPLOYEE_TAG, session.employee_media):
            session.feed(events.Digit(event.digit))
        elif event.source_tag == EMPLOYEE_TAG:
            self._dtmf_refusals.log(log, logging.WARNING, "callback %s: digit from %s ignored: not the "
                                    "employee's media address %s", session.id, event.source_ip,
                                    session.employee_media)

    def _forward_dtmf(self, data: bytes, media_call_id: str) -> None:
        """A relay reports its digits to one engine: those of another engine's callback go on to it."""
        if self.claims is None or self.dtmf_socket is None or not media_call_id.startswith("callback-"):
            return
        try:
            owner = self.claims.owner(media_call_id.removeprefix("callback-"))
        except StoreDown as exc:
            self._store_refusals.log(log, logging.ERROR, "state store down (%s): digit not forwarded", exc)
            return
        address = self._peers_dtmf.get(owner) if owner and owner != self.name else None
        if address is not None:
            self.dtmf_socket.send(data, address)

    def relay(self, address: tuple[str, int] | list | None = None) -> NgClient:
        """The client of the relay at `address` (a resumed callback's), else this engine's own."""
        if address is None:
            return self._relays[0]
        address = (address[0], int(address[1]))
        for client in self._relays:
            if client is not None and tuple(client.address) == address:
                return client
        client = NgClient(address)
        self._relays.append(client)
        return client

    def offer_on_a_relay(self, session: "Session", offer) -> str:
        """`offer(ng)` on the session's relay, else on the next relay that answers; its SDP.

        A relay that does not answer gets no new callback for RELAY_DOWN_S;
        once RTPengine holds a callback's media, the callback stays on it.
        """
        relays = [r for r in self._relays if r is not None]
        candidates = [session.ng] if session.media_placed else [
            r for r in relays if self._relay_down_until.get(tuple(r.address), 0) <= time.monotonic()
        ] or relays[:1]
        for client in candidates:
            try:
                sdp = offer(client)
            except NgError as exc:
                if session.media_placed or client is candidates[-1]:
                    raise
                log.warning("callback %s: relay %s:%s did not answer (%s), trying the next", session.id,
                            *client.address, exc)
                self._relay_down_until[tuple(client.address)] = time.monotonic() + RELAY_DOWN_S
                continue
            session.ng, session.media_placed = client, True
            return sdp
        raise NgError("offer", "no media relay configured")

    def hand_over(self) -> None:
        """Stop taking work, leaving the callbacks in progress to whichever engine resumes them."""
        log.warning("stopping: %d callbacks in progress left in the state store", len(self.sessions))
        self._media.shutdown(wait=True)
        self._workers.shutdown(wait=True)

    def shutdown(self) -> None:
        """End every callback in progress (hang up, CDR), then stop taking work."""
        for session in list(self.sessions.values()):
            session.feed(events.Abort())
        self._media.shutdown(wait=True)
        self._workers.shutdown(wait=True)

    def media(self, session: "Session", fn, *args) -> None:
        """Run an RTPengine request behind the ones already queued, off the reactor."""
        def run() -> None:
            try:
                fn(*args)
            except NgError as exc:
                log.warning("callback %s: RTPengine %s: %s", session.id, fn.__name__, exc)
        self._media.submit(run)

    def background(self, fn, *args) -> None:
        """Run slow work (a recording's conversion) on a worker thread, off the reactor."""
        self._workers.submit(fn, *args)

    def stages(self) -> list[str]:
        """The stage of every callback in progress (read by the metrics' thread: a copy first)."""
        return [session.machine.state for session in list(self.sessions.values())]

    def forget(self, session: "Session") -> None:
        self.sessions.pop((session.did.number, session.employee), None)
        self._release(session.did.number, session.employee, session.id)
        self._by_media.pop(session.media_call_id, None)


class Session:
    """One callback: the machine, its two SIP legs, its RTPengine call and timers."""

    def __init__(self, engine: Engine, did: model.Did, employee: str, callback_id: str | None = None):
        self.engine = engine
        self.did = did
        self.employee = employee
        self.id = callback_id or uuid.uuid4().hex[:12]
        self.media_call_id = f"callback-{self.id}"
        settings = did.callback
        self.language = settings.language
        self.machine = machine.Callback(
            did.number, employee, settings, engine.router.config.default_country,
            engine.prompts.seconds(did.number, settings.language),
            engine.settings.client_ring_timeout, time.time(),
            last_client=engine.last_client(did.number, employee))
        self.machine.cdr.id = self.id
        self.ng = engine.relay()  # the media relay of this callback
        self.media_placed = False  # RTPengine holds the call: it stays on that relay
        self.employee_leg: Leg | PendingLeg | None = None
        self.client_leg: Leg | PendingLeg | None = None
        self.pbx_sdp: str | None = None  # RTPengine's B-facing SDP: what the client is offered
        self.employee_sdp: str | None = None  # the employee's own, from its 200 OK
        self.employee_facing: str | None = None  # RTPengine's SDP sent to the employee
        self.employee_media: str | None = None  # the address the employee's RTP comes from
        self._timers: dict[str, ScheduledCall] = {}
        self._due: dict[str, float] = {}  # epoch seconds each running timer fires at
        self._playing = False
        self._gone = False  # taken over by another engine
        # For the latency figures (monotonic): the trigger (None once resumed), the last key typed.
        self._triggered_at: float | None = time.monotonic()
        self._keyed_at: float | None = None

    @classmethod
    def resumed(cls, engine: Engine, record: dict, moved: bool = False) -> "Session":
        """The callback of `record` (see `record()`), saved by this engine before it restarted.

        Timers are armed again for what is left of them (none left: at once);
        answered legs are resumed from their dialogs; an unanswered INVITE can
        only be cancelled. The machine's `restarted` event says what follows.
        """
        routing = engine.router.config
        did = routing.numbers.get(record["did"])
        if did is None or did.callback is None:
            # The DID was removed meanwhile: its callback still ends on both legs with its CDR.
            did = model.Did(record["did"], "", model.CallbackSettings(enabled=True, list=None,
                                                                       record=record["media"]["record"]))
        session = cls(engine, did, record["employee"], record["id"])
        session._triggered_at = None
        session.machine.restore(record["machine"])
        media = record["media"]
        session.pbx_sdp, session.employee_sdp = media["pbx_sdp"], media["employee_sdp"]
        session.employee_facing, session.employee_media = media["employee_facing"], media["employee_media"]
        session._playing = media["playing"]
        if media.get("relay"):
            session.ng, session.media_placed = engine.relay(media["relay"]), True
        session.employee_leg = session._resumed_leg(record["legs"]["employee"], EmployeeLeg, moved)
        session.client_leg = session._resumed_leg(record["legs"]["client"], ClientLeg, moved)
        now = time.time()
        for name in session.machine.snapshot()["timers"]:
            left = max(0.0, record["due"].get(name, now) - now)
            session.execute(machine.StartTimer(name, left))
        log.info("callback %s: resumed in %s", session.id, session.machine.state)
        return session

    def _resumed_leg(self, saved: dict | None, handler, moved: bool):
        """`moved`: the callback came from another engine, whose address the phones still call."""
        if saved is None:
            return None
        if saved.get("dialog"):
            leg = self.sip.resume(saved["leg_id"], saved["to_uri"], self.did.number, saved["dialog"],
                                  handler(self))
            if moved:
                leg.refresh_target()
            return leg
        if saved.get("pending"):
            return PendingLeg(self.sip, saved)
        return None

    def record(self) -> dict:
        """What a restarted engine needs to go on with this callback (JSON-able, no PIN)."""
        return {
            "engine": self.engine.name,
            "id": self.id,
            "did": self.did.number,
            "employee": self.employee,
            "machine": self.machine.snapshot(),
            "due": dict(self._due),
            "legs": {"employee": _saved_leg(self.employee_leg), "client": _saved_leg(self.client_leg)},
            "media": {
                "call_id": self.media_call_id,
                "relay": list(self.ng.address) if self.media_placed else None,
                "record": self.did.callback.record,
                "pbx_sdp": self.pbx_sdp,
                "employee_sdp": self.employee_sdp,
                "employee_facing": self.employee_facing,
                "employee_media": self.employee_media,
                "playing": self._playing,
            },
        }

    @property
    def sip(self) -> SipEndpoint:
        return self.engine.sip

    def start(self) -> None:
        log.info("callback %s: did=%s employee=%s triggered", self.id, self.did.number, self.employee)
        self.feed(events.Start())

    def feed(self, event: events.Event) -> None:
        """Hand an event to the machine and carry out what it says."""
        if self._gone:
            return
        if isinstance(event, events.Digit):
            self._keyed_at = time.monotonic()
        before = self.machine.state
        commands = events.dispatch(self.machine, event, time.time())
        if self.machine.state != before:
            # The event's kind only: a digit's key may be a PIN's.
            log.info("callback %s: %s -> %s (%s)", self.id, before, self.machine.state, type(event).__name__)
        for command in commands:
            try:
                self.execute(command)
            except (NgError, OSError, ValueError, RuntimeError) as exc:
                log.error("callback %s: %s failed: %s", self.id, type(command).__name__, exc)
                if not isinstance(command, machine.Finished) and not isinstance(event, events.Abort):
                    self.sip.call_soon(self.feed, events.Abort())
                    return
        if commands:
            self.engine.persist(self)

    # -- commands --------------------------------------------------------------

    def execute(self, command) -> None:
        match command:
            case machine.StartTimer(name, seconds):
                self._cancel_timer(name)
                self._timers[name] = self.sip.call_later(seconds, self._timer_fired, name)
                self._due[name] = time.time() + seconds
            case machine.CancelTimer(name):
                self._cancel_timer(name)
            case machine.CallEmployee(attempt, ring_timeout):
                self.call_employee(attempt, ring_timeout)
            case machine.CancelEmployee() | machine.HangUpEmployee():
                if self.employee_leg is not None:
                    self.employee_leg.hang_up()
            case machine.PlayPrompt(name):
                # The name only: what is typed, a PIN above all, is never logged.
                log.info("callback %s: playing %s", self.id, name)
                if name in metrics.DENIALS:
                    metrics.DENIED_DESTINATIONS.labels(name).inc()
                self.play(str(self.engine.prompts.path(self.did.number, self.language, name)))
            case machine.PlayRingback():
                self.play(str(self.engine.prompts.ringback), RINGBACK_REPEATS)
            case machine.StopPrompt():
                self.stop_playing()
            case machine.DialClient(e164, dialled):
                log.info("callback %s: dialling client %s (typed %s)", self.id, e164, dialled)
                self.client_leg = self.sip.originate(
                    f"{self.id}-client", self._uri(e164), self.did.number, self.pbx_sdp,
                    self.engine.settings.client_ring_timeout + LEG_RING_MARGIN_S, ClientLeg(self))
                self.engine.remember_client(self.did.number, self.employee, e164)
                if self._keyed_at is not None:
                    metrics.DIGITS_TO_CLIENT.observe(time.monotonic() - self._keyed_at)
            case machine.CancelClient() | machine.HangUpClient():
                if self.client_leg is not None:
                    self.client_leg.hang_up()
            case machine.Bridge():
                log.info("callback %s: employee %s and client bridged", self.id, self.employee)
            case machine.MuteClient():
                self.engine.media(self, self.ng.block_media, self.media_call_id, PBX_TAG)
            case machine.UnmuteClient():
                self.engine.media(self, self.ng.unblock_media, self.media_call_id, PBX_TAG)
            case machine.Finished(cdr):
                self.finish(cdr)

    def call_employee(self, attempt: int, ring_timeout: float) -> None:
        sdp = self.engine.offer_on_a_relay(self, lambda ng: ng.offer(
            self.media_call_id, PBX_TAG, placeholder_sdp(), record=self.did.callback.record,
            flags=list(BOUND_MEDIA_FLAGS)))
        self.employee_facing = sdp
        self.employee_leg = self.sip.originate(
            f"{self.id}-employee-{attempt}", self._uri(self.employee), self.did.number, sdp,
            ring_timeout + LEG_RING_MARGIN_S, EmployeeLeg(self))
        if attempt == 1 and self._triggered_at is not None:
            metrics.TRIGGER_TO_CALLBACK.observe(time.monotonic() - self._triggered_at)

    def play(self, path: str, repeats: int | None = None) -> None:
        self.stop_playing()
        self.engine.media(self, self.ng.play_media, self.media_call_id, EMPLOYEE_TAG, path, repeats)
        self._playing = True

    def stop_playing(self) -> None:
        if self._playing:
            self._playing = False
            self.engine.media(self, self._stop_media)

    def _stop_media(self) -> None:
        try:
            self.ng.stop_media(self.media_call_id, EMPLOYEE_TAG)
        except NgError as exc:  # the file had ended by itself
            log.debug("callback %s: stop media: %s", self.id, exc)

    def let_go(self) -> None:
        """Another engine runs this callback now: stop its timers here, touch nothing else."""
        self._gone = True
        for name in list(self._timers):
            self._cancel_timer(name)
        self.engine.sessions.pop((self.did.number, self.employee), None)
        self.engine._by_media.pop(self.media_call_id, None)

    def finish(self, cdr: machine.Cdr) -> None:
        for name in list(self._timers):
            self._cancel_timer(name)
        for leg in (self.employee_leg, self.client_leg):
            if leg is not None:
                leg.hang_up()
        self.engine.forget(self)
        log.info("callback %s: finished, result=%s bridged=%.1fs", self.id, cdr.result,
                 cdr.bridged_seconds)
        metrics.CALLBACKS.labels(cdr.result).inc()
        if cdr.ended_by == "limit":
            metrics.LIMIT_HITS.labels("max_call_minutes").inc()
        self.complete(cdr)

    def complete(self, cdr: machine.Cdr) -> None:
        """The media deleted, the recording and the CDR written (once: a resumed one may be)."""
        if self.engine.cdr.written(self.id):
            log.info("callback %s: CDR written before the restart", self.id)
            self.engine._forget_record(self.id)
            return
        # Behind this callback's last media requests; the recording is complete once deleted.
        self.engine.media(self, self._delete_then_record, cdr)

    def _delete_then_record(self, cdr: machine.Cdr) -> None:
        """Media thread: end the RTPengine call, then the recording and the CDR."""
        try:
            self.ng.delete(self.media_call_id)
        except NgError as exc:  # deleted before a restart, or dropped by RTPengine
            log.info("callback %s: RTPengine delete: %s", self.id, exc)
        finally:
            if not self.did.callback.record:
                self.sip.call_soon_threadsafe(self._write_cdr, cdr)
            elif cdr.client_answer_at is not None:
                self.engine.background(self._save_recording, cdr)
            else:
                self.sip.call_soon_threadsafe(self._write_cdr, cdr)
                self.engine.background(self._discard_recording)

    def _finished_recording(self) -> Recording | None:
        """Worker thread: the call's recording once RTPengine has closed it, None if it never does."""
        deadline = time.monotonic() + RECORDING_WAIT_S
        while (recording := find_recording(self.engine.settings.pcap_dir, self.media_call_id)) is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(RECORDING_POLL_S)
        return recording

    def _save_recording(self, cdr: machine.Cdr) -> None:
        """Worker thread: wait for RTPengine to close the pcap, make the WAV, then the CDR."""
        recording = self._finished_recording()
        if recording is None:
            log.error("callback %s: no recording found under %s", self.id, self.engine.settings.pcap_dir)
        else:
            stamp = datetime.fromtimestamp(cdr.trigger_at, UTC).strftime("%Y%m%dT%H%M%SZ")
            name = f"{stamp}-{self.did.number.lstrip('+')}-{self.id}.wav"
            wav = Path(self.engine.settings.recordings_dir) / name
            try:
                convert_recording(recording, wav)
                cdr.recording = str(wav)
            except (OSError, ValueError) as exc:
                # The pcap stays, the only copy: the daily job removes it with the recordings.
                log.error("callback %s: recording not converted: %s", self.id, exc)
            else:
                self._empty_spool(recording)
        self.sip.call_soon_threadsafe(self._write_cdr, cdr)

    def _discard_recording(self) -> None:
        """Worker thread: a recording without the client holds the employee alone
        (the digits typed, a PIN among them): nothing to keep."""
        recording = self._finished_recording()
        if recording is not None:
            self._empty_spool(recording)

    def _empty_spool(self, recording: Recording) -> None:
        try:
            remove_recording(recording)
        except OSError as exc:  # the relay's spool, not writable here: its daily job removes it
            log.warning("callback %s: pcap left in the spool: %s", self.id, exc)

    def _write_cdr(self, cdr: machine.Cdr) -> None:
        try:
            self.engine.cdr.write(cdr.to_json_dict())
        except (OSError, TypeError, ValueError) as exc:
            # The record stays: a restarted engine writes the CDR.
            log.error("callback %s: CDR not written: %s", self.id, exc)
            return
        self.engine._forget_record(self.id)

    # -- plumbing ----------------------------------------------------------------

    def _uri(self, number: str) -> str:
        host, port = self.engine.settings.proxy
        return f"sip:{number}@{host}:{port}"

    def _timer_fired(self, name: str) -> None:
        self._timers.pop(name, None)
        self._due.pop(name, None)
        self.feed(events.TimerFired(name))

    def _cancel_timer(self, name: str) -> None:
        self._due.pop(name, None)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()


class PendingLeg:
    """An INVITE an earlier engine left unanswered: all that can happen to it is a CANCEL."""

    def __init__(self, sip: SipEndpoint, saved: dict):
        self.leg_id, self.to_uri = saved["leg_id"], saved["to_uri"]
        self._sip, self._pending = sip, saved["pending"]

    def hang_up(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._sip.cancel_pending(pending)

    def dialog(self) -> None:
        return None

    def pending(self) -> dict | None:
        return self._pending


def _saved_leg(leg: "Leg | PendingLeg | None") -> dict | None:
    """A leg as `Session.record()` saves it: its dialog once answered, else its INVITE."""
    if leg is None:
        return None
    dialog, pending = leg.dialog(), leg.pending()
    if dialog is None and pending is None:
        return None
    return {"leg_id": leg.leg_id, "to_uri": leg.to_uri, "dialog": dialog, "pending": pending}


class EmployeeLeg(LegHandler):
    def __init__(self, session: Session):
        self.session = session

    def _current(self, leg: Leg) -> bool:
        # A leg the machine gave up on (an earlier attempt) is only hung up.
        if leg is self.session.employee_leg:
            return True
        leg.hang_up()
        return False

    def on_ringing(self, leg: Leg) -> None:
        if self._current(leg):
            self.session.feed(events.EmployeeRinging())

    def on_answered(self, leg: Leg, sdp: str) -> None:
        if not self._current(leg):
            return
        session = self.session
        media = sdp_audio_endpoint(sdp)
        session.employee_sdp = sdp
        session.employee_media = media.address if media is not None else None
        try:
            session.pbx_sdp = session.ng.answer(session.media_call_id, PBX_TAG, EMPLOYEE_TAG, sdp,
                                                       flags=list(BOUND_MEDIA_FLAGS))
        except NgError as exc:
            log.error("callback %s: RTPengine answer: %s", session.id, exc)
            session.feed(events.Abort())
            return
        session.feed(events.EmployeeAnswered())

    def on_failed(self, leg: Leg, code: int, reason: str) -> None:
        if leg is self.session.employee_leg:
            log.info("callback %s: employee leg failed %d %s", self.session.id, code, reason)
            self.session.feed(events.EmployeeFailed(code))

    def on_disconnected(self, leg: Leg, by: str) -> None:
        if leg is self.session.employee_leg and by == "remote":
            self.session.feed(events.EmployeeHangUp())

    def on_dtmf(self, leg: Leg, digit: str) -> None:
        if leg is self.session.employee_leg:
            self.session.feed(events.Digit(digit))


class ClientLeg(LegHandler):
    def __init__(self, session: Session):
        self.session = session

    def on_ringing(self, leg: Leg) -> None:
        self.session.feed(events.ClientRinging())

    def on_answered(self, leg: Leg, sdp: str) -> None:
        session = self.session
        try:
            self._bind_client(sdp)
        except (NgError, ValueError) as exc:
            log.error("callback %s: client's media not bound, ending: %s", session.id, exc)
            session.feed(events.Abort())
            return
        session.feed(events.ClientAnswered())

    def _bind_client(self, sdp: str) -> None:
        """RTPengine's B side from the placeholder to the client's own SDP, the employee's port kept."""
        session = self.session
        if sdp_audio_endpoint(sdp) is None:
            raise ValueError("no audio in the client's SDP")
        to_employee, _ = session.ng.rebind(session.media_call_id, PBX_TAG, EMPLOYEE_TAG, sdp,
                                                  session.employee_sdp)
        if sdp_audio_endpoint(to_employee) != sdp_audio_endpoint(session.employee_facing):
            raise ValueError(f"RTPengine moved the employee's port to {sdp_audio_endpoint(to_employee)}")

    def on_failed(self, leg: Leg, code: int, reason: str) -> None:
        log.info("callback %s: client leg failed %d %s", self.session.id, code, reason)
        self.session.feed(events.ClientFailed(code))

    def on_disconnected(self, leg: Leg, by: str) -> None:
        if by == "remote":
            self.session.feed(events.ClientHangUp())
