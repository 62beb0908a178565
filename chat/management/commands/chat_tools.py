import json

from django.core.management.base import BaseCommand, CommandParser

from chat.tools import registry


class Command(BaseCommand):
    help = (
        "Print the JSON definitions of the CHAT_TOOLS functions, to paste into the "
        "agent's tools (classic agents; --responses for new Foundry agents)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--responses",
            action="store_true",
            help="the Responses API's shape (new Foundry agents)",
        )

    def handle(self, *args: object, responses: bool, **options: object) -> None:
        tools = registry().values()
        definitions = [
            tool.response_definition() if responses else tool.definition()
            for tool in tools
        ]
        self.stdout.write(json.dumps(definitions, indent=2))
