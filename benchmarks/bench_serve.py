"""What continuous batching buys: `ortrefine serve` under 1, 4 and 8 concurrent clients, side by side.

The server runs in its own process (`python -m ortrefine serve BUNDLE --port 0`), as a user would
run it; the clients are threads here, each sending its requests one after another as streaming
/v1/completions calls (greedy, --tokens new tokens, the dev prompts' `continue` kind in turn). A
round runs every configuration once, in a rotating order, and --rounds rounds are taken:
- `generate` (no server): `ortrefine.load` + `generate` in this process, one request after
  another: the single stream without HTTP;
- 1 client: the single stream through the server;
- 4 and 8 clients: the same number of requests per client, concurrently.
Per configuration: aggregate tokens/s (completion tokens of all requests / wall time of the
configuration), request latency p50/p95, time to first token p50/p95, and the server's mean
decode batch over the configuration (from /health). eos may end a request early: only generated
tokens are counted.

    python benchmarks/bench_serve.py models/smollm2-135m [--tokens 64] [--requests 2] [--rounds 2] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import DEV_PROMPTS, Run, bundle, goals_section, markdown_table, median, publish, verdict

GOAL_AT_8 = 3.0  # issue 16: aggregate throughput of 8 clients ≥ 3× the single stream's


def prompts() -> list[str]:
    try:
        rows = [json.loads(line) for line in DEV_PROMPTS.read_text().splitlines() if line.strip()]
        out = [r["prompt"] for r in rows if r.get("kind") == "continue"]
    except OSError:
        out = []
    return out or ["Once upon a time, in a small village by the sea, there lived", "Yesterday the city council voted to"]


class Server:
    """`ortrefine serve` in a child process; its address from the line it prints when ready."""

    def __init__(self, path: str, max_batch: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ortrefine", "serve", path, "--port", "0", "--provider", "cpu",
                                      "--max-batch", str(max_batch)], stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            m = re.search(r"serving (\S+) on (http://\S+)", line)
            if m:
                self.model, self.url = m.group(1), m.group(2)
                break
        else:
            raise RuntimeError("the server did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stats(self, httpx) -> dict:
        return httpx.get(self.url + "/health").json()["models"][self.model]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def stream_one(client, url: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streaming request."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, used = None, 0
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    return latency, first if first is not None else latency, used


def run_clients(httpx, server: Server, clients: int, requests: int, tokens: int, texts: list[str]) -> dict:
    before = server.stats(httpx)

    def worker(w: int) -> list[tuple[float, float, int]]:
        with httpx.Client() as c:
            return [stream_one(c, server.url, server.model, texts[(w * requests + k) % len(texts)], tokens) for k in range(requests)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = [x for f in [pool.submit(worker, w) for w in range(clients)] for x in f.result()]
    wall = time.perf_counter() - t0
    after = server.stats(httpx)
    steps = after["steps"] - before["steps"]
    batch = (after["generated_tokens"] - before["generated_tokens"] - len(rows)) / steps if steps else 0.0  # first tokens come from prefills
    return {"wall": wall, "tokens": sum(r[2] for r in rows), "latency": [r[0] for r in rows], "ttft": [r[1] for r in rows], "batch": batch}


def run_direct(lm, requests: int, tokens: int, texts: list[str]) -> dict:
    rows = []
    t0 = time.perf_counter()
    for k in range(requests):
        t = time.perf_counter()
        out = lm.generate(texts[k % len(texts)], max_new_tokens=tokens)
        rows.append((time.perf_counter() - t, len(out.ids)))
    wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": sum(r[1] for r in rows), "latency": [r[0] for r in rows], "ttft": [], "batch": 1.0}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="bundle folder (or a name under models/)")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per configuration")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    import httpx

    import ortrefine

    path = str(bundle(args.model))
    counts = [int(c) for c in args.clients.split(",")]
    texts = prompts()
    run = Run("bench_serve", "ORT intra-op default (all cores), server and clients on the same machine",
              extra_versions=("starlette", "uvicorn"))
    server = Server(path, max_batch=max(counts))
    lm = ortrefine.load(path, provider="cpu")
    configs = ["generate"] + [f"{c} clients" for c in counts]
    results: dict[str, list[dict]] = {c: [] for c in configs}
    try:
        run_clients(httpx, server, 1, 1, 8, texts)  # warm-up: first passes, connections
        lm.generate(texts[0], max_new_tokens=8)
        for r in range(args.rounds):
            order = configs[r % len(configs):] + configs[: r % len(configs)]
            for name in order:
                if name == "generate":
                    results[name].append(run_direct(lm, args.requests, args.tokens, texts))
                else:
                    c = int(name.split()[0])
                    results[name].append(run_clients(httpx, server, c, args.requests, args.tokens, texts))
                print(f"round {r + 1} {name}: {results[name][-1]['tokens'] / results[name][-1]['wall']:.1f} tok/s", file=sys.stderr)
    finally:
        server.stop()

    def rate(rs: list[dict]) -> float:
        return median([x["tokens"] / x["wall"] for x in rs])

    single = rate(results["1 clients"]) if "1 clients" in results else rate(results["generate"])
    rows = []
    for name in configs:
        rs = results[name]
        lat = [v for x in rs for v in x["latency"]]
        ttft = [v for x in rs for v in x["ttft"]]
        rows.append([name, sum(x["tokens"] for x in rs), f"{rate(rs):.1f}", f"{rate(rs) / single:.2f}×",
                     f"{pct(lat, 50):.2f} / {pct(lat, 95):.2f}", f"{pct(ttft, 50):.2f} / {pct(ttft, 95):.2f}" if ttft else "–",
                     f"{median([x['batch'] for x in rs]):.2f}"])
    goals = []
    if "8 clients" in results:
        gain = rate(results["8 clients"]) / single
        goals.append([f"aggregate tokens/s at 8 clients ≥ {GOAL_AT_8:g}× one client's", f"{gain:.2f}×", verdict(gain, GOAL_AT_8)])
    text = "\n".join([
        f"Bundle `{path}`; greedy, max_tokens {args.tokens}, {args.requests} streaming requests per client per configuration, "
        f"{args.rounds} rounds (rotating order); tokens/s: median over rounds; latencies in seconds over all requests.",
        "",
        markdown_table(["configuration", "tokens", "aggregate tok/s", "vs 1 client", "latency p50 / p95", "first token p50 / p95",
                        "mean decode batch"], rows),
        "",
        *goals_section(["goal", "figure", "verdict"], goals, title="Goal (issue 16), from this run:"),
    ])
    publish("bench_serve", text, run, append=not args.no_append)


if __name__ == "__main__":
    main()
