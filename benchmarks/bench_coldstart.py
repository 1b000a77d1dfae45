"""Cold start: `import ortrefine` and process start to first token of `ortrefine generate`.

Fresh processes, taking turns, one warm-up round, medians of --reps (page cache warm: the bundle's
files were read before; dropping the cache would disturb the other jobs on this machine):
- `python -c pass` (bare interpreter start) and `python -c 'import ortrefine'`: the import
  time is the difference of their medians;
- `ortrefine generate PROMPT -m <fp32 bundle> --max-new-tokens 1` (the console script next to
  this interpreter): process start to exit after printing the first token.
Then, to say where the time goes: `python -X importtime -c 'import ortrefine'` (largest
cumulative imports) and, in one fresh process, the phases of the generate command timed inside
(`import ortrefine.cli.main`, `ortrefine.load` with session creation, encode, first token;
generate takes its log-probs from the decode loop, so there is no closing pass).

    python benchmarks/bench_coldstart.py [--reps 5] [--model models/smollm2-135m] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import MODELS, goals_section, markdown_table, median, publish, Run, spread, verdict

from ortrefine.bench import DECODE_PROMPT, coldstart, ortrefine_command

PHASES = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import ortrefine.cli.main
t1 = time.perf_counter()
import ortrefine
lm = ortrefine.load(sys.argv[1], provider="cpu")
t2 = time.perf_counter()
ids = lm.encode_prompt(sys.argv[2], max_new_tokens=1)
t3 = time.perf_counter()
out = lm.prefill(ids, keep_last=1)
token = int(out.logits[0, -1].argmax())
t4 = time.perf_counter()
print(json.dumps({"import ortrefine.cli.main": t1 - t0, "ortrefine.load (bundle + session + tokenizer)": t2 - t1,
                  "encode prompt": t3 - t2, "prefill + first token": t4 - t3}))
'''


def import_profile(top: int = 8) -> list[tuple[str, float]]:
    """(module, cumulative seconds) of the slowest imports under `import ortrefine`."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ortrefine"], capture_output=True, text=True, check=True).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cum, name = (x.strip() for x in line[len("import time:"):].split("|"))
            rows.append((name, int(cum) / 1e6))
    keep = [r for r in rows if not r[0].startswith(" " * 5)]  # top levels and their children, not deep ones
    return sorted(keep, key=lambda r: -r[1])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODELS / "smollm2-135m"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    run = Run("bench_coldstart", "ORT intra-op default (all cores)")

    c = coldstart(args.model, args.reps)
    phases = [json.loads(subprocess.run([sys.executable, "-c", PHASES, args.model, DECODE_PROMPT], capture_output=True, text=True,
                                        check=True).stdout) for _ in range(3)]
    imports = import_profile()
    rows = [
        ["`python -c pass`", spread(c.bare, "{:.3f}")],
        ["`python -c 'import ortrefine'`", spread(c.imported, "{:.3f}")],
        ["import ortrefine (difference of medians)", f"{c.import_seconds:.3f}"],
        [f"`{' '.join(['ortrefine' if len(ortrefine_command()) == 1 else 'python -m ortrefine.cli.main', 'generate', '…', '-m', args.model, '--max-new-tokens', '1'])}`",
         spread(c.first_token, "{:.2f}")],
    ]
    phase_rows = [[k, spread([p[k] for p in phases], "{:.3f}")] for k in phases[0]]
    goals = [
        ["`import ortrefine` ≤ 0.3 s", f"{c.import_seconds:.3f} s", verdict(c.import_seconds, 0.3, higher_is_better=False)],
        ["process start to first token ≤ 1.5 s fp32", f"{median(c.first_token):.2f} s", verdict(median(c.first_token), 1.5, higher_is_better=False)],
    ]
    text = "\n".join([
        f"Fresh processes taking turns, one warm-up round, seconds: median (min–max) of {args.reps}; page cache warm.",
        "",
        markdown_table(["what", "seconds"], rows),
        "",
        "Phases of the generate command inside one fresh process (median of 3):",
        "",
        markdown_table(["phase", "seconds"], phase_rows),
        "",
        "Slowest imports under `import ortrefine` (`python -X importtime`, cumulative):",
        "",
        markdown_table(["module", "seconds"], [[f"`{n.strip()}`", f"{s:.3f}"] for n, s in imports]),
        "",
        *goals_section(["goal", "figure", "verdict"], goals),
    ])
    publish("bench_coldstart", text, run, append=not args.no_append)


if __name__ == "__main__":
    main()
