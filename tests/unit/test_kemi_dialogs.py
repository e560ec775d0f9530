"""In-dialog requests: relayed for a dialog any edge of the PBX set up, refused (481) for any other.

The edge signs the Record-Route of every dialog it relays (RouteSigner); an
in-dialog request is relayed when its Route carries that signature for its
Call-ID and tags, whichever edge signed it and however often it restarted
since. The KEMI layer runs against the recording KSR stand-in of conftest.py.
"""

import pytest

from vpbx import wire

KEY = "k" * 64
CALL_ID = "a84b4c76e66710@pc33.example.com"
CALLER_TAG = "1928301774"
CALLEE_TAG = "a6c85cf"
NOW = 1_800_000_000.0
LIFETIME = 43200


@pytest.fixture
def signer(script):
    return script.RouteSigner(KEY, LIFETIME)


def route(params: str) -> str:
    return f"sip:127.0.0.1:5060;lr;ftag={CALLER_TAG}{params}"


def test_a_signed_route_verifies_in_both_directions(signer):
    uri = route(signer.params(CALL_ID, CALLER_TAG, False, NOW))
    assert signer.verify(CALL_ID, (CALLER_TAG, CALLEE_TAG), uri, NOW + 60)
    assert signer.verify(CALL_ID, (CALLEE_TAG, CALLER_TAG), uri, NOW + 60)


def test_another_edge_with_the_same_key_verifies_it(script, signer):
    uri = route(signer.params(CALL_ID, CALLER_TAG, False, NOW))
    assert script.RouteSigner(KEY, LIFETIME).verify(CALL_ID, (CALLER_TAG, CALLEE_TAG), uri, NOW)


def test_a_route_without_a_signature_or_with_another_key_is_refused(script, signer):
    assert not signer.verify(CALL_ID, (CALLER_TAG, "x1"), route(""), NOW)
    forged = script.RouteSigner("f" * 64, LIFETIME).params(CALL_ID, CALLER_TAG, False, NOW)
    assert not signer.verify(CALL_ID, (CALLER_TAG, "x1"), route(forged), NOW)


def test_a_signature_is_for_one_call_id_and_one_caller_tag(signer):
    uri = route(signer.params(CALL_ID, CALLER_TAG, False, NOW))
    assert not signer.verify("other@pc33.example.com", (CALLER_TAG, CALLEE_TAG), uri, NOW)
    assert not signer.verify(CALL_ID, ("other", CALLEE_TAG), uri.replace(CALLER_TAG, "other"), NOW)
    # The Route's ftag must be one of the request's tags.
    assert not signer.verify(CALL_ID, ("x", "y"), uri, NOW)


def test_a_signed_route_expires_after_the_dialog_lifetime(signer):
    uri = route(signer.params(CALL_ID, CALLER_TAG, False, NOW))
    assert signer.verify(CALL_ID, (CALLER_TAG, CALLEE_TAG), uri, NOW + LIFETIME)
    assert not signer.verify(CALL_ID, (CALLER_TAG, CALLEE_TAG), uri, NOW + LIFETIME + 1)
    # Nor can the expiry be moved: it is signed.
    later = uri.replace(f"vpbx_exp={int(NOW) + LIFETIME}", f"vpbx_exp={int(NOW) + 10 * LIFETIME}")
    assert later != uri
    assert not signer.verify(CALL_ID, (CALLER_TAG, CALLEE_TAG), later, NOW + LIFETIME + 1)


def test_the_engine_mark_is_signed_too(signer):
    engine = route(signer.params(CALL_ID, CALLER_TAG, True, NOW))
    assert ";vpbx=engine;" in engine
    assert signer.verify(CALL_ID, (CALLER_TAG, CALLEE_TAG), engine, NOW)
    # Added to an edge's dialog, it would skip RTPengine: refused.
    edge = route(signer.params(CALL_ID, CALLER_TAG, False, NOW))
    assert not signer.verify(CALL_ID, (CALLER_TAG, CALLEE_TAG), edge + ";vpbx=engine", NOW)


def test_a_missing_or_short_key_stops_the_router_from_loading(script):
    with pytest.raises(ValueError, match="route key"):
        script.RouteSigner("", LIFETIME)


# -- the KEMI layer ------------------------------------------------------------------

def router(script, signer):
    r = script.VpbxRouter.__new__(script.VpbxRouter)
    r.wire = wire
    r.signer = signer
    return r


