"""The control API under ``/_emulator/``: what Python callers do in-process, over HTTP.

``GET health``; ``GET|POST config`` (a JSON object of changes to the defaults);
``POST push`` (a one-shot override); ``POST release`` (held streams go on);
``GET requests``, ``GET deltas``, ``GET cancelled`` (the recordings); ``POST
reset``. Its calls are not recorded and no fault hits them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from aiohttp import web

from .http import Handler, bad_request, read_json

if TYPE_CHECKING:
    from .server import AgentsEmulator

CONTROL_PREFIX = "/_emulator/"


class ControlApi:
    def __init__(self, emulator: AgentsEmulator) -> None:
        self.emulator = emulator

    def routes(self) -> list[tuple[str, str, Handler]]:
        control: list[tuple[str, str, Handler]] = [
            ("GET", "health", self._health),
            ("GET", "config", self._config),
            ("POST", "config", self._config),
            ("POST", "push", self._push),
            ("POST", "release", self._release),
            ("GET", "requests", self._requests),
            ("GET", "deltas", self._deltas),
            ("GET", "cancelled", self._cancelled),
            ("POST", "reset", self._reset),
        ]
        return [(method, CONTROL_PREFIX + name, h) for method, name, h in control]

    async def _health(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        return web.json_response(
            {
                "status": "ok",
                "endpoint": emulator.endpoint,
                "agent_id": emulator.agent_id,
            }
        )

    async def _config(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            try:
                self.emulator.configure(**await read_json(request))
            except ValueError as exc:
                raise bad_request(str(exc), "invalid_emulator_config") from exc
        return web.json_response(self.emulator.config.to_dict())

    async def _push(self, request: web.Request) -> web.StreamResponse:
        try:
            self.emulator.push(**await read_json(request))
        except ValueError as exc:
            raise bad_request(str(exc), "invalid_emulator_config") from exc
        return web.json_response({"queued": self.emulator.queued})

    async def _release(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"released": self.emulator.gate.release()})

    async def _requests(self, request: web.Request) -> web.StreamResponse:
        records = [dataclasses.asdict(r) for r in self.emulator.requests]
        return web.json_response({"requests": records})

    async def _deltas(self, request: web.Request) -> web.StreamResponse:
        records = [dataclasses.asdict(d) for d in self.emulator.deltas]
        return web.json_response({"deltas": records})

    async def _cancelled(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"cancelled_runs": self.emulator.cancelled_runs})

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        self.emulator.reset()
        return web.json_response({"reset": True})
