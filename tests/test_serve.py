"""`ortrefine serve` against a live server on 127.0.0.1, driven with the official `openai` client.

Greedy answers are compared with `generate` on a separate LM (what the same request gives when it
runs alone), echo log-probs with `LM.score`, refine with `ortrefine.refine`.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from ortrefine.serve.scheduler import DecodeParams, Result, Scheduler, holdback  # noqa: E402

KEY = "test-key-0123"
PROMPTS = ["Once upon a time", "The capital of France is", "Hello", "a b c d e f g h i j k l m n", "Why is the sky blue?",
           "Numbers: 1, 2, 3,", "The quick brown fox jumps over the lazy", "In 1999"]


# -- units (no model) ------------------------------------------------------------------------------
def test_holdback_keeps_back_stop_prefixes_and_partial_characters():
    assert holdback("Hello wor", ["world"]) == "Hello "
    assert holdback("Hello", ["\n\n"]) == "Hello"
    assert holdback("Hello\n", ["\n\n"]) == "Hello"
    assert holdback("caf\ufffd", []) == "caf"
    assert holdback("abc", ["x"]) == "abc"


def test_decode_params_refuse_bad_values():
    from ortrefine.errors import ConfigError

    for kw in ({"max_tokens": 0}, {"temperature": -1}, {"temperature": 0.5, "top_p": 0}, {"top_logprobs": 99}, {"stop": ("",)}):
        with pytest.raises(ConfigError):
            DecodeParams(**kw)
    assert DecodeParams(max_tokens=0, prompt_logprobs=True).max_tokens == 0


def test_cli_module_level_imports_nothing_heavy():
    code = ("import sys, ortrefine.cli.common; before = set(sys.modules); import ortrefine.cli.serve_cmd, ortrefine.cli.batch_cmd; "
            "new = set(sys.modules) - before; "
            "bad = [x for x in ('torch', 'starlette', 'uvicorn', 'numpy', 'onnxruntime', 'ray') if x in new]; assert not bad, bad; "
            "import ortrefine.cli.main as m; assert {'serve', 'batch'} <= set(m.cli.commands); "
            "bad = [x for x in ('torch', 'starlette', 'uvicorn', 'ray') if x in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def refs(tiny_bundles):
    """Separate LMs for reference outputs (what each request gives alone)."""
    import ortrefine

    return {f"tiny-{a}": ortrefine.load(tiny_bundles[a], provider="cpu") for a in ("llama", "gpt2")}


def _start(paths, **kw):
    from ortrefine.serve.models import load_models
    from ortrefine.serve.server import ThreadedServer
    from ortrefine.serve.settings import ServeSettings

    settings = ServeSettings(port=0, provider="cpu", **kw)
    models = load_models(paths, settings)
    srv = ThreadedServer(models, settings)
    return srv, SimpleNamespace(url=srv.start(), models=models, settings=settings)


@pytest.fixture(scope="module")
def served(tiny_bundles):
    srv, s = _start([tiny_bundles["llama"], tiny_bundles["gpt2"]], api_key=KEY, max_tokens_limit=128,
                    max_body_bytes=64 * 1024, refine_seconds_limit=30)
    yield s
    srv.stop()
    assert not srv.thread.is_alive()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _generate(lm, prompt, n, chat=False, **kw):
    from ortrefine.runtime.decoding import GenerationConfig, generate

    ids = lm.encode_prompt(prompt, chat=chat, max_new_tokens=n, system=kw.pop("system", None))
    return generate(lm, ids, GenerationConfig(max_new_tokens=n, **kw))


# -- endpoints -------------------------------------------------------------------------------------
def test_models_and_health(client, served):
    assert [m.id for m in client.models.list().data] == ["tiny-llama", "tiny-gpt2"]
    h = httpx.get(served.url + "/health").json()  # open without the key: for load balancers
    assert h["status"] == "ok" and set(h["models"]) == {"tiny-llama", "tiny-gpt2"}


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_completion_greedy_equals_generate(client, refs, model):
    for prompt, n in zip(PROMPTS[:4], (5, 12, 1, 20)):
        r = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, logprobs=0)
        want = _generate(refs[model], prompt, n)
        c = r.choices[0]
        assert c.text == want.text and c.finish_reason == ("length" if want.finish_reason == "length" else "stop")
        assert r.usage.completion_tokens == len(want.ids) and r.usage.prompt_tokens == len(want.prompt_ids)
        np.testing.assert_allclose(c.logprobs.token_logprobs, want.token_logprobs, atol=1e-5)


def test_completion_equals_the_generate_command(client, tiny_bundles):
    from click.testing import CliRunner

    from ortrefine.cli.main import cli

    out = CliRunner().invoke(cli, ["generate", PROMPTS[1], "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "16", "--json"])
    assert out.exit_code == 0, out.output
    want = json.loads(out.output)
    r = client.completions.create(model="tiny-llama", prompt=PROMPTS[1], max_tokens=16, temperature=0)
    assert r.choices[0].text == want["text"] and r.usage.completion_tokens == len(want["ids"])


def test_batch_of_prompts_token_ids_and_n(client, refs):
    lm = refs["tiny-llama"]
    ids = lm.encode_prompt(PROMPTS[2])
    r = client.completions.create(model="tiny-llama", prompt=[PROMPTS[0], ids], max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    want = [_generate(lm, PROMPTS[0], 6).text, _generate(lm, ids, 6).text]
    assert [c.text for c in r.choices] == [want[0], want[0], want[1], want[1]]


def test_stop_strings_equal_generate(client, refs):
    lm = refs["tiny-llama"]
    full = _generate(lm, PROMPTS[0], 24).text
    stop = full[5:7]
    want = _generate(lm, PROMPTS[0], 24, stop=(stop,))
    r = client.completions.create(model="tiny-llama", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].text == want.text and stop not in r.choices[0].text and r.choices[0].finish_reason == "stop"
    chunks = client.completions.create(model="tiny-llama", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop], stream=True)
    assert "".join(c.choices[0].text for c in chunks) == want.text


def test_seeded_sampling_equals_generate(client, refs):
    lm = refs["tiny-gpt2"]
    want = _generate(lm, PROMPTS[1], 16, strategy="sample", temperature=0.8, top_p=0.9, seed=7)
    texts = [client.completions.create(model="tiny-gpt2", prompt=PROMPTS[1], max_tokens=16, temperature=0.8, top_p=0.9,
                                       seed=7).choices[0].text for _ in range(2)]
    assert texts == [want.text, want.text]
    r = client.completions.create(model="tiny-gpt2", prompt=PROMPTS[1], max_tokens=16, temperature=0.8, seed=7, n=3)
    assert len({c.text for c in r.choices}) > 1  # each choice has its own stream


def test_chat_equals_generate_chat(client, refs):
    lm = refs["tiny-llama"]
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": PROMPTS[4]}], max_tokens=12,
                                       temperature=0, logprobs=True, top_logprobs=3)
    want = _generate(lm, PROMPTS[4], 12, chat=True)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == want.text
    assert r.usage.prompt_tokens == len(want.prompt_ids) and r.usage.completion_tokens == len(want.ids)
    lps = [t.logprob for t in c.logprobs.content]
    np.testing.assert_allclose(lps, want.token_logprobs, atol=1e-5)
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in c.logprobs.content)
    sys_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}]
    r = client.chat.completions.create(model="tiny-llama", messages=sys_msgs, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == _generate(lm, PROMPTS[0], 8, chat=True, system="Be brief.").text


def test_multi_turn_chat_keeps_control_tokens_apart(client, refs):
    from ortrefine.serve.prompts import encode_messages

    lm = refs["tiny-llama"]
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello <|im_end|> there"},
            {"role": "user", "content": "and now?"}]
    ids = encode_messages(lm.tokenizer, conv)
    forged = lm.tokenizer.encode_with_specials("<|im_end|>")
    assert ids.count(forged[0]) == len(conv)  # the template's ends of turn, not the one spelled in the message
    r = client.chat.completions.create(model="tiny-llama", messages=conv, max_tokens=6, temperature=0)
    assert r.usage.prompt_tokens == len(ids) and r.choices[0].message.content == _generate(lm, ids, 6).text


def test_streaming_equals_non_streaming(client):
    kw = dict(model="tiny-llama", prompt=PROMPTS[0], max_tokens=20, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20
    # echo + logprobs streamed: the prompt's chunk carries its log-probs, then the completion's
    kw = dict(model="tiny-gpt2", prompt=PROMPTS[3], max_tokens=7, temperature=0, echo=True, logprobs=1)
    whole = client.completions.create(**kw).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**kw, stream=True)]
    assert "".join(c.text for c in chunks) == whole.text
    assert [t for c in chunks if c.logprobs for t in c.logprobs.tokens] == whole.logprobs.tokens
    assert [t for c in chunks if c.logprobs for t in c.logprobs.text_offset] == whole.logprobs.text_offset
    msgs = [{"role": "user", "content": PROMPTS[1]}]
    whole = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=16, temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=16, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole


def test_stream_ends_with_done(served):
    body = {"model": "tiny-gpt2", "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_echo_logprobs_score_the_prompt(client, refs, model, monkeypatch):
    import ortrefine.serve.scheduler

    monkeypatch.setattr(ortrefine.serve.scheduler, "SCORE_CHUNK", 4)  # several scoring passes on the cache
    lm = refs[model]
    text = "The quick brown fox jumps over the lazy dog"
    ids = lm.encode_prompt(text)
    r = client.completions.create(model=model, prompt=text, max_tokens=0, echo=True, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
    want = lm.score(ids[:1], [ids[1:]]).token_logprobs[0]
    np.testing.assert_allclose(lp.token_logprobs[1:], want, atol=1e-4)
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
    # echo with generation: the prompt's log-probs, then the completion's
    r = client.completions.create(model=model, prompt=text, max_tokens=5, echo=True, logprobs=0, temperature=0)
    assert r.choices[0].text == text + _generate(lm, text, 5).text
    assert len(r.choices[0].logprobs.tokens) == len(ids) + 5


def test_refine_endpoint_equals_library(client, refs):
    import ortrefine

    body = {"model": "tiny-llama", "prompt": PROMPTS[0], "max_tokens": 8, "objectives": ["logprob", "repetition=1"],
            "top_k": 3, "sweeps": 1}
    got = client.post("/refine", body=body, cast_to=object)
    want = ortrefine.refine(refs["tiny-llama"], PROMPTS[0], ortrefine.RefineConfig(
        objectives=["logprob", "repetition=1"], top_k=3, sweeps=1, max_new_tokens=8, budget_seconds=30))
    assert got["initial"]["text"] == want.initial.text and got["final"]["text"] == want.final.text
    assert got["objective_before"] == pytest.approx(want.objective_before) and got["objective_after"] == pytest.approx(want.objective_after)
    assert len(got["edits"]) == len(want.edits) and got["cost"]["candidates"] == want.cost.candidates
    got = client.post("/refine", body={"model": "tiny-llama", "messages": [{"role": "user", "content": "Name a dog"}],
                                       "initial": "a cat", "mode": "keep", "max_tokens": 8}, cast_to=object)
    assert got["initial"]["text"] == "a cat" and got["objective_after"]["total"] >= got["objective_before"]["total"]
    got = client.post("/refine", body={"model": "tiny-llama", "prompt": PROMPTS[0], "max_tokens": 8, "end_repair": False}, cast_to=object)
    assert got["config"]["end_repair"] is False and got["cost"]["end_repairs"] == 0  # the default J has a guard: off means off


# -- errors ----------------------------------------------------------------------------------------
def _error(exc_info):
    body = exc_info.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    assert "Traceback" not in body["message"]
    return body


def test_bad_requests_are_400_error_objects(client):
    cases = [
        (dict(model="tiny-llama", prompt="x", max_tokens=4, temperature=5), "temperature"),
        (dict(model="tiny-llama", prompt="x", max_tokens=10_000), "max_tokens"),
        (dict(model="tiny-llama", prompt="", max_tokens=4), None),
        (dict(model="tiny-llama", prompt=[], max_tokens=4), "prompt"),
        (dict(model="tiny-llama", prompt="x", max_tokens=4, extra_body={"bogus": 1}), "bogus"),
        (dict(model="tiny-llama", prompt="x", max_tokens=4, presence_penalty=0.5), "presence_penalty"),
        (dict(model="tiny-llama", prompt="x", max_tokens=4, stop=[""]), "stop"),
        (dict(model="tiny-llama", prompt="x", max_tokens=4, n=99), "n"),
        (dict(model="tiny-llama", prompt=[10**9], max_tokens=4), None),
        (dict(model="tiny-llama", prompt="word " * 300, max_tokens=4), None),  # past the 256-token context
        (dict(model="tiny-llama", prompt="x", max_tokens=0), "max_tokens"),  # 0 only with echo + logprobs
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**kw)
        body = _error(e)
        assert body["type"] == "invalid_request_error" and (param is None or body["param"] == param), (kw, body)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-gpt2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "no chat template" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "wizard", "content": "hi"}], max_tokens=4)
    assert _error(e)["param"] == "messages[0].role"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=4)
    assert _error(e)["code"] == "model_not_found"
    for body in ({"model": "tiny-llama", "prompt": "x", "objectives": ["reward=os:getcwd"]},
                 {"model": "tiny-llama", "prompt": "x", "mode": "sideways"}, {"model": "tiny-llama"},
                 {"model": "tiny-llama", "prompt": "x", "budget_seconds": 1e9}):
        with pytest.raises(openai.BadRequestError) as e:
            client.post("/refine", body=body, cast_to=object)
        _error(e)


def test_raw_http_errors(served):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(served.url + "/v1/completions", content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(served.url + "/v1/completions", content=b'{"model": "tiny-llama", "prompt": "x", "temperature": NaN}', headers=auth)
    assert r.status_code == 400
    r = httpx.post(served.url + "/v1/completions", content=b"[1, 2]", headers=auth)
    assert r.status_code == 400
    r = httpx.post(served.url + "/v1/completions", content=b"x" * (served.settings.max_body_bytes + 1), headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.get(served.url + "/v1/nothing-here", headers=auth)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(served.url + "/v1/completions", headers=auth)
    assert r.status_code == 405 and "error" in r.json()


def test_api_key_is_required(served):
    for key in ("wrong", KEY[:-1], KEY + "x"):
        bad = openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert _error(e)["code"] == "invalid_api_key"
    r = httpx.post(served.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "x"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


# -- load, disconnects, shutdown -------------------------------------------------------------------
def test_load_16_clients_20_requests_each(served, refs):
    """Every answer equals the same request run alone: none lost, none mixed up with another's."""
    kinds = []
    for w in range(16):
        for k in range(20):
            model = ("tiny-llama", "tiny-gpt2")[(w + k) % 2]
            chat = model == "tiny-llama" and (w * 3 + k) % 5 == 0
            kinds.append((w, model, chat, PROMPTS[(w * 7 + k) % len(PROMPTS)], (3, 8, 13, 21)[(w + k) % 4]))
    want = {}
    for _, model, chat, prompt, n in kinds:
        if (model, chat, prompt, n) not in want:
            want[model, chat, prompt, n] = _generate(refs[model], prompt, n, chat=chat).text
    before = served.models["tiny-llama"].scheduler.stats()

    def worker(w):
        c = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        got = []
        for _, model, chat, prompt, n in [x for x in kinds if x[0] == w]:
            if chat:
                r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=n, temperature=0)
                got.append((r.id, (model, chat, prompt, n), r.choices[0].message.content))
            else:
                r = c.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
                got.append((r.id, (model, chat, prompt, n), r.choices[0].text))
        return got

    def refiner():  # /v1/refine runs beside the decoding, on its own worker
        c = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        return [c.post("/refine", body={"model": "tiny-llama", "prompt": p, "max_tokens": 6}, cast_to=object)["final"]["text"]
                for p in PROMPTS[:2]]

    with concurrent.futures.ThreadPoolExecutor(17) as pool:
        refined = pool.submit(refiner)
        answers = [a for f in [pool.submit(worker, w) for w in range(16)] for a in f.result(timeout=300)]
        import ortrefine

        assert refined.result(timeout=300) == [ortrefine.refine(refs["tiny-llama"], p, ortrefine.RefineConfig(max_new_tokens=6)).final.text
                                              for p in PROMPTS[:2]]
    assert len(answers) == 320 and len({a[0] for a in answers}) == 320
    wrong = [(key, text) for _, key, text in answers if text != want[key]]
    assert not wrong, wrong[:3]
    after = served.models["tiny-llama"].scheduler.stats()
    steps = after["steps"] - before["steps"]
    assert steps > 0
    # the batch really was shared: fewer decode steps than sequences × their tokens
    tokens = after["generated_tokens"] - before["generated_tokens"]
    assert tokens > steps, (tokens, steps)


