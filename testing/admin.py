"""The Django admin as tests browse it."""

from django.test import Client


def filter_links(client: Client, changelist_url: str) -> list[str]:
    """The query string of every choice in the filters of a changelist."""
    changelist = client.get(changelist_url).context["cl"]
    return [
        choice["query_string"]
        for spec in changelist.filter_specs
        for choice in spec.choices(changelist)
    ]
