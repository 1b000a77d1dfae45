"""POST /v1/refine: ortrefine's own endpoint, answering with the trace `ortrefine refine --json` prints.

Refinement runs on the model's refine worker (`ServedModel.refine`), not on the decode
scheduler, so one long refine call does not stall every stream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ortrefine.serve.formatting import json_safe, response_meta
from ortrefine.serve.prompts import encode_messages, single_turn
from ortrefine.serve.schemas import parse_refine

if TYPE_CHECKING:
    from ortrefine.serve.api import App


async def refine(api: "App", request: Request) -> Response:
    from ortrefine.runtime.decoding import GenerationConfig
    from ortrefine.runtime.refine import RefineConfig

    req = parse_refine(await api.read_json(request), api.settings)
    m = api.model(req.model)
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
    return JSONResponse(json_safe({**response_meta("refine", req.model), "object": "refine", **result.to_dict(),
                                   "provider": m.lm.provider}))