def in_dialog(ksr, route_uri, method="BYE", loose_route=1):
    ksr.pvs.update({"$ci": CALL_ID, "$ft": CALLEE_TAG, "$tt": CALLER_TAG, "$si": "192.0.2.7",
                    "$rm": method, "$route_uri": route_uri, "$ru": "sip:+421233999888@127.0.0.5"})
    ksr.answers["siputils.has_totag"] = 1
    ksr.answers["rr.loose_route"] = loose_route
    ksr.answers[f"is_{method}"] = True
    ksr.answers["is_ACK"] = method == "ACK"
    ksr.answers["rr.check_route_param"] = lambda regex: 1 if regex.rstrip("=") in route_uri else -1


def test_the_bye_of_a_signed_dialog_is_relayed_and_ends_its_media(script, ksr, signer, monkeypatch):
    monkeypatch.setattr(script.time, "time", lambda: NOW + 5)
    in_dialog(ksr, route(signer.params(CALL_ID, CALLER_TAG, False, NOW)))
    assert router(script, signer).ksr_route_withindlg() == script.STOP
    assert ksr.called("tm.t_relay") and ksr.called("rtpengine.rtpengine_delete0")
    assert not [a for a in ksr.called("sl.sl_send_reply") if a[0] == 481]


@pytest.mark.parametrize("loose_route", [-1, -3])
def test_an_in_dialog_request_not_routed_by_our_signed_entry_gets_481(script, ksr, signer, loose_route):
    # -3: the top Route is someone else's (a preloaded route to the trunk, say).
    in_dialog(ksr, route(signer.params(CALL_ID, CALLER_TAG, False, NOW)), method="INVITE",
              loose_route=loose_route)
    assert router(script, signer).ksr_route_withindlg() == script.STOP
    assert ksr.called("sl.sl_send_reply") == [(481, "Call/Transaction Does Not Exist")]
    assert not ksr.called("tm.t_relay")
    assert "in-dialog INVITE from 192.0.2.7 for no dialog of ours refused" in ksr.logged()


def test_a_forged_in_dialog_invite_gets_481_and_is_relayed_nowhere(script, ksr, signer):
    in_dialog(ksr, route(f";vpbx_exp={int(NOW) + 60};vpbx_sig={'0' * 32}"), method="INVITE")
    assert router(script, signer).ksr_route_withindlg() == script.STOP
    assert ksr.called("sl.sl_send_reply") == [(481, "Call/Transaction Does Not Exist")]
    assert not ksr.called("tm.t_relay") and not ksr.called("rtpengine.rtpengine_manage")


def test_every_dialog_the_edge_relays_is_record_routed_with_a_signature(script, ksr, signer, monkeypatch):
    monkeypatch.setattr(script.time, "time", lambda: NOW)
    ksr.pvs.update({"$ci": CALL_ID, "$ft": CALLER_TAG})
    r = router(script, signer)
    r.record_route()
    r.record_route(engine=True)
    plain, engine = (args[0] for args in ksr.called("rr.record_route_params"))
    assert plain == signer.params(CALL_ID, CALLER_TAG, False, NOW)
    assert engine == signer.params(CALL_ID, CALLER_TAG, True, NOW)
    assert not ksr.called("rr.record_route")


# -- replication between the SIP proxies (dmq) -----------------------------------------

def dmq_router(script):
    r = script.VpbxRouter.__new__(script.VpbxRouter)
    r.wire = wire
    r.edge = script.EdgeSettings(dmq_socket="vpbx_dmq", dmq_peers=["10.0.0.1:5062", "10.0.0.2:5062"])
    return r


@pytest.mark.parametrize(("source", "socket", "method", "handled"), [
    ("10.0.0.2", "vpbx_dmq", "KDMQ", True),        # a peer, on the replication socket
    ("192.0.2.7", "vpbx_dmq", "KDMQ", False),      # a stranger there
    ("10.0.0.2", "", "KDMQ", False),               # a peer's KDMQ on the SIP port
    ("10.0.0.2", "vpbx_dmq", "INVITE", False),     # anything but KDMQ there
])
def test_kdmq_is_taken_from_the_peers_on_the_replication_socket_only(script, ksr, source, socket, method,
                                                                     handled):
    ksr.pvs.update({"$si": source, "$Rn": socket, "$rm": method})
    assert dmq_router(script).ksr_route_dmq(ksr.pvs["$si"], ksr.pvs["$rm"]) == script.STOP
    assert bool(ksr.called("dmq.handle_message")) == handled
    assert not ksr.called("sl.sl_send_reply")


def test_sip_on_the_sip_port_is_not_for_dmq(script, ksr):
    ksr.pvs.update({"$si": "192.0.2.7", "$Rn": "", "$rm": "INVITE"})
    assert dmq_router(script).ksr_route_dmq(ksr.pvs["$si"], ksr.pvs["$rm"]) == script.GO_ON
    assert not ksr.called("dmq.handle_message")
