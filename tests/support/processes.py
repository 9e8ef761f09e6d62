"""Processes and ports from the test side: the `sar` command line, loopback ports, what a process
is (command, environment, listening sockets, descendants; read from /proc) and waiting on a
condition. Port and process-tree code is the product's own (driver/embedded_ray.py)."""
from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Callable

from sar_platform.driver.embedded_ray import LOOPBACK, descendants, free_loopback_port as free_port

SAR = [sys.executable, "-m", "sar_platform.cli"]

__all__ = ["LOOPBACK", "SAR", "command", "descendants", "environment", "free_port", "free_ports", "interruptible",
           "is_loopback", "kill_marked", "listening_sockets", "marked_pids", "sockets_of", "wait_until"]


def interruptible() -> None:
    """`preexec_fn` of a child that a test sends SIGINT (Ctrl-C): its default action restored, which a
    test runner started in the background or under nohup passes on as ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def wait_until(predicate: Callable, timeout: float, what: str, alive: Callable[[], bool] | None = None,
               detail: Callable[[], str] = str):
    """Poll `predicate` until it returns something true (returned); fail naming `what` (and with
    `detail()`) after `timeout` seconds, or as soon as `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert alive is None or alive(), f"ended before {what}: {detail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {detail()}"
        time.sleep(0.1)
    return value


def command(pid: int) -> str:
    """The process's command line ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def environment(pid: int) -> dict[str, str]:
    try:
        items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)


def marked_pids(key: str, value: str) -> list[int]:
    """Processes (other than this one) whose environment holds key=value."""
    wanted, found = f"{key}={value}".encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def kill_marked(key: str, value: str, sig=signal.SIGKILL) -> int:
    """Send `sig` to every process marked key=value; how many there were."""
    pids = marked_pids(key, value)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(pids)


def listening_sockets() -> dict[int, str]:
    """Socket inode -> 'address:port' of every listening TCP socket (IPv4 and IPv6)."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # /proc prints each 32-bit word in host order
            raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
            found[int(fields[9])] = f"{socket.inet_ntop(family, raw)}:{int(hex_port, 16)}"
    return found


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")


def sockets_of(pids: set[int]) -> dict[int, list[str]]:
    """PID -> the addresses it listens on, for those of `pids` that listen."""
    listening, found = listening_sockets(), {}
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes = [int(link[8:-1]) for link in links if link.startswith("socket:[")]
        if addresses := [listening[i] for i in inodes if i in listening]:
            found[pid] = addresses
    return found
