"""OpenAI request bodies in, validated requests out; errors as OpenAI's error objects.

Validation happens before anything is queued or streamed, so every bad request is a 400 with
`{"error": {"message", "type", "param", "code"}}` naming the field and the fix, never a 500.
Unknown fields are refused as OpenAI refuses them; fields ortrefine does not implement are
accepted only at their neutral value (e.g. presence_penalty 0), so a client that sends them
explicitly still works while one that relies on them is told.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ortrefine.errors import OrtRefineError
from ortrefine.serve.prompts import ROLES
from ortrefine.serve.protocol import MAX_TOP_LOGPROBS, DecodeParams
from ortrefine.serve.settings import ServeSettings


class APIError(Exception):
    """An error a client gets as JSON: status, OpenAI's `type`, the offending `param`, a `code`."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_MISSING = object()
# accepted only at these values: (field, neutral values)
_NEUTRAL_COMMON = {"frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None), "logit_bias": (None, {}),
                   "user": "any-string", "stream_options": "object", "metadata": "any", "store": (False, None),
                   "service_tier": "any"}


class Fields:
    """Typed reads of one JSON object, each error naming the field."""

    def __init__(self, body: Any, known: set[str], where: str = "") -> None:
        if not isinstance(body, dict):
            raise APIError(f"{where or 'the request body'} must be a JSON object")
        unknown = sorted(set(body) - known - set(_NEUTRAL_COMMON))
        if unknown:
            raise APIError(f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0])
        self.body, self.where = body, where
        for name, neutral in _NEUTRAL_COMMON.items():
            if name in body and name not in known:
                self._neutral(name, neutral)

    def _neutral(self, name: str, neutral: Any) -> None:
        value = self.body[name]
        if neutral == "any" or value is None:
            return
        if neutral == "any-string":
            self.str(name, None)
        elif neutral == "object":
            if not isinstance(value, dict):
                raise APIError(f"{name} must be an object", param=name)
        elif value not in neutral or isinstance(value, bool) != isinstance(neutral[0], bool):
            raise APIError(f"{name} is not supported by ortrefine (only {neutral[0]!r}); drop it", param=name)

    def get(self, name: str, default: Any = _MISSING) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise APIError(f"{name} is required", param=name)
            return default
        return value

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def int(self, name: str, default: Any, lo: int | None = None, hi: int | None = None) -> Any:
        value = self.get(name, default)
        if value is default:
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise APIError(f"{name} must be a whole number, got {value!r}", param=name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            low, high = lo if lo is not None else "-inf", hi if hi is not None else "inf"
            raise APIError(f"{name} must be in [{low}, {high}], got {value}", param=name)
        return value

    def float(self, name: str, default: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Any:
        value = self.get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise APIError(f"{name} must be a finite number, got {value!r}", param=name)
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        if low_bad or (hi is not None and value > hi):
            raise APIError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}", param=name)
        return float(value)

    def bool(self, name: str, default: Any) -> Any:
        value = self.get(name, default)
        if value is not default and not isinstance(value, bool):
            raise APIError(f"{name} must be true or false, got {value!r}", param=name)
        return value

    def str(self, name: str, default: Any, nonempty: bool = False) -> Any:
        value = self.get(name, default)
        if value is default:
            return value
        if not isinstance(value, str):
            raise APIError(f"{name} must be a string, got {type(value).__name__}", param=name)
        if nonempty and not value.strip():
            raise APIError(f"{name} is empty", param=name)
        return value

    def str_list(self, name: str, default: Any, most: int = 64, comma: bool = False) -> Any:
        """A string or a list of strings (comma: "a,b" is split)."""
        value = self.get(name, default)
        if value is default:
            return value
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if comma else [value]
            value = [v for v in value if v] if comma else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise APIError(f"{name} must be a string or a list of strings", param=name)
        if len(value) > most:
            raise APIError(f"{name} has {len(value)} entries; at most {most}", param=name)
        return tuple(value)


def parse_model(f: Fields) -> str:
    return f.str("model", _MISSING, nonempty=True)


def _stop(f: Fields) -> tuple[str, ...]:
    stop = f.str_list("stop", (), most=16)
    if any(not s for s in stop):
        raise APIError("stop strings must not be empty (an empty one would end every output at once)", param="stop")
    return stop


def _sampling(f: Fields, settings: ServeSettings, max_tokens: int, top_logprobs: int, prompt_logprobs: bool) -> DecodeParams:
    temperature = f.float("temperature", 1.0, 0.0, 2.0)
    seed = f.int("seed", None)
    if seed is not None and seed < 0:
        seed = seed % (1 << 64)  # numpy seeds are non-negative; OpenAI accepts any 64-bit integer
    try:
        return DecodeParams(max_tokens=max_tokens, temperature=temperature, top_p=f.float("top_p", 1.0, 0.0, 1.0, lo_open=True),
                            top_k=f.int("top_k", 0, 0), seed=seed, stop=_stop(f), top_logprobs=top_logprobs,
                            prompt_logprobs=prompt_logprobs)
    except OrtRefineError as e:  # the decoding rules refused the client's values
        raise APIError(str(e)) from None


@dataclass
class CompletionRequest:
    """A validated /v1/completions body. prompts: text or token ids, one per prompt (a batch).
    max_tokens: None when the client gave none (the server picks 16, OpenAI's default)."""

    model: str
    prompts: list[str | list[int]]
    params: DecodeParams
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None


def _prompts(value: Any) -> list[str | list[int]]:
    def ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)

    if isinstance(value, str):
        return [value]
    if ids(value):
        return [list(value)]
    if isinstance(value, list) and value and all(isinstance(v, str) or ids(v) for v in value):
        return [v if isinstance(v, str) else list(v) for v in value]
    raise APIError("prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids "
                   "(none empty)", param="prompt")


