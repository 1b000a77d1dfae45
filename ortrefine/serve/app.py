"""The HTTP layer: an app factory over served models (llama-cpp-python's `create_app` shape).

Endpoints: POST /v1/completions, /v1/chat/completions (OpenAI's schemas, SSE streaming),
POST /v1/refine (ortrefine's own: the trace `ortrefine refine --json` prints), GET /v1/models,
GET /health. Handlers only validate, encode and format: decoding happens on each model's scheduler
thread, and results come back through an asyncio queue (`call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ortrefine.errors import OrtRefineError
from ortrefine.serve.models import ServedModel
from ortrefine.serve.prompts import encode_messages, single_turn
from ortrefine.serve.scheduler import DecodeParams, Delta, PromptTokens, Result, SchedulerClosed, SchedulerFull, TokenInfo
from ortrefine.serve.schemas import APIError, ChatRequest, CompletionRequest, parse_chat, parse_completion, parse_refine
from ortrefine.serve.settings import ServeSettings

log = logging.getLogger(__name__)
UNLIKELY = -9999.0  # what OpenAI reports for a log-prob of -inf (JSON has no infinity)


# -- plumbing ------------------------------------------------------------------------------------
def error_response(e: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _json_safe(x: Any) -> Any:
    """Non-finite floats become None, so every response is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _lp(x: float | None) -> float | None:
    return None if x is None else (x if math.isfinite(x) else UNLIKELY)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class App:
    """The handlers, closing over the models and the settings."""

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings) -> None:
        self.models, self.settings = models, settings
        self.draining = False

    # -- guards ---------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError("missing or wrong API key: send `Authorization: Bearer <key>`", status=401, code="invalid_api_key")

    async def read_json(self, request: Request) -> Any:
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

    def endpoint(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Auth, then the handler; domain errors are 400s, anything unexpected a 500 without details."""

        async def run(request: Request) -> Response:
            try:
                self.check_auth(request)
                return await handler(request)
            except APIError as e:
                return error_response(e)
            except OrtRefineError as e:
                return error_response(APIError(str(e)))
            except SchedulerFull as e:
                return error_response(APIError(str(e), status=429, type="rate_limit_error", code="busy"))
            except SchedulerClosed as e:
                return error_response(APIError(str(e), status=503, type="server_error", code="shutting_down"))
            except Exception:  # noqa: BLE001 - logged with its traceback here, never sent to the client
                log.exception("unexpected error in %s", request.url.path)
                return error_response(APIError("internal error; see the server's log", status=500, type="server_error"))

        return run

    # -- simple endpoints ------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        stats = {n: m.stats() for n, m in self.models.items()}
        broken = not all(s["alive"] for s in stats.values()) and not self.draining
        status = "draining" if self.draining else "error" if broken else "ok"
        return JSONResponse({"status": status, "models": stats}, status_code=503 if broken else 200)

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": n, "object": "model", "created": m.created, "owned_by": "ortrefine",
             "context_length": m.lm.bundle.context_length} for n, m in self.models.items()]})

    # -- completions -----------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        req = parse_completion(await self.read_json(request), self.settings)
        m = self.model(req.model)
        lm = m.lm
        encoded = [lm.encode_prompt(p, max_new_tokens=req.params.max_tokens) for p in req.prompts]
        prompt_texts = [p if isinstance(p, str) else lm.tokenizer.decode(p) for p in req.prompts]
        usage_prompt = sum(len(ids) for ids in encoded)
        meta = _meta("cmpl", req.model)
        run = Run(m, [(ids, _choice_params(req.params, req.n, j)) for ids in encoded for j in range(req.n)])
        if req.stream:
            return _sse(run, self._completion_stream(run, req, m, meta, prompt_texts, usage_prompt))
        results = await run.wait(request)
        if results is None:
            return Response(status_code=499)
        choices = [self._completion_choice(i, r, req, m, prompt_texts[i // req.n]) for i, r in enumerate(results)]
        return JSONResponse({**meta, "object": "text_completion", "choices": choices,
                             "usage": _usage(usage_prompt, sum(len(r.ids) for r in results))})

    def _completion_choice(self, index: int, r: Result, req: CompletionRequest, m: ServedModel, prompt_text: str) -> dict[str, Any]:
        _raise_failed(r)
        text = (prompt_text + r.text) if req.echo else r.text
        logprobs = None
        if req.logprobs is not None:
            logprobs = _completion_logprobs(m, r.tokens, req.logprobs, len(prompt_text) if req.echo else 0)
            if req.echo and r.prompt_tokens:
                head = _completion_logprobs(m, r.prompt_tokens, req.logprobs, 0)
                logprobs = {k: None if head[k] is None else head[k] + logprobs[k] for k in logprobs}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": _finish(r.finish_reason)}

    async def _completion_stream(self, run: "Run", req: CompletionRequest, m: ServedModel, meta: dict[str, Any],
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
                lp = _completion_logprobs(m, ev.tokens, req.logprobs, 0)
                yield {**chunk, "choices": [{"index": i, "text": prompt_texts[i // req.n], "logprobs": lp, "finish_reason": None}]}
            elif isinstance(ev, Delta):
                lp = None
                if req.logprobs is not None:
                    lp = _completion_logprobs(m, ev.tokens, req.logprobs, offsets[i])
                offsets[i] += len(ev.text)
                yield {**chunk, "choices": [{"index": i, "text": ev.text, "logprobs": lp, "finish_reason": None}]}
            else:
                _raise_failed(ev)
                completion_tokens += len(ev.ids)
                yield {**chunk, "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": _finish(ev.finish_reason)}]}
        if req.include_usage:
            yield {**chunk, "choices": [], "usage": _usage(usage_prompt, completion_tokens)}

    # -- chat --------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        req = parse_chat(await self.read_json(request), self.settings)
        m = self.model(req.model)
        lm = m.lm
        ids = encode_messages(lm.tokenizer, req.messages)
        max_tokens = req.max_tokens
        if max_tokens is None:  # OpenAI's default: as many as fit
            max_tokens = max(1, min(self.settings.max_tokens_limit, lm.bundle.context_length - len(ids)))
        ids = lm.encode_prompt(ids, max_new_tokens=max_tokens)
        params = _replace(req.params, max_tokens=max_tokens)
        run = Run(m, [(ids, _choice_params(params, req.n, j)) for j in range(req.n)])
        meta = _meta("chatcmpl", req.model)
        if req.stream:
            return _sse(run, self._chat_stream(run, req, m, meta, len(ids)))
        results = await run.wait(request)
        if results is None:
            return Response(status_code=499)
        choices = []
        for i, r in enumerate(results):
            _raise_failed(r)
            lp = {"content": _chat_logprobs(m, r.tokens), "refusal": None} if req.logprobs else None
            choices.append({"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": lp,
                            "finish_reason": _finish(r.finish_reason)})
        return JSONResponse({**meta, "object": "chat.completion", "choices": choices,
                             "usage": _usage(len(ids), sum(len(r.ids) for r in results))})

    async def _chat_stream(self, run: "Run", req: ChatRequest, m: ServedModel, meta: dict[str, Any],
                           prompt_tokens: int) -> AsyncIterator[dict[str, Any]]:
        chunk = {**meta, "object": "chat.completion.chunk"}
        for i in range(len(run.jobs)):
            yield {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                         "finish_reason": None}]}
        completion_tokens = 0
        async for i, ev in run.events():
            if isinstance(ev, Delta):
                lp = {"content": _chat_logprobs(m, ev.tokens), "refusal": None} if req.logprobs else None
                yield {**chunk, "choices": [{"index": i, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None}]}
            else:
                _raise_failed(ev)
                completion_tokens += len(ev.ids)
                yield {**chunk, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": _finish(ev.finish_reason)}]}
        if req.include_usage:
            yield {**chunk, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}

    # -- refine ------------------------------------------------------------------------------------
    async def refine(self, request: Request) -> Response:
        from ortrefine.runtime.decoding import GenerationConfig
        from ortrefine.runtime.refine import RefineConfig

        req = parse_refine(await self.read_json(request), self.settings)
        m = self.model(req.model)
        kw = dict(req.config)
        prompt: Any = req.prompt
        if req.messages is not None:
            one = single_turn(req.messages)
            if one is not None:  # the same ids as `ortrefine refine --chat [--system]`
                prompt, kw["system"], kw["chat"] = one[0], one[1], True
            else:
                prompt = encode_messages(m.lm.tokenizer, req.messages)
        elif "system" in kw:
            kw["chat"] = True
        if "initial_strategy" in kw:
            kw["initial_strategy"] = GenerationConfig(strategy=kw["initial_strategy"], max_new_tokens=kw.get("max_new_tokens", 32))
        cfg = RefineConfig(**kw)
        future = m.refine(prompt, cfg)
        result = await asyncio.wrap_future(future)
        return JSONResponse(_json_safe({**_meta("refine", req.model), "object": "refine", **result.to_dict(),
                                        "provider": m.lm.provider}))


# -- running sequences from a handler ------------------------------------------------------------
class Run:
    """The sequences of one request on a model's scheduler, their events on one asyncio queue.

    jobs: (prompt ids, params) per choice. Cancelled (the slots freed) when the client goes away.
    """

    def __init__(self, m: ServedModel, jobs: list[tuple[list[int], DecodeParams]]) -> None:
        self.jobs = jobs
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        self.handles = []
        try:
            for i, (ids, params) in enumerate(jobs):
                self.handles.append(m.scheduler.submit(ids, params, self._sink(i)))
        except BaseException:
            self.cancel()
            raise

    def _sink(self, i: int) -> Callable[[object], None]:
        def put(obj: object) -> None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (i, obj))

        return put

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    async def events(self) -> AsyncIterator[tuple[int, object]]:
        """(choice index, Delta | Result) until every choice has its Result; cancels on exit."""
        left = len(self.jobs)
        try:
            while left:
                i, ev = await self.queue.get()
                if isinstance(ev, Result):
                    left -= 1
                yield i, ev
        finally:
            if left:
                self.cancel()

    async def wait(self, request: Request) -> list[Result] | None:
        """Every choice's Result in order, or None when the client disconnected first."""
        results: list[Result | None] = [None] * len(self.jobs)

        async def collect() -> None:
            async for i, ev in self.events():
                if isinstance(ev, Result):
                    results[i] = ev

        done = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not done.done():
            self.cancel()
            done.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await done
            return None
        done.result()
        return results  # type: ignore[return-value]


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _sse(run: Run, events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: one `data: <json>` per chunk, then `data: [DONE]`. An error after the
    stream has started goes out as an error object, since the status line is already sent."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in events:
                yield b"data: " + json.dumps(_json_safe(chunk), ensure_ascii=False).encode() + b"\n\n"
        except APIError as e:
            yield b"data: " + json.dumps(e.body()).encode() + b"\n\n"
        finally:
            run.cancel()  # a client that went away mid-stream (Starlette cancels this task) frees its rows
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- formatting -------------------------------------------------------------------------------------
def _meta(prefix: str, model: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _raise_failed(r: Result) -> None:
    if r.finish_reason == "error":
        raise APIError(f"the model failed on this request ({r.error}); see the server's log", status=500, type="server_error")
    if r.finish_reason == "cancelled":
        raise APIError("the request was cancelled (the server is shutting down)", status=503, type="server_error")


def _replace(params: DecodeParams, **changes: Any) -> DecodeParams:
    from dataclasses import replace

    return replace(params, **changes)


def _choice_params(params: DecodeParams, n: int, j: int) -> DecodeParams:
    """Choice j of n: its own sampling stream (choice 0 keeps the request's seed exactly)."""
    if j == 0 or params.seed is None:
        return params
    seed = params.seed if isinstance(params.seed, tuple) else (params.seed,)
    return _replace(params, seed=(*seed, j))


def _token_text(m: ServedModel, token: int) -> tuple[str, str]:
    """(the token as shown, special tokens spelled out; its share of the text, special tokens empty)."""
    tok = m.lm.tokenizer
    return tok.decode([token], skip_special_tokens=False), tok.decode([token])


def _completion_logprobs(m: ServedModel, tokens: list[TokenInfo], k: int, offset: int) -> dict[str, Any]:
    shown, offsets, at = [], [], offset
    for t in tokens:
        s, plain = _token_text(m, t.id)
        shown.append(s)
        offsets.append(at)
        at += len(plain)
    tops = None
    if k:
        tops = [None if t.logprob is None else {_token_text(m, i)[0]: _lp(lp) for i, lp in t.top} for t in tokens]
    return {"tokens": shown, "token_logprobs": [_lp(t.logprob) for t in tokens], "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(m: ServedModel, tokens: list[TokenInfo]) -> list[dict[str, Any]]:
    out = []
    for t in tokens:
        s = _token_text(m, t.id)[0]
        top = [{"token": (a := _token_text(m, i)[0]), "logprob": _lp(lp), "bytes": list(a.encode())} for i, lp in t.top]
        out.append({"token": s, "logprob": _lp(t.logprob), "bytes": list(s.encode()), "top_logprobs": top})
    return out


# -- the app ------------------------------------------------------------------------------------------
def create_app(models: dict[str, ServedModel], settings: ServeSettings) -> Starlette:
    """The Starlette app over already loaded models; closing them (draining) is the lifespan's end."""
    api = App(models, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        api.draining = True
        await asyncio.get_running_loop().run_in_executor(None, lambda: [m.close(drain=True) for m in models.values()])

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "error")
        kind = "not_found" if status == 404 else "method_not_allowed" if status == 405 else None
        return error_response(APIError(f"{request.method} {request.url.path}: {detail}", status=status, code=kind))

    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.endpoint(api.list_models), methods=["GET"]),
        Route("/v1/completions", api.endpoint(api.completions), methods=["POST"]),
        Route("/v1/chat/completions", api.endpoint(api.chat), methods=["POST"]),
        Route("/v1/refine", api.endpoint(api.refine), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.api = api
    return app
