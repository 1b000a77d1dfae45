"""The runtime must start on a box without torch: prove nothing heavy is imported."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "optimum", "transformers"]


def run_py(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_load_generate_score_without_torch(tiny_bundles):
    code = f"""
import json, sys, ortrefine
lm = ortrefine.load({str(tiny_bundles['llama'])!r}, provider='cpu')
out = lm.generate('Once upon a time', max_new_tokens=4)
lm.score(out.prompt_ids, [out.ids])
ortrefine.refine(lm, 'Once upon a time', ortrefine.RefineConfig(max_new_tokens=4, objectives=['logprob', 'coverage'], keywords=('dog',)))
print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))
"""
    assert run_py(code) == {m: False for m in HEAVY}


def test_cli_generate_without_torch(tiny_bundles):
    code = f"""
import json, sys
from click.testing import CliRunner
from ortrefine.cli.main import cli
r = CliRunner().invoke(cli, ['generate', 'Hello', '-m', {str(tiny_bundles['gpt2'])!r}, '--max-new-tokens', '3'])
assert r.exit_code == 0, r.output
print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))
"""
    assert run_py(code) == {m: False for m in HEAVY}
