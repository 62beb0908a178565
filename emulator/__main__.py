"""`python -m emulator`: serve the emulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from . import DEFAULT_AGENT_ID, FOUNDRY_AGENT_NAME, AgentsEmulator, EmulatorConfig
from .server import is_loopback


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description=(
            "Run an offline emulator of the Azure AI Foundry Agents API until "
            "Ctrl-C. Point the app at it with the variables it prints."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--token-interval", type=float, default=0.0, metavar="S")
    parser.add_argument(
        "--reply", default="echo", help='reply text; "echo" quotes the user'
    )
    parser.add_argument("--tokens", type=int, help="reply with N tokens instead")
    parser.add_argument(
        "--annotations", action="store_true", help="end replies with citations"
    )
    parser.add_argument(
        "--tools",
        default="",
        metavar="T+T",
        help="server-side tools each reply calls first, joined with '+' "
        "(file_search, code_interpreter, web_search)",
    )
    parser.add_argument(
        "--image",
        action="store_true",
        help="each reply has a chart that code interpreter drew",
    )
    parser.add_argument("--agent-id", default=DEFAULT_AGENT_ID)
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the emulator has no authentication)",
    )
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.allow_remote:
        parser.error(
            f"refusing to serve on {args.host!r}: the emulator has no "
            "authentication; use a loopback host or pass --allow-remote"
        )
    return args


def settings_lines(emulator: AgentsEmulator) -> str:
    """The environment that points the app at `emulator`, a block per backend."""
    return (
        "Point the app at it with:\n"
        "  CHAT_BACKEND=azure_agents\n"
        f"  AZURE_AI_PROJECT_ENDPOINT={emulator.endpoint}\n"
        f"  AZURE_AI_AGENT_ID={emulator.agent_id}\n"
        "  AZURE_AI_CREDENTIAL=dev\n"
        "or, for the Responses API of new Foundry agents:\n"
        "  CHAT_BACKEND=foundry\n"
        f"  AZURE_AI_PROJECT_ENDPOINT={emulator.endpoint}\n"
        f"  AZURE_AI_AGENT_NAME={FOUNDRY_AGENT_NAME}\n"
        "  AZURE_AI_CREDENTIAL=dev\n"
        "or, for chat completions:\n"
        "  CHAT_BACKEND=openai\n"
        f"  OPENAI_BASE_URL={emulator.base_url}/v1\n"
        f"  OPENAI_MODEL={emulator.config.model}\n"
    )


async def serve(emulator: AgentsEmulator, host: str, port: int) -> None:
    try:
        await emulator.start(host, port, allow_remote=True)
    except OSError as exc:
        sys.exit(f"cannot listen on {host}:{port}: {exc}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows; Ctrl-C then ends asyncio.run instead.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    print(
        f"Azure AI Agents emulator on {emulator.base_url} (Ctrl-C to stop)\n"
        + settings_lines(emulator)
        + f"Control API: {emulator.base_url}/_emulator/ "
        "(config, push, release, requests, deltas, cancelled, reset)",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await emulator.stop()
        print("Emulator stopped.", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = EmulatorConfig(
            first_token_delay=args.first_token_delay,
            token_interval=args.token_interval,
            reply=args.reply,
            tokens=args.tokens,
            annotations=args.annotations,
            tools=[tool for tool in args.tools.split("+") if tool],
            image=args.image,
        )
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    emulator = AgentsEmulator(config, agent_id=args.agent_id)
    asyncio.run(serve(emulator, args.host, args.port))


if __name__ == "__main__":
    main()
