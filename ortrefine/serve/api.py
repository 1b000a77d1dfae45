"""The state every endpoint shares (models, settings, draining) and the guards it passes first.

Auth, the body-size limit and the model lookup run before anything is encoded or queued, so a
request that will be refused never takes a slot on a scheduler.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ortrefine.serve.http_errors import failure_response
from ortrefine.serve.models import ServedModel
from ortrefine.serve.schemas import APIError
from ortrefine.serve.settings import ServeSettings

Handler = Callable[["App", Request], Awaitable[Response]]


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class App:
    """The handlers' shared state, closing over the models and the settings."""

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings) -> None:
        self.models, self.settings = models, settings
        self.draining = False

    def check_auth(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError("missing or wrong API key: send `Authorization: Bearer <key>`", status=401, code="invalid_api_key")

    async def read_json(self, request: Request) -> Any:
        """The body, read in chunks so that an oversized one is refused without buffering it all
        (a missing or false content-length included); NaN and Infinity are refused as not JSON."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIError(f"the request body is {declared} bytes; at most {limit}", status=413, code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(f"the request body is over {limit} bytes", status=413, code="body_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks), parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise APIError("the request body nests too deeply") from None

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise APIError(f"the model {name!r} does not exist here; served: {', '.join(self.models)}", status=404,
                           param="model", code="model_not_found")
        return self.models[name]

    def bind(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A handler as Starlette calls it (request only), for the routes that skip the guards."""

        async def run(request: Request) -> Response:
            return await handler(self, request)

        return run

    def endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Auth, then the handler; every exception becomes its error response (`failure_response`)."""

        async def run(request: Request) -> Response:
            try:
                self.check_auth(request)
                return await handler(self, request)
            except Exception as e:  # noqa: BLE001 - mapped to a status there; the unexpected ones logged with their traceback
                return failure_response(e, request.url.path)

        return run
