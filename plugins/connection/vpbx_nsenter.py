"""Run tasks on a host of the lab of hosts by entering its namespaces (nsenter).

Modelled on community.docker.nsenter, which enters one fixed pid: here the
pid is the host's holder, read from the file the lab's builder keeps
(`<pid_dir>/<host>.pid`, cluster/hosts.py), and checked to be that holder
before anything runs, so a host that is down is said so rather than a
reused pid entered. Commands run with the holder's mounts, network, names,
IPC and processes, as root, with a clean environment (the controller's
virtualenv and settings stay out of the host). Files are copied through the
command's standard input and output.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

DOCUMENTATION = r"""
name: vpbx_nsenter
short_description: Enter a host of the vPBX lab of hosts (network, mount, UTS, IPC and PID namespaces)
description:
  - Runs commands with nsenter in the namespaces of the process that holds the
    host, found by its pid file; as root, with a clean environment.
  - The host's name is its C(ansible_host), by default its inventory name.
author: vPBX CallBack project
options:
  pid_dir:
    description: Directory of the holders' pid files, one C(<host>.pid) per host.
    type: str
    default: /run/vpbx-cluster
    vars:
      - name: ansible_vpbx_nsenter_pid_dir
"""

display = Display()

NAMESPACES = ("--mount", "--uts", "--ipc", "--net", "--pid")
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
HOLDER = b"cluster.holder"


class Connection(ConnectionBase):
    transport = "vpbx_nsenter"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pid = None

    def _connect(self):
        if not self._connected:
            self._play_context.remote_user = "root"
            self._pid = self._holder_pid()
            display.vvv(f"ENTER HOST {self._play_context.remote_addr} (pid {self._pid})",
                        host=self._play_context.remote_addr)
            self._connected = True
        return self

    def _holder_pid(self) -> int:
        host = self._play_context.remote_addr
        path = os.path.join(self.get_option("pid_dir"), f"{host}.pid")
        try:
            with open(path, encoding="ascii") as record:
                pid = int(record.read())
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except (OSError, ValueError) as exc:
            raise AnsibleConnectionFailure(
                f"host {host} is not running ({exc}); `make cluster` builds the lab of hosts") from None
        if HOLDER not in argv or host.encode() not in argv:
            raise AnsibleConnectionFailure(f"host {host}: pid {pid} in {path} is not its holder; "
                                           "`make cluster` starts it again")
        return pid

    def _argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--target={self._pid}", *NAMESPACES, "--", *argv]

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        argv = self._argv(["/bin/sh", "-c", cmd])
        display.vvv(f"EXEC {shlex.join(argv)}", host=self._play_context.remote_addr)
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=HOST_ENV, cwd="/")
        stdout, stderr = process.communicate(in_data)
        return process.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._play_context.remote_addr)
        try:
            with open(in_path, "rb") as source:
                data = source.read()
        except OSError as exc:
            raise AnsibleError(f"cannot read {in_path}: {exc}") from None
        rc, _, stderr = self.exec_command(f"cat > {shlex.quote(out_path)}", in_data=data)
        if rc != 0:
            raise AnsibleError(f"failed to copy {in_path} to {out_path}: {stderr.decode(errors='replace')}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._play_context.remote_addr)
        rc, stdout, stderr = self.exec_command(f"cat {shlex.quote(in_path)}")
        if rc != 0:
            raise AnsibleError(f"failed to fetch {in_path}: {stderr.decode(errors='replace')}")
        with open(out_path, "wb") as target:
            target.write(stdout)

    def close(self):
        self._connected = False
