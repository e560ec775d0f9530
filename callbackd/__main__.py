"""callbackd: `python -m callbackd --config /etc/vpbx/callbackd.json`.

The routing data (lists, numbers) is read again when its file was replaced,
checked at each trigger and on SIGHUP, without touching callbacks in
progress. SIGHUP also reopens the log and CDR files (logrotate's
postrotate). SIGTERM with a state store leaves the callbacks in progress to
the engine that starts next (or to another engine, see callbackd.store), so
a restart drops no call; without one it ends them (hang-up, CDR) and exits.
"""

import argparse
import logging
import os
import signal
import sys

from callbackd import metrics, store
from callbackd.cdr import CdrWriter
from callbackd.config import SettingsError, load_settings
from callbackd.engine import Engine
from callbackd.prompts import PromptError, Prompts
from callbackd.rtpengine import NgClient
from callbackd.sip import SipEndpoint
from vpbx.routing_file import RoutingFile

log = logging.getLogger("callbackd")
STOP_GRACE_S = 1.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What callbackd makes (recordings, a missing log or CDR file): not world-readable.
UMASK = 0o027


class ReopenedFileHandler(logging.FileHandler):
    """The log file logrotate renames: lines go on into the renamed file, kept
    open, until SIGHUP reopens the one logrotate made in its place. Never a
    moment without a file (callbackd may not create one in the log
    directory), never a log call that raises."""

    def reopen(self) -> None:
        try:
            stream = self._open()
        except OSError as exc:
            log.error("log file %s not reopened, lines go on into the old one: %s", self.baseFilename, exc)
            return
        with self.lock:
            old, self.stream = self.stream, stream
        if old is not None:
            old.close()


def setup_logging(log_file) -> ReopenedFileHandler | None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    file_handler = ReopenedFileHandler(log_file) if log_file is not None else None
    if file_handler is not None:
        handlers.append(file_handler)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers)
    return file_handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callbackd", description="vPBX CallBack engine")
    parser.add_argument("--config", required=True, help="callbackd.json rendered by the callbackd role")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        os.umask(UMASK)
        log_file = setup_logging(settings.log_file)
        routing_file = RoutingFile(settings.routing_file)
        routing = routing_file.load()
        prompts = Prompts(settings.prompts_dir)
        prompts.check({d.callback.language for d in routing.numbers.values() if d.callback})
    except (SettingsError, PromptError, OSError, ValueError) as exc:
        print(f"callbackd: {exc}", file=sys.stderr)
        return 2

    limits = claims = last_clients = None
    if settings.state_store:
        client = store.connect(settings.state_store)
        limits, claims = store.RedisLimits(client), store.Callbacks(client)
        last_clients = store.RedisLastClients(client)
    engine = Engine(settings, routing_file, routing, NgClient(settings.rtpengine_ng),
                    CdrWriter(settings.cdr_file), prompts, limits=limits, claims=claims,
                    last_clients=last_clients)
    sip = SipEndpoint(settings.sip_listen, engine.on_trigger, trusted=settings.trusted_proxies,
                      outbound_proxy=settings.proxy)
    engine.attach(sip)
    engine.dtmf_socket = sip.open_udp(settings.dtmf_listen, engine.on_dtmf_datagram)
    if settings.metrics_listen is not None:
        try:
            metrics.serve(settings.metrics_listen, engine.stages)
        except OSError as exc:
            print("callbackd: metrics_listen {}:{}: {}".format(*settings.metrics_listen, exc),
                  file=sys.stderr)
            return 2

    def stop() -> None:
        if engine.claims is not None:
            # The callbacks in progress stay in the state store: the engine that
            # starts next here, or another one, goes on with them.
            engine.hand_over()
            sip.call_soon(sip.stop)
            return
        engine.shutdown()
        # A moment for the BYEs and CANCELs of the callbacks just ended to go out.
        sip.call_later(STOP_GRACE_S, sip.stop)

    def hang_up() -> None:
        """logrotate's postrotate, or a reload: new files to write, new routing to read."""
        if log_file is not None:
            log_file.reopen()
        engine.cdr.reopen()
        engine.refresh_routing()

    signal.signal(signal.SIGHUP, lambda *_: sip.call_soon_threadsafe(hang_up))
    signal.signal(signal.SIGTERM, lambda *_: sip.call_soon_threadsafe(stop))
    signal.signal(signal.SIGINT, lambda *_: sip.call_soon_threadsafe(stop))
    log.info("callbackd ready: SIP %s:%d, %d callback DIDs", *settings.sip_listen,
             sum(1 for d in routing.numbers.values() if d.callback and d.callback.enabled))
    sip.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