def parse_completion(body: Any, settings: ServeSettings) -> CompletionRequest:
    known = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stop", "seed", "logprobs",
             "echo", "best_of", "suffix", "stream_options"}
    f = Fields(body, known)
    model = parse_model(f)
    prompts = _prompts(f.get("prompt"))
    echo = f.bool("echo", False)
    logprobs = f.int("logprobs", None, 0, MAX_TOP_LOGPROBS)
    n = f.int("n", 1, 1, settings.max_choices)
    if f.has("best_of") and f.int("best_of", 1, 1) != n:
        raise APIError("best_of is not supported (only best_of equal to n)", param="best_of")
    if f.has("suffix") and f.str("suffix", ""):
        raise APIError("suffix (insertion) is not supported; drop it", param="suffix")
    min_tokens = 0 if echo and logprobs is not None else 1
    max_tokens = f.int("max_tokens", 16, min_tokens, settings.max_tokens_limit)
    params = _sampling(f, settings, max_tokens, logprobs or 0, prompt_logprobs=echo and logprobs is not None)
    if len(prompts) * n > settings.max_choices:
        raise APIError(f"{len(prompts)} prompts × n {n} is {len(prompts) * n} choices; at most {settings.max_choices} per request",
                       param="n")
    stream = f.bool("stream", False)
    if max_tokens == 0 and stream:
        raise APIError("max_tokens 0 (score the prompt only) cannot be streamed; drop stream", param="stream")
    return CompletionRequest(model, prompts, params, n, stream, _include_usage(f), echo, logprobs)


def _include_usage(f: Fields) -> bool:
    opts = f.get("stream_options", {})
    if not isinstance(opts, dict):
        raise APIError("stream_options must be an object", param="stream_options")
    usage = opts.get("include_usage", False)
    if not isinstance(usage, bool):
        raise APIError("stream_options.include_usage must be true or false", param="stream_options")
    return usage


@dataclass
class ChatRequest:
    """A validated /v1/chat/completions body. max_tokens: None = as many as the limit and the
    context allow (chat's OpenAI default)."""

    model: str
    messages: list[dict[str, str]]
    params: DecodeParams
    max_tokens: int | None
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int


def parse_messages(value: Any, param: str = "messages") -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise APIError(f"{param} must be a non-empty list of {{role, content}} objects", param=param)
    out = []
    for k, m in enumerate(value):
        where = f"{param}[{k}]"
        if not isinstance(m, dict):
            raise APIError(f"{where} must be an object with role and content", param=where)
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise APIError(f"{where} has unsupported field(s): {', '.join(extra)} (tool calls are not supported)", param=where)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise APIError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", param=f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise APIError(f"{where}.content: only text parts are supported", param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(f"{where}.content must be a string", param=f"{where}.content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise APIError(f"the last message must be the user's (got {out[-1]['role']}); the reply is the assistant's turn", param=param)
    if not out[-1]["content"].strip():
        raise APIError("the last user message is empty", param=param)
    return out


