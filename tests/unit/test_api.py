"""The call-back API's own part: who is let in, what is a valid order, what each refusal is."""

import pytest
from fastapi.testclient import TestClient

from callbackd.api import CallbackState, Refused, app, key_of, token_digest
from vpbx.model import ApiKey

TOKEN = "unit-api-token"
KEY = ApiKey("crm", token_digest(TOKEN), frozenset({"+421233000111"}))
OTHER = ApiKey("other", token_digest("unit-other-token"), frozenset({"+421233000222"}))
ORDER = {"did": "+421233000111", "employee": "+421905111222", "client": "+421905999888"}


class FakeEngine:
    def __init__(self, refusal: Refused | None = None):
        self.orders, self.refusal = [], refusal

    def order(self, key, did, employee, client):
        if self.refusal is not None:
            raise self.refusal
        self.orders.append((key.name, did, employee, client))
        return CallbackState(id="abc123", state="waiting", did=did, employee=employee, client=client)

    def state(self, key, callback_id):
        return CallbackState(id=callback_id, state="bridged", did=ORDER["did"], employee=ORDER["employee"]) \
            if callback_id == "abc123" else None

    def cancel(self, key, callback_id):
        return self.state(key, callback_id)


@pytest.fixture
def engine():
    return FakeEngine()


def client_of(engine):
    return TestClient(app(lambda: (OTHER, KEY), engine))


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_the_key_of_a_token_is_found_by_its_sha256():
    assert key_of(TOKEN, [OTHER, KEY]) is KEY
    assert key_of("unit-wrong-token", [OTHER, KEY]) is None
    assert key_of("", [KEY]) is None and key_of(None, [KEY]) is None


def test_a_good_key_orders_a_call_back(engine):
    reply = client_of(engine).post("/v1/callbacks", json=ORDER, headers=bearer(TOKEN))
    assert reply.status_code == 201 and reply.json()["id"] == "abc123"
    assert engine.orders == [("crm", *ORDER.values())]


@pytest.mark.parametrize("headers", [{}, bearer("unit-wrong-token"), {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_a_wrong_or_missing_key_gets_401_and_the_engine_is_never_asked(engine, headers):
    reply = client_of(engine).post("/v1/callbacks", json=ORDER, headers=headers)
    assert reply.status_code == 401
    assert engine.orders == []


@pytest.mark.parametrize("change", [{"did": "sales"}, {"client": ""}, {"employee": None},
                                    {"client": "+421 905; DROP"}])
def test_a_bad_order_gets_422(engine, change):
    reply = client_of(engine).post("/v1/callbacks", json={**ORDER, **change}, headers=bearer(TOKEN))
    assert reply.status_code == 422
    assert engine.orders == []


def test_an_order_without_a_client_gets_422(engine):
    body = {k: v for k, v in ORDER.items() if k != "client"}
    assert client_of(engine).post("/v1/callbacks", json=body, headers=bearer(TOKEN)).status_code == 422


@pytest.mark.parametrize(("reason", "code"), [("did_not_allowed", 403), ("not_listed", 403), ("denied", 403),
                                              ("over_limit", 429), ("at_capacity", 503)])
def test_each_refusal_of_the_engine_has_its_status(reason, code):
    reply = client_of(FakeEngine(Refused(reason, "unit"))).post("/v1/callbacks", json=ORDER,
                                                               headers=bearer(TOKEN))
    assert reply.status_code == code


def test_get_and_delete_report_the_state_or_404(engine):
    client = client_of(engine)
    assert client.get("/v1/callbacks/abc123", headers=bearer(TOKEN)).json()["state"] == "bridged"
    assert client.get("/v1/callbacks/nope", headers=bearer(TOKEN)).status_code == 404
    assert client.delete("/v1/callbacks/abc123", headers=bearer(TOKEN)).status_code == 200
    assert client.get("/v1/callbacks/abc123").status_code == 401


def test_the_openapi_description_is_served():
    paths = client_of(FakeEngine()).get("/v1/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/callbacks", "/v1/callbacks/{callback_id}"}
