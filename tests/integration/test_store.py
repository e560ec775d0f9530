"""callbackd.store against a real redis-server: limits and claims hold for two engines at once.

The test starts its own redis-server on a unix socket in a temporary
directory (no TCP port, nothing persisted) and stops it at the end; it skips
when redis-server is not installed. Two clients stand for two engines.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("redis", reason="the redis client (callbackd's store) is not installed")

from callbackd.config import Settings
from callbackd.engine import ACCEPT_HEADER, OVER_LIMIT, STORE_DOWN, Engine
from callbackd.last_client import LAST_CLIENT_TTL_S
from callbackd.limits import HOUR_S
from callbackd.machine import Prompt
from callbackd.store import Callbacks, RedisLastClients, RedisLimits, StoreDown, connect
from vpbx.model import load

needs_redis = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
START_WAIT_S = 10.0
DID, EMPLOYEE, COLLEAGUE = "+421233000111", "+421905111222", "+421905333444"


@pytest.fixture
def redis_url(tmp_path: Path):
    socket = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"unix://{socket}"
    deadline = time.monotonic() + START_WAIT_S
    while True:
        try:
            if connect(url).ping():
                break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(10)


pytestmark = needs_redis


def test_the_hourly_limit_refuses_the_next_call_back_and_counts_each_employee_apart(redis_url):
    limits = RedisLimits(connect(redis_url))
    now = 1_800_000_000.0
    assert [limits.admit(DID, EMPLOYEE, 3, 100, now + i) for i in range(3)] == [None] * 3
    refused = limits.admit(DID, EMPLOYEE, 3, 100, now + 3)
    assert (refused.count, refused.window, refused.maximum) == (3, "hour", 3)
    assert limits.admit(DID, COLLEAGUE, 3, 100, now + 3) is None
    # An hour later the window has slid past the first three.
    assert limits.admit(DID, EMPLOYEE, 3, 100, now + HOUR_S + 3) is None


def test_the_daily_limit_is_told_before_the_hourly_one(redis_url):
    limits = RedisLimits(connect(redis_url))
    now = 1_800_000_000.0
    for i in range(4):
        assert limits.admit(DID, EMPLOYEE, 10, 4, now + i * HOUR_S) is None
    refused = limits.admit(DID, EMPLOYEE, 10, 4, now + 4 * HOUR_S)
    assert (refused.window, refused.maximum) == ("day", 4)


def test_two_engines_at_once_never_let_more_than_the_limit_through(redis_url):
    engines = [RedisLimits(connect(redis_url)), RedisLimits(connect(redis_url))]
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def trigger(n: int) -> None:
        start.wait()
        verdict = engines[n % 2].admit(DID, EMPLOYEE, 5, 100, 1_800_000_000.0 + n / 1000)
        with lock:
            admitted.append(verdict is None)

    threads = [threading.Thread(target=trigger, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 5


def test_one_claim_per_employee_and_did_whichever_engine_asks_first(redis_url):
    engines = [Callbacks(connect(redis_url)), Callbacks(connect(redis_url))]
    holders: dict[str, str | None] = {}
    start = threading.Barrier(2)

    def claim(n: int) -> None:
        start.wait()
        holders[f"cb-{n}"] = engines[n].claim(DID, EMPLOYEE, f"cb-{n}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [winner] = [cb for cb, holder in holders.items() if holder is None]
    [loser] = [cb for cb in holders if cb != winner]
    assert holders[loser] == winner
    # Only the holder releases it; then a new call-back may claim it.
    engines[0].release(DID, EMPLOYEE, loser)
    assert engines[1].claim(DID, EMPLOYEE, "cb-2") == winner
    engines[0].release(DID, EMPLOYEE, winner)
    assert engines[1].claim(DID, EMPLOYEE, "cb-2") is None
    assert engines[1].claim(DID, COLLEAGUE, "cb-3") is None


def test_only_the_holder_renews_its_lease(redis_url):
    callbacks = Callbacks(connect(redis_url))
    assert callbacks.claim(DID, EMPLOYEE, "cb-1") is None
    assert callbacks.renew(DID, EMPLOYEE, "cb-1") is True
    assert callbacks.renew(DID, EMPLOYEE, "cb-2") is False
    callbacks.release(DID, EMPLOYEE, "cb-1")
    assert callbacks.renew(DID, EMPLOYEE, "cb-1") is False


def test_a_record_saved_by_one_engine_is_owed_until_forgotten(redis_url):
    writer, reader = Callbacks(connect(redis_url)), Callbacks(connect(redis_url))
    assert writer.save("e1", "cb-1", {"state": "waiting", "due_at": 12.5}, now=1.0)
    assert writer.save("e1", "cb-1", {"state": "calling_employee", "due_at": None}, now=2.0)
    assert writer.save("e1", "cb-2", {"state": "waiting"}, now=3.0)
    assert reader.owed() == {"cb-1": {"state": "calling_employee", "due_at": None, "engine": "e1"},
                             "cb-2": {"state": "waiting", "engine": "e1"}}
    writer.forget("cb-1")
    assert list(reader.owed()) == ["cb-2"]


def test_only_the_callbacks_of_a_dead_engine_are_taken_over_and_by_one_engine(redis_url):
    dead, alive, other = (Callbacks(connect(redis_url)) for _ in range(3))
    record = {"did": DID, "employee": EMPLOYEE}
    dead.save("e1", "cb-1", record, now=1.0)
    alive.heartbeat("e2")
    alive.save("e2", "cb-2", {"did": DID, "employee": COLLEAGUE}, now=1.0)
    assert dead.claim(DID, EMPLOYEE, "e1/cb-1") is None
    # e1 never beat (or its heartbeat lapsed): its callback is an orphan, e2's is not.
    assert alive.orphans() == {"cb-1": "e1"}
    assert alive.take_over("cb-2", record, "e3") is False
    assert alive.take_over("cb-1", record, "e2") is True
    assert other.take_over("cb-1", record, "e3") is False  # e2 is alive and owns it now
    assert alive.owed()["cb-1"]["engine"] == "e2"
    # The claim moved with it: the employee's repeated trigger still finds it served.
    assert alive.claim(DID, EMPLOYEE, "e3/cb-9") == "e2/cb-1"
    # The engine taken for dead can no longer write the record it lost.
    assert dead.save("e1", "cb-1", record, now=2.0) is False
    assert alive.orphans() == {}


def test_the_last_client_is_every_engines_and_lapses_by_itself(redis_url):
    first, second = RedisLastClients(connect(redis_url)), RedisLastClients(connect(redis_url))
    now = 1_800_000_000.0
    assert first.get(DID, EMPLOYEE, now) is None
    first.put(DID, EMPLOYEE, "+421905123456", now)
    second.put(DID, EMPLOYEE, "+421905999888", now + 1)
    assert first.get(DID, EMPLOYEE, now + 2) == "+421905999888"
    assert second.get(DID, COLLEAGUE, now + 2) is None
    ttl = connect(redis_url).ttl(f"vpbx:last_client:{DID}:{EMPLOYEE}")
    assert LAST_CLIENT_TTL_S - 60 < ttl <= LAST_CLIENT_TTL_S


def test_a_store_that_does_not_answer_is_reported_down(tmp_path):
    nobody = f"unix://{tmp_path / 'nobody.sock'}"
    with pytest.raises(StoreDown):
        RedisLimits(connect(nobody)).admit(DID, EMPLOYEE, 3, 100, 0.0)
    with pytest.raises(StoreDown):
        Callbacks(connect(nobody)).claim(DID, EMPLOYEE, "cb-1")
    with pytest.raises(StoreDown):
        RedisLastClients(connect(nobody)).get(DID, EMPLOYEE, 0.0)


# -- two engines sharing the store ---------------------------------------------------

class _Routing:
    def replaced(self):
        return None


class _Reactor:
    """Timers recorded and never fired: a callback stays pending while the test looks."""

    def call_later(self, seconds, fn, *args):
        return self

    def cancel(self) -> None:
        pass


class _Prompts:
    def seconds(self, did: str, language: str) -> dict[str, float]:
        return {name: 1.0 for name in Prompt}


def engine_on(redis_url: str, tmp_path: Path, max_per_hour: int = 20):
    config = load({
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_trunks": [{"name": "carrier", "address": "127.0.0.5:5080",
                         "inbound_sources": ["127.0.0.5/32"]}],
        "vpbx_number_lists": [{"name": "sales", "numbers": [EMPLOYEE, COLLEAGUE]}],
        "vpbx_routing_schemes": [{"name": "closed", "steps": [{"reject": 480}]}],
        "vpbx_numbers": [{"number": DID, "routing": "closed",
                          "callback": {"enabled": True, "list": "sales", "max_per_hour": max_per_hour}}],
    })
    settings = Settings(
        routing_file=tmp_path / "routing.json", sip_listen=("127.0.0.1", 5070), proxy=("127.0.0.1", 5060),
        trusted_proxies=frozenset({"127.0.0.1"}), rtpengine_ng=("127.0.0.1", 2223),
        dtmf_listen=("127.0.0.1", 5071), pcap_dir=tmp_path, recordings_dir=tmp_path,
        cdr_file=tmp_path / "cdr.jsonl", log_file=None, prompts_dir=tmp_path, client_ring_timeout=45.0,
        state_store=redis_url)
    client = connect(redis_url)
    engine = Engine(settings, _Routing(), config, ng=None, cdr=None, prompts=_Prompts(),
                    limits=RedisLimits(client), claims=Callbacks(client))
    engine.sip = _Reactor()
    return engine


def on_trigger(engine, employee: str = EMPLOYEE):
    return engine.on_trigger(DID, employee, {"call-id": ["c1"], "x-vpbx-did": [DID],
                                             "x-vpbx-employee": [employee]})


def test_the_same_employee_triggering_on_two_engines_gets_one_call_back(redis_url, tmp_path):
    first, second = engine_on(redis_url, tmp_path), engine_on(redis_url, tmp_path)
    assert ACCEPT_HEADER in on_trigger(first)[2]
    # The second engine says "call-back follows" too (the caller's call is
    # refused the same way) but places nothing: the first one holds it.
    assert ACCEPT_HEADER in on_trigger(second)[2]
    assert list(first.sessions) == [(DID, EMPLOYEE)] and second.sessions == {}
    # A colleague is called back by whichever engine takes the trigger.
    assert ACCEPT_HEADER in on_trigger(second, COLLEAGUE)[2]
    # Once the first callback is over, the employee may trigger again, on either engine.
    first.forget(first.sessions[(DID, EMPLOYEE)])
    assert ACCEPT_HEADER in on_trigger(second)[2] and (DID, EMPLOYEE) in second.sessions


def test_the_hourly_limit_counts_the_call_backs_of_every_engine(redis_url, tmp_path):
    engines = [engine_on(redis_url, tmp_path, max_per_hour=2), engine_on(redis_url, tmp_path, max_per_hour=2)]
    for engine in engines:
        assert ACCEPT_HEADER in on_trigger(engine)[2]
        engine.forget(engine.sessions[(DID, EMPLOYEE)])
    assert on_trigger(engines[0]) == OVER_LIMIT
    assert ACCEPT_HEADER in on_trigger(engines[1], COLLEAGUE)[2]


def test_with_the_store_down_the_trigger_is_routed_by_the_scheme_and_nothing_is_placed(redis_url, tmp_path):
    engine = engine_on(f"unix://{tmp_path / 'nobody.sock'}", tmp_path)
    assert on_trigger(engine) == STORE_DOWN
    assert engine.sessions == {}


def test_a_restarted_engine_releases_the_claims_it_held_and_no_other_engines(redis_url, tmp_path):
    # Until an engine resumes what it owed, a claim it lost would make the
    # employee's next trigger look served while nobody calls back.
    before, other = engine_on(redis_url, tmp_path), engine_on(redis_url, tmp_path)
    other.name = "127.0.0.2:5070"
    on_trigger(before)
    on_trigger(other, COLLEAGUE)
    restarted = engine_on(redis_url, tmp_path)
    restarted.attach(_Reactor())
    assert ACCEPT_HEADER in on_trigger(restarted)[2] and (DID, EMPLOYEE) in restarted.sessions
    # The colleague's call-back, on the other engine, is still that engine's.
    assert ACCEPT_HEADER in on_trigger(restarted, COLLEAGUE)[2]
    assert (DID, COLLEAGUE) not in restarted.sessions


def test_an_engine_that_died_is_taken_over_and_one_taken_for_dead_lets_go(redis_url, tmp_path):
    dead, alive = engine_on(redis_url, tmp_path), engine_on(redis_url, tmp_path)
    alive.name = "127.0.0.2:5070"
    assert ACCEPT_HEADER in on_trigger(dead)[2]  # an owed call-back; its engine never beats again
    alive.claims.heartbeat(alive.name)
    alive._keep_alive()
    assert (DID, EMPLOYEE) in alive.sessions
    # The employee's repeated trigger, on either engine, makes no second call-back.
    assert ACCEPT_HEADER in on_trigger(alive)[2] and len(alive.sessions) == 1
    # The first engine was only slow: its next save finds the callback another's.
    dead.persist(dead.sessions[(DID, EMPLOYEE)])
    assert dead.sessions == {}