def parse_chat(body: Any, settings: ServeSettings) -> ChatRequest:
    known = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "stream", "stop",
             "seed", "logprobs", "top_logprobs", "stream_options", "response_format", "tools", "tool_choice", "parallel_tool_calls"}
    f = Fields(body, known)
    model = parse_model(f)
    messages = parse_messages(f.get("messages"))
    rf = f.get("response_format", None)
    if rf is not None and rf != {"type": "text"}:
        raise APIError("response_format: only {\"type\": \"text\"} is supported", param="response_format")
    if f.get("tools", None) not in (None, []) or f.get("tool_choice", None) not in (None, "none"):
        raise APIError("tools are not supported; drop tools and tool_choice", param="tools")
    logprobs = f.bool("logprobs", False)
    top = f.int("top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise APIError("top_logprobs needs logprobs: true", param="top_logprobs")
    given = "max_completion_tokens" if f.has("max_completion_tokens") else "max_tokens"
    max_tokens = f.int(given, None, 1, settings.max_tokens_limit)
    n = f.int("n", 1, 1, settings.max_choices)
    params = _sampling(f, settings, max_tokens or 1, top, prompt_logprobs=False)
    return ChatRequest(model, messages, params, max_tokens, n, f.bool("stream", False), _include_usage(f), logprobs, top)


@dataclass
class RefineRequest:
    """A validated /v1/refine body: the prompt (text, or a conversation) and RefineConfig's fields."""

    model: str
    prompt: str | None
    messages: list[dict[str, str]] | None
    config: dict[str, Any] = field(default_factory=dict)


REFINE_FIELDS = {
    # name in the body: (kind, RefineConfig field)
    "initial": ("str", "initial"), "objectives": ("strs", "objectives"), "objective": ("strs", "objectives"),
    "keywords": ("csv", "keywords"), "reference": ("str", "reference"), "mode": ("str", "mode"), "top_k": ("int", "top_k"),
    "min_prob": ("float", "min_prob"), "edits": ("csv", "edits"), "order": ("str", "order"), "proposal": ("str", "proposal"),
    "optimizer": ("str", "optimizer"), "sweeps": ("int", "sweeps"), "positions_per_batch": ("int", "positions_per_batch"),
    "tol": ("float", "tol"), "seed": ("int", "seed"), "budget_seconds": ("float", "budget_seconds"),
    "budget_tokens": ("int", "budget_tokens"), "prune": ("bool", "prune"), "draft": ("int", "draft"), "screen": ("int", "screen"),
    "screen_keep": ("int", "screen_keep"), "max_tokens": ("int", "max_new_tokens"), "max_new_tokens": ("int", "max_new_tokens"),
    "system": ("str", "system"), "initial_strategy": ("str", "initial_strategy"), "guide": ("bool", "guide"),
    "examples": ("bool", "examples"), "end_repair": ("bool", "end_repair"),
}
MAX_REFINE_TOP_K = 64
MAX_REFINE_SWEEPS = 16


def parse_refine(body: Any, settings: ServeSettings) -> RefineRequest:
    f = Fields(body, {"model", "prompt", "messages", *REFINE_FIELDS})
    model = parse_model(f)
    if f.has("prompt") == f.has("messages"):
        raise APIError("give either prompt (text) or messages (a conversation)", param="prompt")
    prompt = f.str("prompt", None, nonempty=True)
    messages = parse_messages(f.get("messages")) if f.has("messages") else None
    cfg: dict[str, Any] = {}
    for name, (kind, target) in REFINE_FIELDS.items():
        if not f.has(name):
            continue
        if target in cfg:
            raise APIError(f"{name} repeats another field that sets {target}", param=name)
        if kind == "str":
            cfg[target] = f.str(name, None)
        elif kind == "strs":
            cfg[target] = list(f.str_list(name, None, most=16))
        elif kind == "csv":
            cfg[target] = f.str_list(name, None, most=64, comma=True)
        elif kind == "int":
            cfg[target] = f.int(name, None, 0)
        elif kind == "float":
            cfg[target] = f.float(name, None, 0.0)
        else:
            cfg[target] = f.bool(name, None)
    if messages is not None and "system" in cfg:
        raise APIError("system is for prompt; with messages, put a system message first", param="system")
    if cfg.get("top_k", 1) > MAX_REFINE_TOP_K:
        raise APIError(f"top_k at most {MAX_REFINE_TOP_K} over HTTP", param="top_k")
    if cfg.get("sweeps", 1) > MAX_REFINE_SWEEPS:
        raise APIError(f"sweeps at most {MAX_REFINE_SWEEPS} over HTTP", param="sweeps")
    if cfg.get("max_new_tokens", 32) > settings.max_tokens_limit:
        raise APIError(f"max_tokens at most {settings.max_tokens_limit} (the server's --max-tokens-limit)", param="max_tokens")
    budget = cfg.get("budget_seconds", settings.refine_seconds_limit)
    if budget > settings.refine_seconds_limit:
        raise APIError(f"budget_seconds at most {settings.refine_seconds_limit:g} (the server's limit)", param="budget_seconds")
    cfg["budget_seconds"] = budget
    if cfg.get("mode", "regenerate") == "regenerate" and {e.lower() for e in cfg.get("edits", ())} & {"insert", "delete"}:
        raise APIError("edits insert/delete only apply with mode keep (regenerate re-decodes the suffix after every "
                       "substitution); add \"mode\": \"keep\", or use edits substitute", param="edits")
    for o in cfg.get("objectives", []):
        if o.strip().startswith(("reward", "contrastive", "judge")):
            raise APIError("reward, contrastive and judge terms import code or open files named in the request, so the server refuses them; "
                           "use logprob, mean-logprob, length, repetition, echo, guard, meta, finish, coverage or reference", param="objectives")
    return RefineRequest(model, prompt, messages, cfg)
