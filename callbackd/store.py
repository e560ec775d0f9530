"""What the callback engines share and must not forget, in Redis.

One engine's memory is not enough once there are several engines (a second
engine would call the same employee back again, and let the last call-back
of a limit through twice) or once an engine can die (it would forget the
call-backs it owes). Redis holds both; each check-and-change is one Lua
script, which Redis runs atomically, so no timing of two engines makes two
call-backs.

Keys, all under `vpbx:`:

* `limits:<did>:<employee>`: sorted set of the call-backs placed, scored by
  epoch seconds; read by `RedisLimits.admit` (callbackd.limits' interface);
* `claim:<did>:<employee>`: the id of the callback that holds this employee
  on this DID (a repeated trigger makes no second call-back), a lease its
  engine renews while the callback lasts;
* `callback:<id>`: the callback's record (JSON), written at each transition;
  `owed` is the sorted set of the ids still in progress, scored by when the
  record was written, so a restarted engine finds what it owes;
* `owners`: hash of callback id -> the engine that runs it (its name);
* `last_client:<did>:<employee>`: the E.164 number the employee last called
  through the DID (callbackd.last_client), what `**` dials again;
* `engine:<name>`: an engine's heartbeat, a key it renews every
  HEARTBEAT_S that lapses ENGINE_TTL_S after it died. Another engine takes
  over the callbacks of an engine whose heartbeat lapsed (`take_over`); an
  engine that was only slow finds its records taken (`save` refuses) and
  lets them go.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from typing import Any

import redis

from callbackd.last_client import LAST_CLIENT_TTL_S
from callbackd.limits import DAY_S, HOUR_S, Refused

PREFIX = "vpbx:"
# A claim is a lease: the engine holding it renews it (Engine renews every
# CLAIM_RENEW_S), so one that died blocks its employees for this long at most.
CLAIM_TTL_S = 120
CLAIM_RENEW_S = 30
# A callback's record outlives any callback (ring, retries, digits, the
# longest call) and then lapses by itself.
RECORD_TTL_S = 26 * 3600
# Heartbeats: an engine that died is taken over within ENGINE_TTL_S plus one
# round of its peers' HEARTBEAT_S checks.
HEARTBEAT_S = 2.0
ENGINE_TTL_S = 6
# Redis answers on loopback or the hosts' internal network; a store that does
# not answer within this is taken as down (see callbackd.engine: the trigger is
# then routed by the DID's scheme, never dialled unchecked).
SOCKET_TIMEOUT_S = 0.5

_ADMIT = """
local key = KEYS[1]
local now, hour, day = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_hour, max_day, member = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - day)
local in_day = redis.call('ZCARD', key)
if in_day >= max_day then return {in_day, 'day'} end
local in_hour = redis.call('ZCOUNT', key, '(' .. (now - hour), '+inf')
if in_hour >= max_hour then return {in_hour, 'hour'} end
redis.call('ZADD', key, now, member)
redis.call('EXPIRE', key, math.ceil(day))
return {0, ''}
"""

# Release, or renew, a claim only if this callback still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# Save a record unless another engine took the callback over.
_SAVE = """
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if owner and owner ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
"""
# Take a callback over from an engine whose heartbeat lapsed; its claim too.
_TAKE_OVER = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner == ARGV[2] then return 1 end
if not owner or redis.call('EXISTS', ARGV[3] .. owner) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local holder = redis.call('GET', KEYS[2])
if holder == owner .. '/' .. ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2] .. '/' .. ARGV[1], 'EX', ARGV[4])
end
return 1
"""


class StoreDown(Exception):
    """Redis did not answer: the caller degrades safely (routes by the scheme, dials nothing)."""


def connect(url: str) -> redis.Redis:
    """A client for `url` (redis://host:port/db or unix:///path), with short timeouts."""
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S,
                                socket_connect_timeout=SOCKET_TIMEOUT_S, decode_responses=True)


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


class RedisLimits:
    """The per-hour and per-day counts of every engine, checked and counted in one step."""

    def __init__(self, client: redis.Redis):
        self._admit = client.register_script(_ADMIT)

    def admit(self, did: str, employee: str, max_per_hour: int, max_per_day: int,
              now: float) -> Refused | None:
        member = f"{now:.6f}:{uuid.uuid4().hex[:8]}"
        try:
            count, window = self._admit(keys=[_key("limits", did, employee)],
                                        args=[now, HOUR_S, DAY_S, max_per_hour, max_per_day, member])
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc
        if not window:
            return None
        maximum = max_per_day if window == "day" else max_per_hour
        return Refused(int(count), window, maximum)


class RedisLastClients:
    """The last client of every employee on every DID, for every engine (callbackd.last_client)."""

    def __init__(self, client: redis.Redis):
        self._client = client

    def get(self, did: str, employee: str, now: float) -> str | None:
        try:
            return self._client.get(_key("last_client", did, employee))
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def put(self, did: str, employee: str, e164: str, now: float) -> None:
        try:
            self._client.set(_key("last_client", did, employee), e164, ex=LAST_CLIENT_TTL_S)
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc


