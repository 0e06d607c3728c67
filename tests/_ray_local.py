"""Test helpers for Ray on this machine: which processes are Ray's, and where they listen.

Read from /proc (Linux) instead of parsing ``ss`` or adding psutil: a few lines, no new
dependency, and the same answer ``ss -ltnp`` gives.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

PROC = Path("/proc")


def descendants(*roots: int) -> set[int]:
    """The given processes and every process below them (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for d in PROC.iterdir():
        if not d.name.isdigit():
            continue
        try:
            # the command name (2nd field) is in parentheses and may hold spaces
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(d.name))
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def group(pgid: int) -> set[int]:
    """The processes of process group ``pgid`` and everything they started.

    ``ray start`` (without ``--block``) leaves its node's processes in its process group and
    exits; the raylet's workers get groups of their own, so follow the children as well.
    """
    members = []
    for d in PROC.iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    members.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return descendants(*members) if members else set()


def title(pid: int) -> str:
    """The process's command line as ``ps`` shows it (Ray workers retitle themselves)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(PROC / str(pid) / "fd"):
            try:
                link = os.readlink(PROC / str(pid) / "fd" / fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass  # exited, or not ours
    return inodes


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_ip)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    return getattr(ip, "ipv4_mapped", None) or ip  # [::ffff:127.0.0.1] is 127.0.0.1


def listening(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every listening TCP socket the processes ``pids`` hold."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in owner:  # 0A: LISTEN
                continue
            hex_ip, hex_port = f[1].split(":")
            found.append((str(_address(hex_ip)), int(hex_port, 16), owner[f[9]]))
    return found


def not_on_loopback(pids: set[int]) -> list[tuple[str, int, int]]:
    """The listening sockets of ``pids`` that another machine could reach."""
    return [s for s in listening(pids) if not ipaddress.ip_address(s[0]).is_loopback]
