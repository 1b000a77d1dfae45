"""How failures reach a client: every error, wherever it is raised, as OpenAI's error object.

Clients (the openai SDK included) branch on the status and on `error.code`, so the mapping from
exceptions to statuses lives in one place; nothing unexpected leaks a traceback to the client.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ortrefine.errors import OrtRefineError
from ortrefine.serve.protocol import Result, SchedulerClosed, SchedulerFull
from ortrefine.serve.schemas import APIError

log = logging.getLogger(__name__)


def error_response(e: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def failure_response(e: Exception, path: str) -> JSONResponse:
    """Domain errors are 400s, a full or closing scheduler 429 / 503, anything unexpected a 500
    without details (logged here with its traceback instead)."""
    if isinstance(e, APIError):
        return error_response(e)
    if isinstance(e, OrtRefineError):
        return error_response(APIError(str(e)))
    if isinstance(e, SchedulerFull):
        return error_response(APIError(str(e), status=429, type="rate_limit_error", code="busy"))
    if isinstance(e, SchedulerClosed):
        return error_response(APIError(str(e), status=503, type="server_error", code="shutting_down"))
    log.error("unexpected error in %s", path, exc_info=e)
    return error_response(APIError("internal error; see the server's log", status=500, type="server_error"))


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method) in the same shape as ours."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "error")
    kind = "not_found" if status == 404 else "method_not_allowed" if status == 405 else None
    return error_response(APIError(f"{request.method} {request.url.path}: {detail}", status=status, code=kind))


def raise_failed(r: Result) -> None:
    """A sequence that failed or was cancelled on the scheduler becomes the client's error."""
    if r.finish_reason == "error":
        raise APIError(f"the model failed on this request ({r.error}); see the server's log", status=500, type="server_error")
    if r.finish_reason == "cancelled":
        raise APIError("the request was cancelled (the server is shutting down)", status=503, type="server_error")
