"""The HTTP layer: an app factory over served models (llama-cpp-python's `create_app` shape).

Endpoints: POST /v1/completions, /v1/chat/completions (OpenAI's schemas, SSE streaming),
POST /v1/refine (ortrefine's own: the trace `ortrefine refine --json` prints), GET /v1/models,
GET /health. This module only wires URLs to the handlers in `ortrefine.serve.routes` and owns
the lifespan, so that closing the models (the drain) is tied to the server's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from ortrefine.serve.api import App
from ortrefine.serve.formatting import UNLIKELY
from ortrefine.serve.http_errors import error_response, http_error
from ortrefine.serve.models import ServedModel
from ortrefine.serve.routes.chat import chat
from ortrefine.serve.routes.completions import completions
from ortrefine.serve.routes.info import health, list_models
from ortrefine.serve.routes.refine import refine
from ortrefine.serve.runs import Run
from ortrefine.serve.settings import ServeSettings

__all__ = ["UNLIKELY", "App", "Run", "create_app", "error_response"]


def create_app(models: dict[str, ServedModel], settings: ServeSettings) -> Starlette:
    """The Starlette app over already loaded models; closing them (draining) is the lifespan's end."""
    api = App(models, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        api.draining = True
        await asyncio.get_running_loop().run_in_executor(None, lambda: [m.close(drain=True) for m in models.values()])

    routes = [
        Route("/health", api.bind(health), methods=["GET"]),
        Route("/v1/models", api.endpoint(list_models), methods=["GET"]),
        Route("/v1/completions", api.endpoint(completions), methods=["POST"]),
        Route("/v1/chat/completions", api.endpoint(chat), methods=["POST"]),
        Route("/v1/refine", api.endpoint(refine), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.api = api
    return app
