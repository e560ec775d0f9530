"""Logs and spools: rotation loses no CDR line, recordings leave the spool once
converted, and recordings past their keep time are removed by the daily job.

The CDR file is rotated by Debian's logrotate with the deployed stanza
(`logrotate -f`) while real callbacks end and write their CDRs; then every
CDR of those callbacks is in the current file or a rotated one, once, each
line whole.
"""

import gzip
import json
import os
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_callback import (
    CLIENT_E164,
    CLIENT_NUMBER,
    CLIENT_SSRC,
    EMPLOYEE_SSRC,
    FLOW_TIMEOUT,
    far_end_keys,
    trigger,
)
from vpbx_testing import services
from vpbx_testing.rtp_pcap import dtmf_then_tone_pcap, tone_pcap

from callbackd.config import load_settings
from vpbx import model

SETTINGS = Path("/etc/vpbx/callbackd.json")
STANZA = Path("/etc/logrotate.d/vpbx-callbackd")
CALLBACKD_JOB = "callbackd-recordings-expiry"
RTPENGINE_JOB = "rtpengine-recordings-expiry"
ROUNDS = 3
ROTATE_EVERY_S = 0.5
SPOOL_WAIT_S = 15.0
DAY_S = 86400


@pytest.fixture(scope="module")
def settings():
    if not STANZA.is_file():
        pytest.fail(f"{STANZA} is not deployed", pytrace=False)
    return load_settings(SETTINGS)


def rotated_files(current: Path) -> list[Path]:
    """The file and every rotated one (cdr.jsonl.1, cdr.jsonl.2.gz, ...)."""
    return sorted(p for p in current.parent.iterdir()
                  if p.name == current.name or p.name.startswith(current.name + "."))


def lines_of(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path}: its last line is cut"
    return data.splitlines()


def every_cdr(cdr_file: Path) -> list[dict]:
    """Every record in the CDR files, each line checked to be one whole JSON object."""
    records = []
    for path in rotated_files(cdr_file):
        for number, line in enumerate(lines_of(path), 1):
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"{path}:{number} is no JSON line: {line[:200]!r}", pytrace=False)
            assert isinstance(record, dict), f"{path}:{number}: {line[:200]!r}"
            records.append(record)
    return records


