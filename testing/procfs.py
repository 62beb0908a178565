"""What Linux's /proc says about a process, read from outside it."""

import os
from pathlib import Path

ESTABLISHED = "01"


def open_paths(pid: int) -> list[str]:
    """What each open file descriptor of process `pid` points at: a path, or
    `socket:[inode]`, `pipe:[inode]` and the like."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue  # closed since the listing
    return targets


def established_tcp(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of each established TCP connection of `pid`."""
    inodes = {t[8:-1] for t in open_paths(pid) if t.startswith("socket:[")}
    connections = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                if fields[3] == ESTABLISHED and fields[9] in inodes:
                    connections.append((_port(fields[1]), _port(fields[2])))
    return connections


def _port(address: str) -> int:
    """The port of a /proc/net/tcp address, `hex ip:hex port`."""
    return int(address.rsplit(":", 1)[1], 16)
