"""Call detail records: one JSON object per line, appended to a file.

Each record is written with one ``write(2)`` on a file opened ``O_APPEND`` and
then fsync'd: the kernel places every append atomically at the end of the
file, so lines of several writers (threads or processes on the same host) do
not interleave and a crash leaves no half line behind an acknowledged record.

Rotation (logrotate, the callbackd role's stanza) renames the file, makes a
new one in its place and sends SIGHUP: records go on whole into the renamed
file, which stays open, until :meth:`CdrWriter.reopen` (on SIGHUP) turns to
the new one; no line lost or split, and no moment without a file to write
to (callbackd may not create files in the log directory). Not
``copytruncate``: a record appended between its copy and its truncation
would be lost. The renamed file is :data:`ROTATED_SUFFIX`, kept uncompressed
until the next rotation (``delaycompress``), so :meth:`CdrWriter.written`
finds a CDR a rotation moved there.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_MODE = 0o640
DIR_MODE = 0o755
# The name logrotate gives the file it rotates last (``<file>.1``).
ROTATED_SUFFIX = ".1"


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One record as a UTF-8 JSON line (non-ASCII kept as is, no newline inside)."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    # json.dumps escapes control characters in strings, so the only newline is ours.
    return text.encode("utf-8") + b"\n"


class CdrWriter:
    """Appends CDRs to ``path`` (e.g. ``/var/log/vpbx/cdr.jsonl``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None

    def reopen(self) -> None:
        """After a rotation: the next record goes to the file now at ``path``."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @property
    def rotated(self) -> Path:
        """Where the last rotation put the file's earlier records."""
        return self.path.with_name(self.path.name + ROTATED_SUFFIX)

    def written(self, callback_id: str) -> bool:
        """Whether the CDR of `callback_id` is written already (a restarted engine asks).

        The file first, then the rotated one: a rotation that moves the file
        while it is read leaves the record in one of the two. A CDR is written
        moments before its record is dropped, so one older than the last
        rotation (a day) is no engine's to write again.
        """
        needle = encode_line({"id": callback_id})[1:-2]
        for path in (self.path, self.rotated):
            try:
                with path.open("rb") as f:
                    if any(needle in line for line in f):
                        return True
            except FileNotFoundError:
                continue
        return False

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (the engine passes ``cdr.to_json_dict()``).

        Raises ``TypeError``/``ValueError`` for a record JSON cannot encode
        (nothing is written then) and ``OSError`` when the disk says no.
        """
        line = encode_line(record)
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   FILE_MODE)
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk; never seen for a regular file otherwise
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(self._fd)
