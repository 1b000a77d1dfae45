"""POST /v1/chat/completions: the messages through the bundle's chat template, OpenAI's chat shapes."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ortrefine.serve.formatting import chat_logprobs, finish_reason, response_meta, usage
from ortrefine.serve.http_errors import raise_failed
from ortrefine.serve.models import ServedModel
from ortrefine.serve.prompts import encode_messages
from ortrefine.serve.protocol import Delta
from ortrefine.serve.runs import Run, choice_params
from ortrefine.serve.schemas import ChatRequest, parse_chat
from ortrefine.serve.sse import sse

if TYPE_CHECKING:
    from ortrefine.serve.api import App


async def chat(api: "App", request: Request) -> Response:
    req = parse_chat(await api.read_json(request), api.settings)
    m = api.model(req.model)
    lm = m.lm
    ids = encode_messages(lm.tokenizer, req.messages)
    max_tokens = req.max_tokens
    if max_tokens is None:  # OpenAI's default: as many as fit
        max_tokens = max(1, min(api.settings.max_tokens_limit, lm.bundle.context_length - len(ids)))
    ids = lm.encode_prompt(ids, max_new_tokens=max_tokens)
    params = replace(req.params, max_tokens=max_tokens)
    run = Run(m, [(ids, choice_params(params, req.n, j)) for j in range(req.n)])
    meta = response_meta("chatcmpl", req.model)
    if req.stream:
        return sse(run, _stream(run, req, m, meta, len(ids)))
    results = await run.wait(request)
    if results is None:
        return Response(status_code=499)
    choices = []
    for i, r in enumerate(results):
        raise_failed(r)
        lp = {"content": chat_logprobs(m, r.tokens), "refusal": None} if req.logprobs else None
        choices.append({"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": lp,
                        "finish_reason": finish_reason(r.finish_reason)})
    return JSONResponse({**meta, "object": "chat.completion", "choices": choices,
                         "usage": usage(len(ids), sum(len(r.ids) for r in results))})


async def _stream(run: Run, req: ChatRequest, m: ServedModel, meta: dict[str, Any],
                  prompt_tokens: int) -> AsyncIterator[dict[str, Any]]:
    chunk = {**meta, "object": "chat.completion.chunk"}
    for i in range(len(run.jobs)):
        yield {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]}
    completion_tokens = 0
    async for i, ev in run.events():
        if isinstance(ev, Delta):
            lp = {"content": chat_logprobs(m, ev.tokens), "refusal": None} if req.logprobs else None
            yield {**chunk, "choices": [{"index": i, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None}]}
        else:
            raise_failed(ev)
            completion_tokens += len(ev.ids)
            yield {**chunk, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason(ev.finish_reason)}]}
    if req.include_usage:
        yield {**chunk, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
