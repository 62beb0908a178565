from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chatsite.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for a user (printed once), or revoke keys by prefix."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", nargs="?")
        parser.add_argument("--name", default="cli", help="label shown in the admin")
        parser.add_argument("--revoke", metavar="PREFIX", help="revoke keys by prefix")

    def handle(self, *args, username: str | None, name: str, revoke: str | None, **kw):
        if revoke:
            keys = ApiKey.objects.active().filter(prefix=revoke)
            if not keys:
                raise CommandError(f"no active API key with prefix {revoke!r}")
            for key in keys:
                key.revoke()
            self.stdout.write(f"revoked {len(keys)} key(s)")
            return
        if not username:
            raise CommandError("give a username, or --revoke PREFIX")
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        key = ApiKey(user=user, name=name)
        raw = key.set_new_key()
        key.save()
        self.stdout.write(raw)
