"""The process that is a host: pid 1 of the host's namespaces, run by hosts.start().

It mounts the host's own view of the files, names the host, says it is ready
(STATE_ROOT/<host>/ready) and then only reaps the orphans that daemons leave
to it, until it is killed (and the kernel ends every process of the host).
Run as `python3 -m cluster.holder HOST`, inside `unshare --pid --fork --mount
--uts --mount-proc` in the host's network namespace.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from cluster.filesystem import mount_private_view, state_dir


def main(host: str) -> None:
    mount_private_view(host)
    socket.sethostname(host)
    (state_dir(host) / "ready").write_text(f"{host}\n")
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1])
