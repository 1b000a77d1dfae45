"""POST /v1/completions: OpenAI's legacy text completions, echo and log-probs included.

Echo with log-probs is how clients score given text, so the prompt's tokens are reported in the
same layout as generated ones, with text offsets running on from the prompt into the completion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ortrefine.serve.formatting import completion_logprobs, finish_reason, response_meta, usage
from ortrefine.serve.http_errors import raise_failed
from ortrefine.serve.models import ServedModel
from ortrefine.serve.protocol import Delta, PromptTokens, Result
from ortrefine.serve.runs import Run, choice_params
from ortrefine.serve.schemas import CompletionRequest, parse_completion
from ortrefine.serve.sse import sse

if TYPE_CHECKING:
    from ortrefine.serve.api import App


async def completions(api: "App", request: Request) -> Response:
    req = parse_completion(await api.read_json(request), api.settings)
    m = api.model(req.model)
    lm = m.lm
    encoded = [lm.encode_prompt(p, max_new_tokens=req.params.max_tokens) for p in req.prompts]
    prompt_texts = [p if isinstance(p, str) else lm.tokenizer.decode(p) for p in req.prompts]
    usage_prompt = sum(len(ids) for ids in encoded)
    meta = response_meta("cmpl", req.model)
    run = Run(m, [(ids, choice_params(req.params, req.n, j)) for ids in encoded for j in range(req.n)])
    if req.stream:
        return sse(run, _stream(run, req, m, meta, prompt_texts, usage_prompt))
    results = await run.wait(request)
    if results is None:
        return Response(status_code=499)
    choices = [_choice(i, r, req, m, prompt_texts[i // req.n]) for i, r in enumerate(results)]
    return JSONResponse({**meta, "object": "text_completion", "choices": choices,
                         "usage": usage(usage_prompt, sum(len(r.ids) for r in results))})


def _choice(index: int, r: Result, req: CompletionRequest, m: ServedModel, prompt_text: str) -> dict[str, Any]:
    raise_failed(r)
    text = (prompt_text + r.text) if req.echo else r.text
    logprobs = None
    if req.logprobs is not None:
        logprobs = completion_logprobs(m, r.tokens, req.logprobs, len(prompt_text) if req.echo else 0)
        if req.echo and r.prompt_tokens:
            head = completion_logprobs(m, r.prompt_tokens, req.logprobs, 0)
            logprobs = {k: None if head[k] is None else head[k] + logprobs[k] for k in logprobs}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(r.finish_reason)}


async def _stream(run: Run, req: CompletionRequest, m: ServedModel, meta: dict[str, Any],
                  prompt_texts: list[str], usage_prompt: int) -> AsyncIterator[dict[str, Any]]:
    chunk = {**meta, "object": "text_completion"}
    offsets = [0] * len(run.jobs)
    completion_tokens = 0
    if req.echo:
        for i in range(len(run.jobs)):
            offsets[i] = len(prompt_texts[i // req.n])
            if req.logprobs is None:  # else once the prompt is scored (PromptTokens), with its log-probs
                yield {**chunk, "choices": [{"index": i, "text": prompt_texts[i // req.n], "logprobs": None,
                                             "finish_reason": None}]}
    async for i, ev in run.events():
        if isinstance(ev, PromptTokens):
            lp = completion_logprobs(m, ev.tokens, req.logprobs, 0)
            yield {**chunk, "choices": [{"index": i, "text": prompt_texts[i // req.n], "logprobs": lp, "finish_reason": None}]}
        elif isinstance(ev, Delta):
            lp = None
            if req.logprobs is not None:
                lp = completion_logprobs(m, ev.tokens, req.logprobs, offsets[i])
            offsets[i] += len(ev.text)
            yield {**chunk, "choices": [{"index": i, "text": ev.text, "logprobs": lp, "finish_reason": None}]}
        else:
            raise_failed(ev)
            completion_tokens += len(ev.ids)
            yield {**chunk, "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": finish_reason(ev.finish_reason)}]}
    if req.include_usage:
        yield {**chunk, "choices": [], "usage": usage(usage_prompt, completion_tokens)}
