"""Streaming responses as OpenAI streams them: server-sent events ending in `data: [DONE]`."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from starlette.responses import StreamingResponse

from ortrefine.serve.formatting import json_safe
from ortrefine.serve.runs import Run
from ortrefine.serve.schemas import APIError


def sse(run: Run, events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """One `data: <json>` per chunk, then `data: [DONE]`. An error after the stream has started
    goes out as an error object, since the status line is already sent."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in events:
                yield b"data: " + json.dumps(json_safe(chunk), ensure_ascii=False).encode() + b"\n\n"
        except APIError as e:
            yield b"data: " + json.dumps(e.body()).encode() + b"\n\n"
        finally:
            run.cancel()  # a client that went away mid-stream (Starlette cancels this task) frees its rows
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