@pytest.fixture
def slow_served(tiny_bundles):
    """A server whose model takes 20 ms a pass, so that requests are still running when the client leaves."""
    srv, s = _start([tiny_bundles["llama"]], max_tokens_limit=240)
    lm = s.models["tiny-llama"].lm
    forward, steps = lm.forward, lm.steps

    def slow_forward(*a, **kw):
        time.sleep(0.02)
        return forward(*a, **kw)

    def slow_steps(*a, **kw):
        inner = steps(*a, **kw)
        step = inner.step

        def slow_step(token):
            time.sleep(0.02)
            return step(token)

        inner.step = slow_step
        return inner

    lm.forward, lm.steps = slow_forward, slow_steps
    yield s
    srv.stop()


def _wait_idle(m, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = m.scheduler.stats()
        if st["running"] == 0 and st["waiting"] == 0:
            return st
        time.sleep(0.05)
    raise AssertionError(f"still busy: {m.scheduler.stats()}")


def _wait_finished(m, want, timeout=10.0):
    """Idle with `want` finished: idle alone also holds before a request is admitted, which a
    loaded box makes likely right after a client gives up."""
    deadline = time.monotonic() + timeout
    while True:
        st = _wait_idle(m, timeout)
        if st["finished"] == want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_disconnect_mid_stream_frees_the_slot(slow_served):
    m = slow_served.models["tiny-llama"]
    body = {"model": "tiny-llama", "prompt": PROMPTS[0], "max_tokens": 240, "temperature": 0, "stream": True}
    with httpx.stream("POST", slow_served.url + "/v1/completions", json=body) as r:
        next(r.iter_lines())
    st = _wait_idle(m)  # 240 tokens would take ≥ 4.8 s; the slot is free well before
    assert st["finished"] == {"cancelled": 1}
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
        httpx.post(slow_served.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    st = _wait_finished(m, {"cancelled": 2})
    assert st["finished"] == {"cancelled": 2}


def test_sigterm_drains_in_flight_requests_and_exits(tiny_bundles):
    import os

    p = subprocess.Popen([sys.executable, "-m", "ortrefine", "serve", str(tiny_bundles["llama"]), "--port", "0", "--provider", "cpu",
                          "--max-batch", "1"], stderr=subprocess.PIPE, text=True, env={**os.environ, "ORTREFINE_API_KEY": KEY})
    try:
        url = None
        for line in p.stderr:
            m = re.search(r"serving tiny-llama on (http://127\.0\.0\.1:\d+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the server did not start"
        threading.Thread(target=p.stderr.read, daemon=True).start()
        assert httpx.get(url + "/v1/models").status_code == 401  # the key from ORTREFINE_API_KEY
        out = {}

        def call():
            # 12 sequences one at a time: in flight for a while
            out["r"] = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": PROMPTS[0], "max_tokens": 200,
                                                                   "temperature": 0, "n": 12}, headers={"Authorization": f"Bearer {KEY}"},
                                  timeout=60)

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(url + "/health").json()["models"]["tiny-llama"]["running"] == 0:
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)
        t.join(60)
        assert p.wait(60) == 0
        r = out["r"]
        assert r.status_code == 200 and [c["finish_reason"] for c in r.json()["choices"]] == ["length"] * 12
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- the scheduler itself --------------------------------------------------------------------------
def _run_scheduler(lm, jobs, max_batch=8, gap=0.0):
    """jobs: (prompt ids, DecodeParams); Results in order. `gap` staggers arrivals so rows join mid-batch."""
    s = Scheduler(lm, max_batch=max_batch)
    results, done = {}, threading.Event()

    def sink(i):
        def put(obj):
            if isinstance(obj, Result):
                results[i] = obj
                if len(results) == len(jobs):
                    done.set()
        return put

    try:
        for i, (ids, params) in enumerate(jobs):
            s.submit(ids, params, sink(i))
            time.sleep(gap)
        assert done.wait(300)
        return [results[i] for i in range(len(jobs))], s.stats()
    finally:
        s.close()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_scheduler_greedy_equals_generate_with_rows_joining_and_leaving(refs, arch):
    lm = refs[f"tiny-{arch}"]
    jobs = [(lm.encode_prompt(p), DecodeParams(max_tokens=n)) for p, n in zip(PROMPTS, (17, 3, 30, 9, 1, 25, 12, 40))]
    got, stats = _run_scheduler(lm, jobs, max_batch=3, gap=0.002)
    for (ids, params), r in zip(jobs, got):
        want = _generate(lm, ids, params.max_tokens)
        assert r.ids == want.ids and r.text == want.text
    assert stats["steps"] < sum(len(r.ids) for r in got)


@pytest.mark.slow
def test_scheduler_greedy_equals_generate_on_smollm2(smollm2_bundle):
    import ortrefine

    lm = ortrefine.load(smollm2_bundle, provider="cpu")
    jobs = [(lm.encode_prompt(p), DecodeParams(max_tokens=n)) for p, n in zip(PROMPTS[:6], (16, 9, 16, 12, 16, 5))]
    got, stats = _run_scheduler(lm, jobs, max_batch=6, gap=0.01)
    for (ids, params), r in zip(jobs, got):
        assert r.ids == _generate(lm, ids, params.max_tokens).ids
    assert stats["mean_batch"] > 1.5
