"""The decision bench's world: one trunk, a callback DID with a list of N numbers, callers.

One vpbx.model config gives both sides their data: routing.json for the KEMI
side, db_text tables for the native one, and the callers SIPp sends (half on
the list, half not, E.164 as a carrier sends them) with the reply each gets.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from kamailio_instance import EDGE_IP, BenchError
from sipp_load import Traffic

from vpbx import model

BENCH = Path(__file__).resolve().parent / "decision"
UAC_SCENARIO = BENCH / "uac.xml"
KEMI_PORT = 5261
COUNTRY = "SK"
TRUNK_CIDR = "127.0.0.5/32"
CARRIER_TRUNK = "127.0.0.5:5080"
DID = "+421233000111"
# A second DID without callback: not dialled by the load, but decided in the
# per-call cost table (most DIDs of a PBX have no callback).
PLAIN_DID = "+421233000222"
LIST_NAME = "bench-mobiles"
CALLBACK_REPLY = 486
SCHEME_STAND_IN = 480
# +42190[1-8] followed by 6 digits: Slovak mobile ranges libphonenumber calls
# valid (every number is still validated by vpbx.model.load below).
MOBILE_RANGES = tuple(f"+42190{d}" for d in range(1, 9))
CALLER_ROWS = 20000
LISTED_SHARE = 0.5
SEED = 5060


@dataclass
class Dataset:
    size: int
    root: Path
    callers: Path
    expected: list[int]
    model_load_seconds: float

    @property
    def traffic(self) -> Traffic:
        return Traffic(UAC_SCENARIO, self.callers, self.expected, str(self.size))


def inventory(numbers: list[str]) -> dict:
    """The contract's variables of the bench's world, as an admin would write them."""
    return {
        "vpbx_default_country": COUNTRY,
        "vpbx_sip_listen": f"{EDGE_IP}:{KEMI_PORT}",
        "vpbx_trunks": [{"name": "carrier", "address": CARRIER_TRUNK,
                         "inbound_sources": [TRUNK_CIDR]}],
        "vpbx_number_lists": [{"name": LIST_NAME, "numbers": numbers}],
        "vpbx_extensions": [],
        "vpbx_routing_schemes": [{"name": "closed", "steps": [{"reject": SCHEME_STAND_IN}]}],
        "vpbx_numbers": [{"number": DID, "routing": "closed",
                          "callback": {"enabled": True, "list": LIST_NAME,
                                       "reject_code": CALLBACK_REPLY}},
                         {"number": PLAIN_DID, "routing": "closed"}],
    }


def random_mobile(rng: random.Random) -> str:
    return f"{rng.choice(MOBILE_RANGES)}{rng.randrange(10**6):06d}"


def make_dataset(size: int, root: Path, seed: int) -> Dataset:
    """routing.json (KEMI), db_text tables (native) and the callers file, from one vpbx.model config."""
    rng = random.Random(seed + size)
    numbers: set[str] = set()
    while len(numbers) < size:
        numbers.add(random_mobile(rng))
    started = time.perf_counter()
    config = model.load(inventory(sorted(numbers)))  # validates every number, as the playbook does
    load_seconds = time.perf_counter() - started
    listed = config.number_lists[LIST_NAME]
    if len(listed) != size:
        raise BenchError(f"vpbx.model kept {len(listed)} of {size} numbers")
    root.mkdir(parents=True, exist_ok=True)
    with (root / "routing.json").open("w") as f:
        json.dump(model.dump(config), f)
    db = root / "db"
    db.mkdir(exist_ok=True)
    header = "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int) \n"
    (db / "version").write_text("id(int,auto) table_name(string) table_version(int) \n"
                                "0:vpbx_did:2\n0:vpbx_list:2\n")
    # value_type 1: an integer value: a DID's callback reply code, 1 for a DID
    # without callback, 1 for "listed".
    (db / "vpbx_did").write_text(header + "".join(
        f"{i}:{d.number}:0:1:{d.callback.reject_code if d.callback and d.callback.enabled else 1}:0\n"
        for i, d in enumerate(config.numbers.values(), 1)))
    with (db / "vpbx_list").open("w") as f:
        f.write(header)
        f.writelines(f"{i}:{n}:0:1:1:0\n" for i, n in enumerate(sorted(listed), 1))
    # Callers: half from the list, half not on it, E.164 as a carrier sends them.
    pool = sorted(listed)
    rows: list[tuple[str, int]] = []
    listed_rows = int(CALLER_ROWS * LISTED_SHARE)
    rows += [(rng.choice(pool), CALLBACK_REPLY) for _ in range(listed_rows)]
    while len(rows) < CALLER_ROWS:
        number = random_mobile(rng)
        if number not in listed:
            rows.append((number, SCHEME_STAND_IN))
    rng.shuffle(rows)
    callers = root / "callers.csv"
    callers.write_text("SEQUENTIAL\n" + "".join(f"{n};{DID};\n" for n, _ in rows))
    return Dataset(size, root, callers, [code for _, code in rows], load_seconds)
