"""The engine's SIP side, on the sippy stack: triggers in, call legs out.

`SipEndpoint` owns sippy's transaction manager bound to one ip:port:

* Requests outside a dialog count only from the SIP edges (``trusted``
  source addresses): anything else gets **403** and a (rate-limited) log
  line, so nobody can make the PBX dial by talking to the engine directly.
* An incoming INVITE is a callback *trigger* relayed by the SIP edge. The
  endpoint asks `on_trigger(did, caller, headers)` what to answer (headers:
  every value of each, so that a repeated header can be told) and replies
  with that final **non-2xx** response (e.g. 486 Busy Here plus
  ``X-Vpbx-Callback: accepted``): the caller's call is never answered, so
  nobody pays for it. The ACK is absorbed by the transaction layer. When the
  handler fails or asks for a 1xx/2xx, the endpoint answers 500 instead, which
  the SIP edge treats like "engine down": route the call normally.
* OPTIONS outside a dialog gets 200 OK (the edge's dispatcher probes with it).
* `originate()` places an outgoing call, a `Leg`, and reports what happens to
  it through a `LegHandler`: ringing, answered (with the 200's SDP), failed,
  disconnected, DTMF received by SIP INFO (every INFO gets 200; a body
  without a digit is ignored). Every leg ends with exactly one of
  `on_failed` (never answered: rejected, ring timeout, cancelled by
  `hang_up()`) or `on_disconnected` (answered, then BYE from either side).
  A re-INVITE from the far end (hold...) is answered with the leg's own SDP.

A leg outlives the process that placed it: `Leg.dialog()` is an answered
leg's dialog as plain data (Call-ID, tags, URIs, CSeq, route set, remote
target, both SDPs) and `Leg.pending()` an unanswered one's INVITE as sent.
A restarted engine `resume()`s an answered leg from its dialog, so a BYE
from the far end is still answered and reported and `hang_up()` still sends
a BYE the far end accepts, and `cancel_pending()`s an INVITE an earlier
process left ringing.

Threading: everything runs on one thread, sippy's reactor (``ED2``, the
``EventDispatcher2`` singleton). SIP messages, timers and the handlers'
callbacks all run there, so the engine needs no locks. The engine's other I/O
joins the same thread:

* timers: `call_later()` / `call_soon()` (sippy ``Timeout``);
* UDP sockets (e.g. the DTMF/JSON socket): `open_udp()`, a sippy
  ``Udp_server`` whose receiving thread hands each datagram to the reactor;
  sending is queued, never blocks the reactor. A blocking request/reply
  client (the RTPengine ng client) may be called on the reactor too: it
  stalls SIP for at most its timeout, which UDP retransmissions absorb;
* anything running on another thread hands work over with
  `call_soon_threadsafe()` (``ED2.callFromThread``);
* `run()` blocks in the reactor loop until `stop()` (callable from any
  thread or a signal handler's hand-off) and then closes the sockets.

Construct the endpoint on the thread that will call `run()`: sippy's timers
check that they are armed from the reactor's thread. ``ED2`` is a process-wide
singleton, so there is one `SipEndpoint` per process.

A leg's INVITE goes to its next hop: `originate(next_hop=...)`, else the
endpoint's ``outbound_proxy``, else the R-URI's own host:port. Requests inside
the dialog (ACK, BYE) follow RFC 3261: the remote target (Contact) and any
Record-Route, so a proxy that wants to stay in the path must record-route.
"""

from __future__ import annotations

import enum
import logging
import string
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sippy.CCEvents import (
    CCEventConnect,
    CCEventDisconnect,
    CCEventFail,
    CCEventInfo,
    CCEventPreConnect,
    CCEventRedirect,
    CCEventRing,
    CCEventTry,
    CCEventUpdate,
)
from sippy.Core.EventDispatcher import ED2
from sippy.MsgBody import MsgBody
from sippy.SipAddress import SipAddress
from sippy.SipCallId import SipCallId
from sippy.SipContact import SipContact
from sippy.SipFrom import SipFrom
from sippy.SipGenericHF import SipGenericHF
from sippy.SipHeader import SipHeader
from sippy.SipPAssertedIdentity import SipPAssertedIdentity
from sippy.SipRequest import SipRequest
from sippy.SipRoute import SipRoute
from sippy.SipTo import SipTo
from sippy.SipTransactionManager import SipTransactionManager
from sippy.SipURL import SipURL
from sippy.Time.Timeout import Timeout
from sippy.UA import UA
from sippy.UaStateConnected import UaStateConnected
from sippy.Udp_server import Udp_server, Udp_server_opts

