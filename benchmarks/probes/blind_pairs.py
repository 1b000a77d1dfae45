"""Two systems' outputs of a stored eval report as blind pairs for a reader, and the reader's
verdicts unblinded.

    python benchmarks/probes/blind_pairs.py make REPORT --prompts PROMPTS.jsonl --a refine --b refine-no-examples --out DIR [--seed 0]
    python benchmarks/probes/blind_pairs.py score DIR

`make` writes DIR/pairs.md (per prompt: the prompt and two texts labelled 1 and 2, the order
drawn per prompt from the seed) and DIR/key.json (which system is 1); `score` reads the
reader's DIR/verdicts.jsonl ({"id", "better": 1 | 2 | 0, "natural_1": bool, "natural_2": bool})
and prints the preference and the natural counts per system. The reader sees neither the system
names nor any score.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def make(report: str, prompt_file: str, a: str, b: str, out: str, seed: int) -> None:
    rows: dict[str, dict] = {}
    for o in json.loads(Path(report).read_text(encoding="utf-8"))["outputs"]:
        rows.setdefault(o["id"], {})[o["system"]] = o["text"]
    items = [json.loads(line) for line in Path(prompt_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = {p["id"]: p["prompt"] for p in items}
    rng = random.Random(seed)
    key, lines = {}, []
    for pid, texts in rows.items():
        if a not in texts or b not in texts:
            continue
        first = a if rng.random() < 0.5 else b
        second = b if first == a else a
        key[pid] = {"1": first, "2": second}
        lines += [f"## {pid}", "", f"prompt: {prompts.get(pid, '(see the prompt set)')}", "",
                  f"1: {texts[first]!r}", "", f"2: {texts[second]!r}", ""]
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "pairs.md").write_text("\n".join(lines), encoding="utf-8")
    (d / "key.json").write_text(json.dumps({"report": report, "a": a, "b": b, "seed": seed, "key": key}, indent=1), encoding="utf-8")
    print(f"{len(key)} pairs -> {d / 'pairs.md'}")


def score(out: str) -> None:
    d = Path(out)
    k = json.loads((d / "key.json").read_text(encoding="utf-8"))
    a, b, key = k["a"], k["b"], k["key"]
    wins = {a: 0, b: 0, "tie": 0}
    natural = {a: 0, b: 0}
    n = 0
    for line in (d / "verdicts.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        v = json.loads(line)
        names = key[v["id"]]
        n += 1
        wins[names[str(v["better"])] if v["better"] in (1, 2) else "tie"] += 1
        for slot in ("1", "2"):
            natural[names[slot]] += bool(v[f"natural_{slot}"])
    rate = (wins[a] + wins["tie"] / 2) / n if n else float("nan")
    print(f"{n} pairs read: {a} preferred {wins[a]}, {b} {wins[b]}, ties {wins['tie']} ({a}'s rate, ties half: {rate:.0%}); "
          f"natural: {a} {natural[a]}/{n}, {b} {natural[b]}/{n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("report")
    m.add_argument("--prompts", required=True)
    m.add_argument("--a", required=True)
    m.add_argument("--b", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("out")
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.report, args.prompts, args.a, args.b, args.out, args.seed)
    else:
        score(args.out)


if __name__ == "__main__":
    main()
