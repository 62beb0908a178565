"""`manage.py agent_emulator`: serve the offline Azure AI Agents emulator."""

import asyncio
import contextlib
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.emulator import DEFAULT_AGENT_ID, AgentsEmulator, EmulatorConfig
from chat.emulator.server import is_loopback


class Command(BaseCommand):
    help = (
        "Run an offline emulator of the Azure AI Foundry Agents API until Ctrl-C. "
        "Point the app at it with the variables it prints."
    )
    # The emulator touches neither the database nor the other apps.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--port", type=int, default=8765, help="0 picks a free port"
        )
        parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="S")
        parser.add_argument("--token-interval", type=float, default=0.0, metavar="S")
        parser.add_argument(
            "--reply", default="echo", help='reply text; "echo" quotes the user'
        )
        parser.add_argument("--tokens", type=int, help="reply with N tokens instead")
        parser.add_argument(
            "--annotations", action="store_true", help="end replies with citations"
        )
        parser.add_argument("--agent-id", default=DEFAULT_AGENT_ID)
        parser.add_argument(
            "--allow-remote",
            action="store_true",
            help="allow a non-loopback --host (the emulator has no authentication)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host: str = options["host"]
        if not is_loopback(host) and not options["allow_remote"]:
            raise CommandError(
                f"refusing to serve on {host!r}: the emulator has no authentication; "
                "use a loopback host or pass --allow-remote"
            )
        try:
            config = EmulatorConfig(
                first_token_delay=options["first_token_delay"],
                token_interval=options["token_interval"],
                reply=options["reply"],
                tokens=options["tokens"],
                annotations=options["annotations"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        emulator = AgentsEmulator(config, agent_id=options["agent_id"])
        asyncio.run(self._serve(emulator, host, options["port"]))

    async def _serve(self, emulator: AgentsEmulator, host: str, port: int) -> None:
        try:
            await emulator.start(host, port, allow_remote=True)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows; Ctrl-C then ends asyncio.run instead.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        self.stdout.write(
            f"Azure AI Agents emulator on {emulator.base_url} (Ctrl-C to stop)\n"
            "Point the app at it with:\n"
            "  CHAT_BACKEND=azure_agents\n"
            f"  AZURE_AI_PROJECT_ENDPOINT={emulator.endpoint}\n"
            f"  AZURE_AI_AGENT_ID={emulator.agent_id}\n"
            "  AZURE_AI_CREDENTIAL=dev\n"
            f"Control API: {emulator.base_url}/_emulator/ "
            "(config, push, release, requests, deltas, cancelled, reset)"
        )
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            await emulator.stop()
            self.stdout.write("Emulator stopped.")
