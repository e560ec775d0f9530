"""The KEMI router under test: `kemi/vpbx_router.py` run with a stand-in for
Kamailio's KSR module (fixture `ksr`) that records every call it gets, in
order, and answers what a test tells it to (the registrar's save, the
store's PING, the bindings of an extension); fixture `script` is the module."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "kemi" / "vpbx_router.py"
SUBMODULES = {"pv", "sl", "tm", "rr", "hdr", "htable", "registrar", "ndb_redis", "dispatcher",
              "nathelper", "auth", "textops", "rtpengine", "dialog", "siputils", "pike", "kx", "dmq",
              "maxfwd", "sanity", "tmx"}


class Module:
    """One KSR submodule: every function call is recorded; answers come from the stand-in."""

    def __init__(self, ksr, name):
        self._ksr, self._name = ksr, name

    def __getattr__(self, function):
        def call(*args):
            name = f"{self._name}.{function}" if self._name else function
            self._ksr.calls.append((name, args))
            answer = self._ksr.answers.get(name, 1)
            return answer(*args) if callable(answer) else answer
        return call


class Ksr(types.ModuleType):
    def __init__(self):
        super().__init__("KSR")
        self.calls: list[tuple[str, tuple]] = []
        self.answers: dict[str, object] = {}
        self.pvs: dict[str, object] = {}
        self.answers["pv.get"] = lambda name: self.pvs.get(name)
        self.answers["htable.sht_get"] = lambda table, key: None

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Module(self, name) if name in SUBMODULES else Module(self, "").__getattr__(name)

    def called(self, name):
        return [args for called, args in self.calls if called == name]

    def logged(self, *levels):
        """The log lines, of these levels only if any are given."""
        return "".join(args[0] for called, args in self.calls
                       if called in (levels or ("info", "notice", "err")) and args)


@pytest.fixture
def ksr(monkeypatch):
    stand_in = Ksr()
    monkeypatch.setitem(sys.modules, "KSR", stand_in)
    return stand_in


@pytest.fixture
def script(ksr):
    spec = importlib.util.spec_from_file_location("vpbx_router_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
