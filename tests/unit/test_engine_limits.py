"""The engine's answer to a trigger over a limit: refused without the accept header, so the
edge routes the caller by the DID's scheme, while the neighbouring trigger still gets its call-back."""

import logging
from pathlib import Path

import pytest

from callbackd.config import Settings
from callbackd.engine import ACCEPT_HEADER, AT_CAPACITY, OVER_LIMIT, Engine
from callbackd.limits import MemoryLimits
from callbackd.machine import Prompt
from vpbx.model import load

DID = "+421233000111"
OTHER_DID = "+421233000333"
EMPLOYEE = "+421905111222"
COLLEAGUE = "+421905333444"


class Routing:
    def replaced(self):
        return None


class Reactor:
    """The SIP endpoint's timers, recorded and never fired: a callback stays pending."""

    def call_later(self, seconds, fn, *args):
        return self

    def cancel(self) -> None:
        pass


class Prompts:
    def seconds(self, did: str, language: str) -> dict[str, float]:
        return {name: 1.0 for name in Prompt}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("callbackd.engine.time.time", lambda: clock.now)
    return clock


def make_engine(tmp_path: Path, *, max_concurrent: int = 500, max_per_hour: int = 2) -> Engine:
    callback = {"enabled": True, "list": "sales", "max_per_hour": max_per_hour, "max_per_day": 3}
    config = load({
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_trunks": [
            {"name": "carrier", "address": "127.0.0.5:5080", "inbound_sources": ["127.0.0.5/32"]},
        ],
        "vpbx_number_lists": [{"name": "sales", "numbers": [EMPLOYEE, COLLEAGUE]}],
        "vpbx_routing_schemes": [{"name": "closed", "steps": [{"reject": 480}]}],
        "vpbx_numbers": [
            {"number": DID, "routing": "closed", "callback": dict(callback)},
            {"number": OTHER_DID, "routing": "closed", "callback": dict(callback)},
        ],
        "vpbx_callback_max_concurrent": max_concurrent,
    })
    settings = Settings(
        routing_file=tmp_path / "routing.json", sip_listen=("127.0.0.1", 5070), proxy=("127.0.0.1", 5060),
        trusted_proxies=frozenset({"127.0.0.1"}), rtpengine_ng=("127.0.0.1", 2223),
        dtmf_listen=("127.0.0.1", 5071), pcap_dir=tmp_path, recordings_dir=tmp_path,
        cdr_file=tmp_path / "cdr.jsonl", log_file=None, prompts_dir=tmp_path, client_ring_timeout=45.0)
    engine = Engine(settings, Routing(), config, ng=None, cdr=None, prompts=Prompts(), limits=MemoryLimits())
    engine.sip = Reactor()
    return engine


def trigger(engine: Engine, did: str = DID, employee: str = EMPLOYEE):
    headers = {"call-id": ["c1"], "x-vpbx-did": [did], "x-vpbx-employee": [employee]}
    return engine.on_trigger(did, employee, headers)


def accepted(reply) -> bool:
    return ACCEPT_HEADER in reply[2]


def end(engine: Engine, did: str = DID, employee: str = EMPLOYEE) -> None:
    """The callback is over (as its Finished does it), so the next trigger may place another."""
    engine.forget(engine.sessions[(did, employee)])


def test_a_trigger_over_the_hourly_limit_is_refused_without_the_accept_header_and_logged(
        tmp_path, clock, caplog):
    engine = make_engine(tmp_path)
    for _ in range(2):
        assert accepted(trigger(engine))
        end(engine)
    with caplog.at_level(logging.WARNING, logger="callbackd.engine"):
        reply = trigger(engine)
    assert reply == OVER_LIMIT and not accepted(reply)
    assert reply[0] != 200
    assert engine.sessions == {}
    assert (f"callback limit: {EMPLOYEE} on {DID}: 2 call-backs in the last hour (max_per_hour 2), "
            "routed by the scheme") in caplog.text


def test_beside_a_refused_employee_a_colleague_and_another_did_still_get_their_call_backs(tmp_path, clock):
    engine = make_engine(tmp_path)
    for _ in range(2):
        trigger(engine)
        end(engine)
    assert trigger(engine) == OVER_LIMIT
    assert accepted(trigger(engine, employee=COLLEAGUE))
    assert accepted(trigger(engine, did=OTHER_DID))
    assert set(engine.sessions) == {(DID, COLLEAGUE), (OTHER_DID, EMPLOYEE)}


def test_a_repeated_trigger_of_a_pending_callback_is_accepted_and_not_counted(tmp_path, clock):
    engine = make_engine(tmp_path)
    for _ in range(5):
        assert accepted(trigger(engine))  # one call-back, pending, however often the employee calls
    end(engine)
    assert accepted(trigger(engine))  # the second call-back of the hour
    end(engine)
    assert trigger(engine) == OVER_LIMIT


def test_the_daily_limit_refuses_once_the_hours_have_passed(tmp_path, clock):
    engine = make_engine(tmp_path)
    for _ in range(3):
        assert accepted(trigger(engine))
        end(engine)
        clock.now += 3600
    reply = trigger(engine)
    assert reply == OVER_LIMIT
    assert accepted(trigger(engine, employee=COLLEAGUE))


def test_a_trigger_at_the_concurrency_cap_gets_503_and_the_callbacks_in_progress_go_on(
        tmp_path, clock, caplog):
    engine = make_engine(tmp_path, max_concurrent=1)
    assert accepted(trigger(engine))
    with caplog.at_level(logging.WARNING, logger="callbackd.engine"):
        reply = trigger(engine, employee=COLLEAGUE)
    assert reply == AT_CAPACITY and reply[0] == 503 and not accepted(reply)
    assert "callback capacity: 1 callbacks in progress (vpbx_callback_max_concurrent 1)" in caplog.text
    assert list(engine.sessions) == [(DID, EMPLOYEE)]
    # The employee in progress calling again is still the same call-back, not a refusal.
    assert accepted(trigger(engine))


def test_a_trigger_refused_at_capacity_is_not_counted_against_the_employee(tmp_path, clock):
    engine = make_engine(tmp_path, max_concurrent=1, max_per_hour=1)
    trigger(engine)
    assert trigger(engine, employee=COLLEAGUE) == AT_CAPACITY
    end(engine)
    assert accepted(trigger(engine, employee=COLLEAGUE))
