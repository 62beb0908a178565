"""Files the agent made (code interpreter images and files): the `file` frames
that show them, and what a reply stores of them to serve them again.

A reply keeps, for each file, its upstream id, kind, name and (Responses)
container: `GET /api/conversations/<id>/files/<file_id>` serves only the files
that the conversation's replies made, streaming them from the service.
"""

from typing import Any
from uuid import UUID

from django.urls import reverse

from chat import frames
from chat.backends.base import FileOutput

# Longer files are cut: the page shows charts and small outputs, not archives.
MAX_FILE_BYTES = 20 * 1024 * 1024
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


class FileTooLarge(Exception):
    """A file longer than `MAX_FILE_BYTES`: its response is broken off."""


def file_kind(name: str | None) -> str:
    """`image` for a name with an image's suffix, else `file`."""
    return "image" if _suffix(name) in IMAGE_TYPES else "file"


def _suffix(name: str | None) -> str:
    name = (name or "").lower()
    return name[name.rfind(".") :] if "." in name else ""


def stored(file: FileOutput) -> dict[str, Any]:
    """What a reply keeps of a file."""
    return {
        "file_id": file.file_id,
        "kind": file.kind,
        "name": file.name,
        "container_id": file.container_id,
    }


def file_frame(conversation_id: UUID, kept: dict[str, Any]) -> frames.File:
    url = reverse("chat:file", args=[conversation_id, kept["file_id"]])
    return frames.File(
        file_id=kept["file_id"], kind=kept["kind"], name=kept.get("name"), url=url
    )


def output(kept: dict[str, Any]) -> FileOutput:
    return FileOutput(
        file_id=kept["file_id"],
        kind=kept["kind"],
        name=kept.get("name"),
        container_id=kept.get("container_id"),
    )


def content_type(kept: dict[str, Any]) -> str:
    """An image's type by its name (the services send octet-streams); PNG for
    an image without one, which is what code interpreter draws."""
    suffix = _suffix(kept.get("name"))
    if suffix in IMAGE_TYPES:
        return IMAGE_TYPES[suffix]
    return "image/png" if kept["kind"] == "image" else "application/octet-stream"
