"""Whom `**` redials: the client call placed last per DID and employee, read when a call-back starts."""

from test_engine_limits import COLLEAGUE, DID, EMPLOYEE, OTHER_DID, end, make_engine, trigger

from callbackd.last_client import LAST_CLIENT_TTL_S, MemoryLastClients
from callbackd.store import StoreDown

CLIENT = "+421905123456"
OTHER_CLIENT = "+421905999888"
T0 = 1_700_000_000.0


def test_the_newest_client_is_the_last_one():
    last = MemoryLastClients()
    assert last.get(DID, EMPLOYEE, T0) is None
    last.put(DID, EMPLOYEE, CLIENT, T0)
    last.put(DID, EMPLOYEE, OTHER_CLIENT, T0 + 1)
    assert last.get(DID, EMPLOYEE, T0 + 2) == OTHER_CLIENT


def test_the_last_client_is_the_employees_own_on_that_did():
    last = MemoryLastClients()
    last.put(DID, EMPLOYEE, CLIENT, T0)
    assert last.get(DID, COLLEAGUE, T0) is None
    assert last.get(OTHER_DID, EMPLOYEE, T0) is None


def test_a_last_client_lapses_after_its_ttl():
    last = MemoryLastClients()
    last.put(DID, EMPLOYEE, CLIENT, T0)
    assert last.get(DID, EMPLOYEE, T0 + LAST_CLIENT_TTL_S - 1) == CLIENT
    assert last.get(DID, EMPLOYEE, T0 + LAST_CLIENT_TTL_S) is None


def test_the_client_dialled_is_what_the_next_call_back_redials(tmp_path):
    engine = make_engine(tmp_path)
    trigger(engine)
    assert engine.sessions[(DID, EMPLOYEE)].machine.last_client is None
    engine.remember_client(DID, EMPLOYEE, CLIENT)
    end(engine)
    trigger(engine)
    trigger(engine, employee=COLLEAGUE)
    assert engine.sessions[(DID, EMPLOYEE)].machine.last_client == CLIENT
    assert engine.sessions[(DID, COLLEAGUE)].machine.last_client is None


class DownStore:
    def get(self, did, employee, now):
        raise StoreDown("connection refused")

    def put(self, did, employee, e164, now):
        raise StoreDown("connection refused")


def test_a_store_that_is_down_has_no_last_client_and_the_call_back_goes_on(tmp_path, caplog):
    engine = make_engine(tmp_path)
    engine.last_clients = DownStore()
    engine.remember_client(DID, EMPLOYEE, CLIENT)
    trigger(engine)
    assert engine.sessions[(DID, EMPLOYEE)].machine.last_client is None
    assert "no last client" in caplog.text and "not kept" in caplog.text
