"""The benchmark's Redis: the database the `chatsite+redis` servers use, emptied
before each server and after the run, and the server's own counters (INFO stats
and commandstats) read around a scenario.

The counters are the whole server's: on a Redis that others use too they include
their commands, which is why the harness also reads the app's own count (the
probe in gc_probe.py) and prints both.
"""

from dataclasses import dataclass

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/10"
INFO_ARGS = ("INFO", "stats", "commandstats")


def _resp_size(*args: str) -> int:
    """Bytes of a command as RESP2 puts it on the wire."""
    parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
    return len(f"*{len(args)}\r\n") + sum(len(p.encode()) for p in parts)


@dataclass(frozen=True)
class Counters:
    commands: int  # total_commands_processed
    input_bytes: int  # total_net_input_bytes
    output_bytes: int  # total_net_output_bytes
    calls: dict[str, int]  # by command, from commandstats
    reply_bytes: int  # the INFO reply that carried these


class BenchRedis:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=10
        )

    def unavailable(self) -> str | None:
        """Why Redis cannot be used, or None when it answers."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def flush(self) -> None:
        """Empties the benchmark's database (only that one)."""
        self.client.flushdb()

    def counters(self) -> Counters:
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command(*INFO_ARGS)
            raw: bytes = connection.read_response()
        finally:
            pool.release(connection)
        fields: dict[str, str] = {}
        calls: dict[str, int] = {}
        for line in raw.decode().splitlines():
            key, colon, value = line.partition(":")
            if not colon:
                continue
            if key.startswith("cmdstat_"):
                calls[key.removeprefix("cmdstat_")] = int(
                    value.split(",", 1)[0].removeprefix("calls=")
                )
            else:
                fields[key] = value
        return Counters(
            commands=int(fields["total_commands_processed"]),
            input_bytes=int(fields["total_net_input_bytes"]),
            output_bytes=int(fields["total_net_output_bytes"]),
            calls=calls,
            reply_bytes=len(f"${len(raw)}\r\n") + len(raw) + 2,
        )

    def close(self) -> None:
        self.client.close()


def delta(before: Counters, after: Counters) -> dict[str, object]:
    """What the server did between two readings, without the readings: the
    first INFO is counted after it ran, the second one's request before."""
    calls = {
        name: after.calls.get(name, 0) - before.calls.get(name, 0)
        for name in after.calls
    }
    calls["info"] = calls.get("info", 0) - 1
    by_command = dict(
        sorted(((n, c) for n, c in calls.items() if c > 0), key=lambda i: -i[1])
    )
    return {
        "commands": after.commands - before.commands - 1,
        "input_bytes": after.input_bytes - before.input_bytes - _resp_size(*INFO_ARGS),
        "output_bytes": after.output_bytes - before.output_bytes - before.reply_bytes,
        "by_command": by_command,
    }
