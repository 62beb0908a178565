"""How tests call the API: as a browser with a session, or as a script with a key."""

from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.test import AsyncClient

# The callers a write refuses, and the status each gets: 401 without a valid
# credential, 403 with one that lacks the permission. Takes the `caller` fixture.
refused_callers = pytest.mark.parametrize(
    ("caller", "status"),
    [("anonymous", 401), ("reader", 403), ("reader_key", 403), ("revoked_key", 401)],
    indirect=["caller"],
)


class Caller:
    """One kind of API client, as a browser or a script would call the API.

    Session callers log in and fetch the CSRF token (from the cookie a page sets)
    on first use, like a browser; key callers send `Authorization: Bearer`.
    """

    def __init__(self, *, user: User | None = None, api_key: str | None = None) -> None:
        self.user = user
        self.api_key = api_key
        self.client = AsyncClient(enforce_csrf_checks=True)
        self._headers: dict[str, str] | None = None

    async def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {}
            if self.api_key is not None:
                self._headers["Authorization"] = f"Bearer {self.api_key}"
            elif self.user is not None:
                await self.client.aforce_login(self.user)
                self._headers["X-CSRFToken"] = await csrf_token(self.client)
        return self._headers

    async def send(
        self,
        method: str,
        path: str,
        data: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> HttpResponse:
        """Sends `data` as JSON, or the `raw` body as it is."""
        body = raw if raw is not None else b"" if data is None else orjson.dumps(data)
        return await self.client.generic(
            method, path, body, content_type, headers=await self.headers()
        )


async def csrf_token(client: AsyncClient) -> str:
    """Gets the CSRF cookie the way a browser does: by loading a page with a form."""
    response = await client.get("/admin/login/")
    assert response.status_code == 200
    return client.cookies["csrftoken"].value
