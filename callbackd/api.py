"""The call-back API: POST/GET/DELETE /v1/callbacks, OpenAPI at /v1/openapi.json.

A caller orders a call-back with an API key of the inventory
(vpbx_api_keys): only each token's sha256 is known here, and the sha256 of
what a request brings is compared with every key's (hmac.compare_digest),
so neither a wrong token nor a right one is told by how long the answer
takes. What is ordered is the engine's to carry out (`Orderer`): this
module only authenticates, validates and maps the engine's refusals to
HTTP statuses. A refused key dials nothing: the engine is never asked.
"""

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from vpbx import model

# What the engine says to an order it does not carry out, and the status each gets.
REFUSALS = {
    "did_not_allowed": status.HTTP_403_FORBIDDEN,
    "not_listed": status.HTTP_403_FORBIDDEN,
    "denied": status.HTTP_403_FORBIDDEN,
    "invalid_number": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "over_limit": status.HTTP_429_TOO_MANY_REQUESTS,
    "at_capacity": status.HTTP_503_SERVICE_UNAVAILABLE,
    "store_down": status.HTTP_503_SERVICE_UNAVAILABLE,
}
# An E.164 number or a number as people write it; the engine normalises it by the DID's country.
NUMBER = r"^\+?[0-9 ()./-]{3,32}$"


class Refused(Exception):
    """The engine did not order the call-back; `reason` is one of REFUSALS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class CallbackOrder(BaseModel):
    did: str = Field(pattern=NUMBER, description="The DID the call-back comes from (callback enabled).")
    employee: str = Field(pattern=NUMBER, description="The employee's mobile, on the DID's list.")
    client: str = Field(pattern=NUMBER, description="Whom the employee is connected to.")


class CallbackState(BaseModel):
    id: str
    state: str
    did: str
    employee: str
    client: str | None = None
    result: str | None = None


class Orderer(Protocol):
    """The engine's side, each call run on its reactor."""

    def order(self, key: model.ApiKey, did: str, employee: str, client: str) -> CallbackState:
        """Order the call-back; Refused when the engine will not."""

    def state(self, key: model.ApiKey, callback_id: str) -> CallbackState | None:
        """The call-back's state, None if there is none this key ordered."""

    def cancel(self, key: model.ApiKey, callback_id: str) -> CallbackState | None:
        """End the call-back (its CDR says ended_by api), None if there is none this key ordered."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def key_of(token: str | None, keys: Iterable[model.ApiKey]) -> model.ApiKey | None:
    """The key whose hash is the token's, every key compared (no early exit), None for none."""
    if not token:
        return None
    digest = token_digest(token)
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.token_sha256):
            found = key
    return found


def app(keys: Callable[[], Iterable[model.ApiKey]], orderer: Orderer) -> FastAPI:
    """`keys()`: the API keys of the routing in use, read at each request (a reload applies at once)."""
    api = FastAPI(title="vPBX CallBack", version="1", openapi_url="/v1/openapi.json", docs_url=None,
                  redoc_url=None)
    bearer = HTTPBearer(auto_error=False)

    Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

    def authorised(credentials: Credentials) -> model.ApiKey:
        key = key_of(credentials.credentials if credentials else None, keys())
        if key is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API key is required",
                                headers={"WWW-Authenticate": "Bearer"})
        return key

    Authorised = Annotated[model.ApiKey, Depends(authorised)]

    def refused(exc: Refused) -> HTTPException:
        return HTTPException(REFUSALS.get(exc.reason, status.HTTP_403_FORBIDDEN), exc.detail)

    @api.post("/v1/callbacks", status_code=status.HTTP_201_CREATED, response_model=CallbackState)
    def order(body: CallbackOrder, key: Authorised) -> CallbackState:
        try:
            return orderer.order(key, body.did, body.employee, body.client)
        except Refused as exc:
            raise refused(exc) from None

    def known(found: CallbackState | None) -> CallbackState:
        # An id of another key's is as unknown as one never ordered.
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such call-back")
        return found

    @api.get("/v1/callbacks/{callback_id}", response_model=CallbackState)
    def state(callback_id: str, key: Authorised) -> CallbackState:
        return known(orderer.state(key, callback_id))

    @api.delete("/v1/callbacks/{callback_id}", response_model=CallbackState)
    def cancel(callback_id: str, key: Authorised) -> CallbackState:
        return known(orderer.cancel(key, callback_id))

    return api