class Rotator:
    """`logrotate -f` on the deployed stanza, again and again, until stopped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.runs = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Rotator":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(ROTATE_EVERY_S):
            run = subprocess.run(["logrotate", "-f", str(STANZA)], capture_output=True, text=True,
                                 timeout=60)
            self.runs += 1
            if run.returncode != 0:
                self.errors.append(run.stderr)


def spool_files_of(pcap_dir: Path, callback_id: str) -> list[Path]:
    return [p for sub in ("pcaps", "metadata", "tmp") if (pcap_dir / sub).is_dir()
            for p in (pcap_dir / sub).iterdir() if f"callback-{callback_id}-" in p.name]


def spool_emptied(pcap_dir: Path, callback_id: str) -> list[Path]:
    """What is left of the callback's recording in RTPengine's spool, once the engine is done."""
    deadline = time.monotonic() + SPOOL_WAIT_S
    while (left := spool_files_of(pcap_dir, callback_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_the_scheduler_that_runs_logrotate_every_day_runs():
    assert services.daily_scheduler_runs(), f"nothing runs the daily jobs ({services.manager()})"


def test_every_cdr_of_callbacks_ended_while_the_file_rotates_is_there_once_and_whole(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, settings,
):
    pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", CLIENT_NUMBER + "#", EMPLOYEE_SSRC, 440, 2)
    started = time.time()
    with Rotator() as rotator:
        for _ in range(ROUNDS):
            # The employee is told the client is busy: one CDR a round.
            keys = far_end_keys(callback_did, listed_caller, employee_pcap=pcap, client=CLIENT_E164,
                                client_mode="busy")
            far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2,
                                     timeout=FLOW_TIMEOUT)
            trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
            far_end.expect_success(timeout=FLOW_TIMEOUT)
        # The last CDR is written just after the far end's last BYE.
        time.sleep(2)
    assert not rotator.errors, rotator.errors
    assert rotator.runs > 1

    ours = [r for r in every_cdr(settings.cdr_file)
            if r.get("did") == callback_did.number
            and datetime.fromisoformat(r["trigger_at"]).timestamp() >= started]
    ids = [r["id"] for r in ours]
    assert len(ids) == ROUNDS, ours
    assert len(set(ids)) == len(ids), f"a CDR written twice: {ids}"
    assert {r["result"] for r in ours} == {"client_busy"}
    assert len([p for p in rotated_files(settings.cdr_file) if p.stat().st_size]) > 1, "never rotated"
    # The engine's log, rotated under it, has every callback's lines, and the
    # file of its own name is there again for the lines to come.
    logged = b"\n".join(line for path in rotated_files(settings.log_file) for line in lines_of(path))
    assert all(f"callback {i}: finished".encode() in logged for i in ids), ids
    assert settings.log_file.is_file()
    # A recording without the client (the employee alone, the digits typed) is not kept.
    if callback_did.callback.record:
        for callback_id in ids:
            assert not spool_emptied(settings.pcap_dir, callback_id)


def test_a_converted_recording_leaves_the_spool_and_its_wav_stays(
    sipp, tmp_path, pbx_address, carrier_ip, trunk_port, callback_did, listed_caller, settings,
):
    if not callback_did.callback.record:
        pytest.skip("the callback DID does not record")
    employee_pcap = dtmf_then_tone_pcap(tmp_path / "employee.pcap", CLIENT_NUMBER + "#",
                                        EMPLOYEE_SSRC, 440, 6)
    client_pcap = tone_pcap(tmp_path / "client.pcap", CLIENT_SSRC, 660, 3)
    keys = far_end_keys(callback_did, listed_caller, employee_pcap=employee_pcap,
                        client=CLIENT_E164, client_pcap=client_pcap, client_hangup="local:3000")
    start = settings.cdr_file.stat().st_size if settings.cdr_file.exists() else 0
    far_end = sipp.start_uas("far_end.xml", carrier_ip, trunk_port, keys, calls=2, timeout=FLOW_TIMEOUT)
    trigger(sipp, pbx_address, carrier_ip, callback_did, listed_caller)
    far_end.expect_success(timeout=FLOW_TIMEOUT)

    deadline = time.monotonic() + FLOW_TIMEOUT
    lines: list[bytes] = []
    while not lines and time.monotonic() < deadline:
        time.sleep(0.2)
        if settings.cdr_file.exists():
            with settings.cdr_file.open("rb") as f:
                f.seek(start)
                lines = f.read().splitlines()
    [cdr] = [json.loads(line) for line in lines]
    assert cdr["result"] == "bridged"
    wav = Path(cdr["recording"])
    assert wav.is_file() and wav.stat().st_size > 44
    assert not spool_files_of(settings.pcap_dir, cdr["id"]), "the converted pcap is still in the spool"


def aged(path: Path, days: float) -> Path:
    path.write_bytes(b"RIFF")
    when = time.time() - days * DAY_S
    os.utime(path, (when, when))
    return path


@pytest.mark.parametrize(("job", "where"), [(CALLBACKD_JOB, "recordings"), (RTPENGINE_JOB, "spool")])
def test_the_daily_job_removes_recordings_past_their_keep_time_and_keeps_the_others(
    lab: model.Config, settings, job, where,
):
    days = lab.recordings_keep_days
    if days == 0:
        pytest.skip("the lab keeps its recordings for ever")
    directory = settings.recordings_dir if where == "recordings" else settings.pcap_dir / "pcaps"
    expired = aged(directory / "e2e-expired.wav", days + 1)
    fresh = aged(directory / "e2e-fresh.wav", days - 1)
    try:
        services.run_daily_job(job)
        assert not expired.exists(), f"{job} kept {expired}, {days + 1} days old"
        assert fresh.exists(), f"{job} removed {fresh}, {days - 1} days old"
    finally:
        expired.unlink(missing_ok=True)
        fresh.unlink(missing_ok=True)
