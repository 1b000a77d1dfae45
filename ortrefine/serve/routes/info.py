"""What a load balancer or a client asks before sending work: health and the served models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from ortrefine.serve.api import App


async def health(api: "App", request: Request) -> Response:
    """503 when a scheduler thread died, so that a balancer stops routing here; draining is not
    an error, since a drain is the shutdown it asked for."""
    stats = {n: m.stats() for n, m in api.models.items()}
    broken = not all(s["alive"] for s in stats.values()) and not api.draining
    status = "draining" if api.draining else "error" if broken else "ok"
    return JSONResponse({"status": status, "models": stats}, status_code=503 if broken else 200)


async def list_models(api: "App", request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [
        {"id": n, "object": "model", "created": m.created, "owned_by": "ortrefine",
         "context_length": m.lm.bundle.context_length} for n, m in api.models.items()]})
