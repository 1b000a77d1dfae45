"""compare: two tiny bundles, one judge; three report files with every figure."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ortrefine.cli.main import cli
from ortrefine.errors import ConfigError
from ortrefine.runtime.compare import read_prompts

FIGURES = {"bundle", "precision", "size_mb", "judge_j_before", "judge_j_after", "judge_gain", "own_gain",
           "agreement_initial", "agreement_final", "decode_p50_s", "decode_p95_s", "refine_p50_s",
           "refine_p95_s", "peak_rss_mb", "batch_dependence", "prompts"}


@pytest.fixture()
def prompts_file(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps(d) for d in [
        {"id": "a", "kind": "continue", "prompt": "Once upon a time"},
        {"id": "b", "kind": "keywords", "chat": False, "prompt": "Use these words: dog, park.", "keywords": ["dog", "park"]},
    ]) + "\n")
    return p


def test_compare_writes_three_files(tiny_bundles, prompts_file, tmp_path):
    out = tmp_path / "report"
    r = CliRunner().invoke(cli, ["compare", str(tiny_bundles["llama"]), str(tiny_bundles["gpt2"]), "--prompts", str(prompts_file),
                                 "--judge", str(tiny_bundles["llama"]), "--out", str(out), "--max-new-tokens", "6"])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    rows = data["rows"]
    assert [row["bundle"] for row in rows] == [str(tiny_bundles["llama"]), str(tiny_bundles["gpt2"])]
    for row in rows:
        assert FIGURES <= set(row)
        assert len(row["prompts"]) == 2
        assert row["size_mb"] > 0 and row["decode_p50_s"] > 0 and row["refine_p95_s"] >= row["refine_p50_s"]
    judge_row = rows[0]
    assert judge_row["agreement_initial"] == 1.0 and judge_row["agreement_final"] == 1.0  # the judge agrees with itself
    assert judge_row["judge_j_after"] >= judge_row["judge_j_before"] - 1e-6  # J never falls under its own model
    assert judge_row["batch_dependence"] < 1e-4  # fp32 is batch-invariant
    md = (out / "report.md").read_text()
    assert "| bundle | precision |" in md and md.count(str(tiny_bundles["gpt2"])) == 1
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out / "report.png").ndim == 3


def test_bad_prompts_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: each line must be a JSON object with a \"prompt\""):
        read_prompts(bad)
    with pytest.raises(ConfigError, match="no prompts file"):
        read_prompts(tmp_path / "missing.jsonl")
    r = CliRunner().invoke(cli, ["compare", "x", "--prompts", str(bad)])
    assert r.exit_code == 2 and "each line must be a JSON object" in r.output
