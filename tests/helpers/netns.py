"""Hosts on one machine: a bridge in this network namespace and one namespace per host on it,
so that a process in a host namespace reaches the servers only over the (virtual) network.

Made and removed by the test that asks for it. Where the machine does not allow it (no root,
no `ip`), every host is this machine's loopback instead and `Network.isolated` says so.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    server: str  # the address servers listen on, as every host reaches them
    hosts: tuple[str | None, ...]  # namespace names (None: this namespace)
    isolated: bool

    def prefix(self, host: int) -> list[str]:
        """The command prefix that runs a program on host number `host`."""
        name = self.hosts[host]
        return ["ip", "netns", "exec", name] if name else []


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextmanager
def network(count: int) -> Iterator[Network]:
    _sweep()
    tag = str(os.getpid())  # names stay under the 15 characters of a link name
    subnet = f"10.77.{os.getpid() % 250}"
    bridge, names = f"ftbr{tag}", [f"ft{tag}h{i}" for i in range(count)]
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(bridge)
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names):
            _host(name, f"ftv{tag}h{i}", bridge, f"{subnet}.{11 + i}/24")
            made.append(name)
    except (OSError, subprocess.CalledProcessError):
        _remove(made, bridge)
        yield Network("127.0.0.1", (None,) * count, isolated=False)
        return
    try:
        yield Network(f"{subnet}.1", tuple(names), isolated=True)
    finally:
        _remove(made, bridge)


def _sweep() -> None:
    """Remove what an earlier test process killed before its cleanup left behind."""
    import re

    try:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    except OSError:
        return
    stale = {
        int(pid)
        for pid in re.findall(r"\bft(?:br)?(\d+)(?:h\d+)?\b", listed + links)
        if not os.path.exists(f"/proc/{pid}")
    }
    for pid in stale:
        names = re.findall(rf"\b(ft{pid}h\d+)\b", listed)
        _remove(names, f"ftbr{pid}")
        _remove([f"ftbr{pid}"], f"ftbr{pid}")


def _host(name: str, veth: str, bridge: str, address: str) -> None:
    _ip("netns", "add", name)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
    _ip("link", "set", veth, "master", bridge)
    _ip("link", "set", veth, "up")
    _ip("-n", name, "addr", "add", address, "dev", "eth0")
    _ip("-n", name, "link", "set", "eth0", "up")
    _ip("-n", name, "link", "set", "lo", "up")


def _remove(made: list[str], bridge: str) -> None:
    for name in made:
        try:
            if name == bridge:
                _ip("link", "delete", bridge)
            else:
                _ip("netns", "delete", name)  # takes its end of the veth pair with it
        except (OSError, subprocess.CalledProcessError):
            pass