class Callbacks:
    """Who holds an employee's call-back, and the records of the call-backs in progress."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._save = client.register_script(_SAVE)
        self._take_over = client.register_script(_TAKE_OVER)

    def claim(self, did: str, employee: str, callback_id: str) -> str | None:
        """Take `employee` on `did` for `callback_id`; None when taken, else the id that holds it."""
        key = _key("claim", did, employee)
        try:
            if self._client.set(key, callback_id, nx=True, ex=CLAIM_TTL_S):
                return None
            return self._client.get(key) or ""
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def release(self, did: str, employee: str, callback_id: str) -> None:
        try:
            self._release(keys=[_key("claim", did, employee)], args=[callback_id])
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def renew(self, did: str, employee: str, callback_id: str) -> bool:
        """Extend the lease of a claim this callback holds; False when it lapsed or is another's."""
        try:
            return bool(self._renew(keys=[_key("claim", did, employee)], args=[callback_id, CLAIM_TTL_S]))
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def drop_engine(self, engine: str, keep: Collection[str] = ()) -> int:
        """Release every claim an engine held before it restarted but those it resumed (`keep`).

        Claim ids start with the engine's name (`<engine>/<callback>`). A claim
        of a callback nobody resumes would make a repeated trigger look served
        while nobody calls back. Returns how many were released.
        """
        dropped = 0
        try:
            for key in self._client.scan_iter(match=_key("claim", "*")):
                holder = self._client.get(key)
                if holder is not None and holder.startswith(f"{engine}/") and holder not in keep:
                    dropped += self._release(keys=[key], args=[holder])
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc
        return dropped

    def save(self, engine: str, callback_id: str, record: dict[str, Any], now: float) -> bool:
        """The callback's record as it is now; False when another engine took it over."""
        try:
            return bool(self._save(keys=[_key("callback", callback_id), _key("owners"), _key("owed")],
                                   args=[callback_id, engine, json.dumps(record, sort_keys=True),
                                         RECORD_TTL_S, now]))
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def forget(self, callback_id: str) -> None:
        """A callback that ended (its CDR written) is owed no more."""
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(_key("callback", callback_id))
                pipe.zrem(_key("owed"), callback_id)
                pipe.hdel(_key("owners"), callback_id)
                pipe.execute()
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def heartbeat(self, engine: str, dtmf: str = "") -> None:
        """This engine is alive for ENGINE_TTL_S more; `dtmf`: where its RFC 4733 digits go."""
        try:
            self._client.set(_key("engine", engine), dtmf or "-", ex=ENGINE_TTL_S)
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def engines(self) -> dict[str, str]:
        """The engines alive: name -> the DTMF address each gave in its heartbeat."""
        try:
            keys = list(self._client.scan_iter(match=_key("engine", "*")))
            values = self._client.mget(keys) if keys else []
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc
        prefix = len(_key("engine", ""))
        return {k[prefix:]: v for k, v in zip(keys, values, strict=True) if v is not None}

    def owner(self, callback_id: str) -> str | None:
        """The engine that runs a callback, None when no engine does."""
        try:
            return self._client.hget(_key("owners"), callback_id)
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def orphans(self) -> dict[str, str]:
        """The callbacks whose engine's heartbeat lapsed: id -> that engine."""
        try:
            owners = self._client.hgetall(_key("owners"))
            engines = sorted(set(owners.values()))
            alive = dict(zip(engines, self._client.mget([_key("engine", e) for e in engines]),
                             strict=True)) if engines else {}
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc
        return {cid: engine for cid, engine in owners.items() if alive.get(engine) is None}

    def take_over(self, callback_id: str, record: dict[str, Any], engine: str) -> bool:
        """Make `engine` the owner of a callback whose engine died (and of its claim)."""
        try:
            return bool(self._take_over(
                keys=[_key("owners"), _key("claim", record["did"], record["employee"])],
                args=[callback_id, engine, _key("engine", ""), CLAIM_TTL_S]))
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc

    def owed(self) -> dict[str, dict[str, Any]]:
        """Every record still in progress, by id, its `engine` the one that owns it now.

        A record that lapsed is dropped from the index.
        """
        try:
            ids = self._client.zrange(_key("owed"), 0, -1)
            records = self._client.mget([_key("callback", i) for i in ids]) if ids else []
            owners = self._client.hgetall(_key("owners"))
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from exc
        found = {}
        for callback_id, raw in zip(ids, records, strict=True):
            if raw is None:
                self._client.zrem(_key("owed"), callback_id)
                self._client.hdel(_key("owners"), callback_id)
                continue
            record = json.loads(raw)
            record["engine"] = owners.get(callback_id, record.get("engine"))
            found[callback_id] = record
        return found
