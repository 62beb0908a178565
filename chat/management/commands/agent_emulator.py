"""`manage.py agent_emulator`: `python -m emulator` under manage.py.

The emulator is a package of the source tree, not of the app: the production
image does not contain it, so it is run by name rather than imported.
"""

import runpy
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Run an offline emulator of the Azure AI Foundry Agents API until Ctrl-C "
        "(python -m emulator; --help lists its options)."
    )
    # The emulator touches neither the database nor the other apps.
    requires_system_checks: list[str] = []

    def run_from_argv(self, argv: list[str]) -> None:
        # Every argument, --help included, belongs to the emulator's own parser.
        super().run_from_argv([*argv[:2], "--", *argv[2:]])

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("emulator_args", nargs="*", metavar="ARG")

    def handle(self, *args: Any, **options: Any) -> None:
        sys.argv = ["manage.py agent_emulator", *options["emulator_args"]]
        try:
            runpy.run_module("emulator", run_name="__main__")
        except ImportError as exc:
            raise CommandError(
                f"The emulator is not available ({exc}). It lives in the source "
                "tree's emulator/ folder, which the production image leaves out; "
                "run this command from a checkout."
            ) from exc