from callbackd.config import canonical_ip
from callbackd.dtmf import parse_sip_info
from vpbx.loglimit import LogLimiter

log = logging.getLogger(__name__)
# Every SIP message sent and received, at DEBUG (sippy's own message log).
wire_log = logging.getLogger(__name__ + ".wire")

USER_AGENT = "vpbx-callbackd"
# sippy's reactor wakes this often to take datagrams and timers handed over by
# its socket threads: at its default 100 Hz a digit waits up to 10 ms before
# the engine sees it. 1 kHz costs a few per cent of one core when idle.
REACTOR_HZ = 1000.0
# A trigger's answer when the handler fails or asks for something that would
# answer or prolong the caller's call.
FALLBACK_CODE = 500
FALLBACK_REASON = "Server Internal Error"
# RFC 3261 token characters: what a header name may consist of.
HEADER_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-.!%*_+`'~")
NOT_A_PROXY = (403, "Forbidden")

Address = tuple[str, int]
ExtraHeaders = Sequence[tuple[str, str]]
# Lower-case header name -> its values, in the order they came.
Headers = dict[str, list[str]]
TriggerHandler = Callable[[str, str, Headers], tuple[int, str, ExtraHeaders]]


# Pure helpers


def _crlf(sdp: str) -> str:
    """SDP with CRLF line ends and a final CRLF, as SIP peers expect."""
    lines = sdp.replace("\r\n", "\n").strip("\n").split("\n")
    return "\r\n".join(lines) + "\r\n"


class _NamedHeader(SipGenericHF):
    """A header sippy does not know, printed with the name's case as given."""

    def __init__(self, name: str, value: str):
        super().__init__(value, name)
        self.display_name = name

    def getCopy(self) -> _NamedHeader:  # sippy's copy protocol
        return _NamedHeader(self.display_name, self.body)

    def getCanName(self, name: str, compact: bool = False) -> str:  # sippy's naming protocol
        return self.display_name


def _header(name: str, value: str) -> SipHeader:
    """An extra header; refuses what would break the message (bad name, line breaks)."""
    if not name or not set(name) <= HEADER_NAME_CHARS:
        raise ValueError(f"bad SIP header name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"line break in the value of SIP header {name}")
    return SipHeader(name=name, body=_NamedHeader(name, value))


class _OrderedUdpOpts(Udp_server_opts):
    """One receiving and one sending thread per socket. sippy's default is three
    of each, which reorders datagrams: a 100 Trying could leave after the 200
    it precedes, a 180 be handled after the 200 that followed it."""

    nworkers = 1


class _TransactionManager(SipTransactionManager):
    model_udp_server = (Udp_server, _OrderedUdpOpts)


class _WireLog:
    """Stands in for sippy's SipLogger: the message trace goes to `logging`."""

    def write(self, *args: Any, **_kwargs: Any) -> None:
        if wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("%s", "".join(str(x) for x in args).rstrip())


# Reactor services


class ScheduledCall:
    """A pending `call_later()`; cancel() is idempotent and safe after it fired."""

    def __init__(self, listener: Any):
        self._listener = listener

    def cancel(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None


def _guarded(fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[[], None]:
    """fn(*args), logging instead of letting an exception reach sippy's dispatcher."""

    def call() -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("unhandled exception in %r", fn)

    return call


class UdpSocket:
    """A UDP socket served by the reactor: each datagram is handed to
    on_datagram(data, (host, port)) on the reactor thread."""

    def __init__(self, laddress: Address, on_datagram: Callable[[bytes, Address], None]):
        self._on_datagram = on_datagram
        opts = _OrderedUdpOpts(laddress, self._received)
        opts.flags = 0  # no SO_REUSEADDR/SO_REUSEPORT: a second bind must fail
        self._server: Udp_server | None = Udp_server({}, opts)

    @property
    def address(self) -> Address:
        """The bound (host, port); the real port when 0 was asked for."""
        if self._server is None:
            raise RuntimeError("socket is closed")
        return tuple(self._server.uopts.laddress)

    def send(self, data: bytes, address: Address) -> None:
        """Queue one datagram; never blocks."""
        if self._server is None:
            raise RuntimeError("socket is closed")
        self._server.send_to(data, tuple(address))

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()

    def _received(self, data: bytes, remote: Any, _server: Any, _rtime: Any) -> None:
        try:
            self._on_datagram(data, tuple(remote.address))
        except Exception:
            log.exception("unhandled exception handling a datagram from %s", remote)


# Legs


class LegState(enum.Enum):
    CALLING = "calling"  # INVITE sent, nothing but 100 back yet
    RINGING = "ringing"  # 18x received
    ANSWERED = "answered"  # 2xx received, ACKed
    ENDED = "ended"  # failed, cancelled or hung up


class LegHandler:
    """What a leg reports; subclass and override. Every method runs on the reactor thread.

    Exactly one of on_failed / on_disconnected ends every leg. For an end the
    engine caused itself (`Leg.hang_up()`), it comes on the next reactor turn,
    never from inside hang_up(). A handler may call hang_up() and originate().
    """

    def on_ringing(self, leg: Leg) -> None:
        pass

    def on_answered(self, leg: Leg, sdp: str) -> None:
        pass

    def on_failed(self, leg: Leg, code: int, reason: str) -> None:
        """Never answered: the far end's final reply, 408 on ring timeout or no
        reply at all, 487 when hang_up() cancelled it."""

    def on_disconnected(self, leg: Leg, by: str) -> None:
        """Answered, then ended: by is "remote" (their BYE) or "local" (hang_up())."""

    def on_dtmf(self, leg: Leg, digit: str) -> None:
        pass


class _LegTry(CCEventTry):
    """The INVITE event, fixing the R-URI and To after sippy built them from the next hop."""

    to_url: SipURL | None = None

    def onUacSetupComplete(self, uac: UA) -> None:  # sippy's hook, called before the INVITE goes out
        uac.rTarget = self.to_url.getCopy()
        uac.rUri = SipTo(address=SipAddress(url=self.to_url.getCopy(), hadbrace=True))


class Leg:
    """One outgoing call. Create with `SipEndpoint.originate()`."""

    def __init__(self, endpoint: SipEndpoint, leg_id: str, to_uri: str, from_user: str, handler: LegHandler):
        self.leg_id = leg_id
        self.to_uri = to_uri
        self.from_user = from_user
        self.state = LegState.CALLING
        self.remote_sdp: str | None = None
        self.call_id: str | None = None
        self._endpoint = endpoint
        self._handler = handler
        self._ua: UA | None = None
        self._ring_timer: ScheduledCall | None = None

    def __repr__(self) -> str:
        return f"<Leg {self.leg_id} {self.state.value} {self.to_uri}>"

    def dialog(self) -> dict[str, Any] | None:
        """The answered leg's SIP dialog as JSON-able data (see `SipEndpoint.resume`); None before."""
        if self.state is not LegState.ANSWERED or self._ua is None:
            return None
        ua, local = self._ua, self._endpoint.sip_address
        (host, port), transport = ua.rAddr
        return {
            "call_id": str(ua.cId),
            "local": ua.lUri.localStr(local),
            "remote": ua.rUri.localStr(local),
            "target": ua.rTarget.localStr(local),
            "routes": [route.localStr(local) for route in ua.routes],
            "next_hop": [host, port, str(transport)],
            "cseq": ua.lCSeq,
            "contact": ua.lContact.localStr(local),
            "local_sdp": str(ua.lSDP) if ua.lSDP is not None else None,
            "remote_sdp": self.remote_sdp,
        }

    def refresh_target(self) -> None:
        """Tell the far end to send this dialog's requests here (a re-INVITE with our Contact).

        For a leg resumed by another engine than the one that placed it: the
        far end still sends its BYE to the old engine's address. The offer is
        the same SDP under a new version, so media stay as they are.
        """
        self._endpoint._check_thread()
        ua = self._ua
        if self.state is not LegState.ANSWERED or ua is None or ua.lSDP is None:
            return
        ua.lContact = SipContact(address=SipAddress(url=SipURL(username=self.from_user), hadbrace=True))
        ua.recvEvent(CCEventUpdate(MsgBody(_next_version(str(ua.lSDP)))))
        log.info("leg %s: re-INVITE to move the dialog to this engine", self.leg_id)

    def pending(self) -> dict[str, Any] | None:
        """The INVITE of a leg not answered yet, as sent, and where to (see `cancel_pending`)."""
        if self.state not in (LegState.CALLING, LegState.RINGING) or self._ua is None or self._ua.tr is None:
            return None
        tr = self._ua.tr
        invite = tr.data.decode("utf-8", "replace") if isinstance(tr.data, bytes) else str(tr.data)
        return {"invite": invite, "next_hop": list(tr.address)}

    def hang_up(self) -> None:
        """End the call: BYE when answered, CANCEL while calling/ringing; no-op once ended."""
        self._endpoint._check_thread()
        if self.state is LegState.ENDED:
            return
        answered = self.state is LegState.ANSWERED
        self._end("hung up locally")
        # Next turn: called from on_answered, sippy has not sent the ACK yet.
        self._endpoint.call_soon(self._release, answered)

    # sippy side

    def _release(self, answered: bool) -> None:
        self._ua.recvEvent(CCEventDisconnect(origin="caller"))
        if answered:
            self._handler.on_disconnected(self, "local")
        else:
            self._handler.on_failed(self, 487, "Request Terminated")

    def _start(self, ua: UA, event: _LegTry, ring_timeout: float) -> None:
        self._ua = ua
        ua.recvEvent(event)
        self.call_id = str(ua.cId)
        self._ring_timer = self._endpoint.call_later(ring_timeout, self._ring_expired)
        log.info(
            "leg %s: calling %s from %s (call-id %s)", self.leg_id, self.to_uri, self.from_user, self.call_id
        )

    def _set_state(self, state: LegState, why: str) -> None:
        log.info("leg %s: %s -> %s (%s)", self.leg_id, self.state.value, state.value, why)
        self.state = state

    def _end(self, why: str) -> None:
        self._set_state(LegState.ENDED, why)
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None
        self._endpoint._forget(self)

    def _ring_expired(self) -> None:
        self._ring_timer = None
        if self.state not in (LegState.CALLING, LegState.RINGING):
            return
        self._end("ring timeout, cancelling")
        self._ua.recvEvent(CCEventDisconnect(origin="caller"))
        self._handler.on_failed(self, 408, "Request Timeout")

    def _on_event(self, event: Any, ua: UA) -> None:
        """sippy's event_cb: what the far end did."""
        try:
            self._dispatch(event, ua)
        except Exception:
            log.exception("leg %s: failed handling %s", self.leg_id, event)

    def _dispatch(self, event: Any, ua: UA) -> None:
        data = event.getData()
        if isinstance(event, CCEventInfo):
            self._info(data)
        elif self.state is LegState.ENDED:
            log.debug("leg %s: %s after the end, ignored", self.leg_id, event)
        elif isinstance(event, CCEventRing):
            code, reason, body = data
            if body is not None:
                self.remote_sdp = str(body)
            if code > 100 and self.state is LegState.CALLING:
                self._set_state(LegState.RINGING, f"{code} {reason}")
                self._handler.on_ringing(self)
        elif isinstance(event, (CCEventConnect, CCEventPreConnect)):
            code, reason, body = data[:3]
            if self.state is LegState.ANSWERED:
                return
            if self._ring_timer is not None:
                self._ring_timer.cancel()
                self._ring_timer = None
            self.remote_sdp = str(body) if body is not None else ""
            self._set_state(LegState.ANSWERED, f"{code} {reason}")
            self._handler.on_answered(self, self.remote_sdp)
        elif isinstance(event, (CCEventFail, CCEventRedirect)):
            code, reason = data[0], data[1]
            self._end(f"{code} {reason}")
            self._handler.on_failed(self, code, reason)
        elif isinstance(event, CCEventDisconnect):
            if self.state is LegState.ANSWERED:
                self._end("BYE from the far end")
                self._handler.on_disconnected(self, "remote")
            else:
                self._end("disconnected before answer")
                self._handler.on_failed(self, 487, "Request Terminated")
        elif isinstance(event, CCEventUpdate):
            # A re-INVITE (hold, codec change): keep our media, answer with our SDP.
            if data is not None:
                self.remote_sdp = str(data)
            log.info("leg %s: re-INVITE from the far end, answering with our SDP", self.leg_id)
            self._endpoint.call_soon(self._answer_reinvite, ua)

    def _answer_reinvite(self, ua: UA) -> None:
        if self.state is LegState.ANSWERED and ua.lSDP is not None:
            ua.recvEvent(CCEventConnect((200, "OK", ua.lSDP.getCopy())))

    def _info(self, body: MsgBody | None) -> None:
        # sippy has already answered 200; a body we do not understand is ignored.
        if body is None or self.state is not LegState.ANSWERED:
            return
        try:
            digit = parse_sip_info(body.getType(), str(body.content))
        except Exception:
            digit = None
        if digit is None:
            log.info("leg %s: INFO without a DTMF digit ignored", self.leg_id)
            return
        log.info("leg %s: DTMF %s", self.leg_id, digit)
        self._handler.on_dtmf(self, digit)


# The endpoint


class SipEndpoint:
    """The engine's SIP user agent on one ip:port, and the reactor it runs on."""

    def __init__(
        self,
        listen: Address,
        on_trigger: TriggerHandler,
        *,
        trusted: Collection[str],
        outbound_proxy: Address | None = None,
        user_agent: str = USER_AGENT,
    ):
        self._thread = threading.get_ident()
        # sippy's reactor is created at import, owned by the importing thread; it is ours.
        ED2.my_ident = self._thread
        self._on_trigger = on_trigger
        self.trusted = frozenset(canonical_ip(ip) for ip in trusted)
        self._refusals = LogLimiter()
        self.outbound_proxy = outbound_proxy
        self.user_agent = user_agent
        self._legs: dict[str, Leg] = {}
        self._sockets: list[UdpSocket] = []
        self._config: dict[str, Any] = {
            "_sip_address": listen[0],
            "_sip_port": int(listen[1]),
            "_sip_logger": _WireLog(),
        }
        self._tm: SipTransactionManager | None = _TransactionManager(self._config, self._recv_request)
        self._config["_sip_tm"] = self._tm
        self.address: Address = tuple(self._tm.l4r.getServer(None).uopts.laddress)
        log.info("SIP endpoint listening on udp:%s:%d", *self.address)

    # reactor services

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> ScheduledCall:
        """Run fn(*args) on the reactor after `seconds`; reactor thread only."""
        self._check_thread()
        return ScheduledCall(Timeout(_guarded(fn, args), max(0.0, seconds)))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> ScheduledCall:
        """Run fn(*args) on the next reactor turn; reactor thread only."""
        return self.call_later(0.0, fn, *args)

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the reactor thread; callable from any thread."""
        ED2.callFromThread(_guarded(fn, args))

    def open_udp(self, laddress: Address, on_datagram: Callable[[bytes, Address], None]) -> UdpSocket:
        """A UDP socket whose datagrams arrive on the reactor; closed with the endpoint."""
        sock = UdpSocket(laddress, on_datagram)
        self._sockets.append(sock)
        return sock

    def run(self) -> None:
        """Serve until stop(); then close the SIP and UDP sockets."""
        self._check_thread()
        try:
            ED2.loop(freq=REACTOR_HZ)
        finally:
            self.close()

    def stop(self) -> None:
        """Make run() return; callable from any thread."""
        ED2.callFromThread(ED2.breakLoop)

    def close(self) -> None:
        """Close the sockets (run() does it on its way out); idempotent."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._tm is not None:
            tm, self._tm = self._tm, None
            tm.shutdown()
            log.info("SIP endpoint closed")

    # outgoing calls

    def originate(
        self,
        leg_id: str,
        to_uri: str,
        from_user: str,
        sdp_body: str,
        ring_timeout: float,
        handler: LegHandler,
        *,
        next_hop: Address | None = None,
    ) -> Leg:
        """Call to_uri presenting from_user (From and P-Asserted-Identity) with
        the SDP offer sdp_body; CANCEL after ring_timeout s without an answer.

        The INVITE goes to next_hop, else the endpoint's outbound proxy, else
        the R-URI's host:port. Reactor thread only.
        """
        self._check_thread()
        if self._tm is None:
            raise RuntimeError("endpoint is closed")
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id!r} is still active")
        to_url = SipURL(to_uri)
        if not to_url.username:
            raise ValueError(f"no user part in {to_uri!r}")
        hop = next_hop or self.outbound_proxy or to_url.getAddr()
        leg = Leg(self, leg_id, to_uri, from_user, handler)
        ua = UA(self._config, event_cb=leg._on_event, nh_address=tuple(hop))
        ua.local_ua = self.user_agent
        # sippy's default Contact carries the display name "Anonymous"; the user is set by sippy.
        ua.lContact = SipContact(address=SipAddress(url=SipURL(), hadbrace=True))
        body = MsgBody(_crlf(sdp_body))
        event = _LegTry((None, from_user, to_url.username, body, None, None))
        event.to_url = to_url
        event.extra_headers = (self._pai(from_user),)
        self._legs[leg_id] = leg
        try:
            leg._start(ua, event, ring_timeout)
        except Exception:
            self._legs.pop(leg_id, None)
            raise
        return leg

    def resume(self, leg_id: str, to_uri: str, from_user: str, dialog: dict[str, Any],
               handler: LegHandler) -> Leg:
        """An answered leg of an earlier process, from its `Leg.dialog()`; reactor thread only."""
        self._check_thread()
        if self._tm is None:
            raise RuntimeError("endpoint is closed")
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id!r} is still active")
        host, port, transport = dialog["next_hop"]
        leg = Leg(self, leg_id, to_uri, from_user, handler)
        ua = UA(self._config, event_cb=leg._on_event, nh_address=(host, int(port)), nh_transport=transport)
        ua.local_ua = self.user_agent
        ua.cId = SipCallId(dialog["call_id"])
        ua.lUri, ua.rUri = _parsed(SipFrom(dialog["local"])), _parsed(SipTo(dialog["remote"]))
        ua.lTag = ua.lUri.getTag()
        ua.rTarget = SipURL(dialog["target"])
        ua.routes = [_parsed(SipRoute(route)) for route in dialog["routes"]]
        ua.lContact = _parsed(SipContact(dialog["contact"]))
        ua.lCSeq = int(dialog["cseq"])
        if dialog.get("local_sdp"):
            ua.lSDP = MsgBody(dialog["local_sdp"])
        if dialog.get("remote_sdp"):
            ua.rSDP = MsgBody(dialog["remote_sdp"])
        ua.changeState((UaStateConnected,))
        self._tm.regConsumer(ua, str(ua.cId))
        leg._ua, leg.call_id, leg.remote_sdp = ua, str(ua.cId), dialog.get("remote_sdp")
        leg.state = LegState.ANSWERED
        self._legs[leg_id] = leg
        log.info("leg %s: resumed answered call to %s (call-id %s)", leg_id, to_uri, leg.call_id)
        return leg

    def cancel_pending(self, pending: dict[str, Any]) -> None:
        """CANCEL an INVITE an earlier process sent (`Leg.pending()`), whose answer nobody awaits."""
        self._check_thread()
        if self._tm is None:
            raise RuntimeError("endpoint is closed")
        invite = SipRequest(pending["invite"])
        host, port = pending["next_hop"]
        invite.setTarget(((host, int(port)), "udp"))
        self._tm.newTransaction(invite.genCANCEL())
        log.info("INVITE %s of an earlier process cancelled", invite.getHFBody("call-id"))

    @property
    def sip_address(self) -> Any:
        """This endpoint's address as sippy renders it into messages."""
        return self._tm.l4r.getServer(None).getSIPaddr()

    def legs(self) -> list[Leg]:
        """The legs not ended yet."""
        return list(self._legs.values())

    @staticmethod
    def _pai(user: str) -> SipHeader:
        url = SipURL(username=user)  # host: our address, filled in when sent
        url.port = url.transport = None
        pai = SipPAssertedIdentity(address=SipAddress(url=url, hadbrace=True))
        return SipHeader(name="p-asserted-identity", body=pai)

    def _forget(self, leg: Leg) -> None:
        if self._legs.get(leg.leg_id) is leg:
            del self._legs[leg.leg_id]

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError("call this on the reactor thread (use call_soon_threadsafe)")

    # incoming requests outside any dialog (sippy's req_cb)

    def _recv_request(self, req: Any, _transaction: Any) -> tuple[Any, None, None]:
        try:
            return self._answer_request(req)
        except Exception:
            log.exception("failed handling a %s, answering %d", req.getMethod(), FALLBACK_CODE)
            return self._reply(req, FALLBACK_CODE, FALLBACK_REASON)

    def _answer_request(self, req: Any) -> tuple[Any, None, None]:
        method = req.getMethod()
        source = req.getSource()
        if not self._is_trusted(source):
            what = "trigger" if method == "INVITE" else method
            self._refusals.log(log, logging.WARNING, "%s from %s:%s refused: not a SIP proxy of this PBX",
                               what, source[0], source[1])
            return self._reply(req, *NOT_A_PROXY)
        if req.getHFBody("to").getTag() is not None:
            return self._reply(req, 481, "Call/Transaction Does Not Exist")
        if method == "INVITE":
            return self._trigger(req)
        if method == "OPTIONS":
            return self._reply(req, 200, "OK")
        if method in ("BYE", "INFO", "CANCEL", "PRACK", "UPDATE"):
            return self._reply(req, 481, "Call/Transaction Does Not Exist")
        return self._reply(req, 405, "Method Not Allowed")

    def _is_trusted(self, source: Address) -> bool:
        try:
            return canonical_ip(str(source[0])) in self.trusted
        except ValueError:
            return False

    def _reply(self, req: Any, code: int, reason: str, extra: ExtraHeaders = ()) -> tuple[Any, None, None]:
        resp = req.genResponse(code, reason, server=self.user_agent)
        for name, value in extra:
            resp.appendHeader(_header(name, value))
        return resp, None, None

    def _trigger(self, req: Any) -> tuple[Any, None, None]:
        did = req.getRURI().username or ""
        caller = _caller(req)
        headers = _headers(req)
        call_id = headers.get("call-id", [""])[0]
        try:
            code, reason, extra = self._on_trigger(did, caller, headers)
            code, reason = int(code), str(reason)
            if not 300 <= code <= 699:
                raise ValueError(f"on_trigger answered {code}: a trigger is never answered")
            reply = self._reply(req, code, reason, extra)
        except Exception:
            log.exception(
                "trigger did=%s caller=%s: handler failed, answering %d", did, caller, FALLBACK_CODE
            )
            code, reason = FALLBACK_CODE, FALLBACK_REASON
            reply = self._reply(req, code, reason)
        log.info("trigger did=%s caller=%s call-id=%s -> %d %s", did, caller, call_id, code, reason)
        return reply


def _next_version(sdp: str) -> str:
    """The SDP with its o= session version one up (RFC 4566: a new offer of the same session)."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines):
        fields = line.split(" ")
        if line.startswith("o=") and len(fields) >= 6 and fields[2].isdigit():
            fields[2] = str(int(fields[2]) + 1)
            lines[i] = " ".join(fields)
            break
    return _crlf("\n".join(lines))


def _parsed(header: Any) -> Any:
    header.parse()
    return header


def _caller(req: Any) -> str:
    """The caller's user part: P-Asserted-Identity when present and parseable, else From."""
    if req.countHFs("p-asserted-identity") > 0:
        try:
            user = req.getHFBody("p-asserted-identity").getUrl().username
            if user:
                return user
        except Exception:
            log.info(
                "unparseable P-Asserted-Identity %r, using From", str(req.getHF("p-asserted-identity").body)
            )
    return req.getHFBody("from").getUrl().username or ""


def _headers(req: Any) -> Headers:
    """Lower-case header name -> the value of each occurrence, in order."""
    headers: Headers = {}
    for header in req.headers:
        headers.setdefault(header.name, []).append(str(header.body))
    return headers
