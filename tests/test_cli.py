"""CLI in-process with CliRunner: exit codes and exact output, error paths included."""

from __future__ import annotations

import json
import re

import pytest

from click.testing import CliRunner

from ortrefine.cli.main import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_generate_json(tiny_bundles):
    r = invoke("generate", "Once upon a time", "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "5", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert len(data["ids"]) == 5 and isinstance(data["text"], str) and data["provider"] == "cpu"


def test_generate_chat_beam(tiny_bundles):
    r = invoke("generate", "Why is the sky blue?", "-m", str(tiny_bundles["llama"]), "--chat", "--strategy", "beam",
               "--num-beams", "4", "--max-new-tokens", "4", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["strategy"] == "beam" and data["prompt_ids"][:2] == [1, 87]  # <|im_start|>user, no doubled BOS


def test_generate_errors_are_one_line(tiny_bundles, tmp_path):
    cases = [
        (["generate", "x", "-m", str(tmp_path / "none")], 1, "Error: no bundle at"),
        (["generate", "", "-m", str(tiny_bundles["llama"])], 1, "Error: the prompt is empty"),
        (["generate", "x", "-m", str(tiny_bundles["gpt2"]), "--chat"], 1, "Error: this model has no chat template"),
        (["generate", "x", "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "0"], 2, "Invalid value for '--max-new-tokens'"),
        (["generate", "x", "-m", str(tiny_bundles["llama"]), "--strategy", "nucleus"], 2, "Invalid value for '--strategy'"),
    ]
    for args, code, text in cases:
        r = invoke(*args)
        assert r.exit_code == code, (args, r.output)
        assert text in r.output, (args, r.output)
        assert "Traceback" not in r.output


@pytest.mark.integration
def test_export_unknown_name(tmp_path):
    r = invoke("export", "gpt-17")
    assert r.exit_code == 1
    assert r.output.startswith("Error: 'gpt-17' is not a catalog name (gemma3-270m, smollm2-135m, tiny-gpt2, tiny-llama)")


@pytest.mark.integration
def test_export_then_models_lists_it(tmp_path, monkeypatch):
    r = invoke("export", "tiny-gpt2")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "max |Δlogits| vs torch" in r.output
    r = invoke("models", "--json")
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert rows["tiny-gpt2"]["path"] and rows["tiny-gpt2"]["precision"] == "fp32"
    assert rows["smollm2-135m"]["path"] is None


def test_doctor_reports_session_provider(tiny_bundles):
    r = invoke("doctor", "-m", str(tiny_bundles["llama"]), "--provider", "cpu")
    assert r.exit_code == 0, r.output
    assert "available providers:" in r.output
    assert "session provider: cpu (asked: cpu" in r.output
    assert re.search(r"bundle graph: fused, \d+ nodes, precision fp32", r.output)


def test_refine_json_trace(tiny_bundles):
    r = invoke("refine", "Once upon a time", "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "6",
               "--objective", "logprob", "--objective", "repetition=1.0", "--mode", "keep", "--top-k", "3", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    for key in ("initial", "final", "objective_before", "objective_after", "edits", "cost"):
        assert key in data
    assert set(data["objective_before"]) == {"total", "logprob", "repetition"}
    assert data["objective_after"]["total"] >= data["objective_before"]["total"]
    assert data["initial"]["ids"] and isinstance(data["final"]["text"], str)
    assert data["cost"]["forward_tokens"] > 0
    assert data["config"]["end_repair"] is True and "end_repairs" in data["cost"]
    off = invoke("refine", "Once upon a time", "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "6", "--no-end-repair", "--json")
    assert off.exit_code == 0, off.output
    assert json.loads(off.output)["config"]["end_repair"] is False


def test_refine_human_output(tiny_bundles):
    r = invoke("refine", "Once upon a time", "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "6", "--top-k", "2")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("Y⁰: ") and lines[1].startswith("Y*: ")
    assert any(line.startswith("logprob") for line in lines)
    assert "forward tokens" in lines[-1] or "forward tokens" in lines[-2]


def test_refine_screen_says_it_is_approximate(tiny_bundles):
    r = invoke("refine", "Once upon a time", "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "8", "--top-k", "4",
               "--mode", "keep", "--screen", "1", "--screen-keep", "1", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["cost"]["screened_out"] > 0 and data["config"]["screen"] == 1
    assert data["objective_after"]["total"] >= data["objective_before"]["total"]
    human = invoke("refine", "Once upon a time", "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "8", "--top-k", "4",
                   "--mode", "keep", "--screen", "1", "--screen-keep", "1")
    assert "note: approximate (--screen)" in human.output


def test_refine_errors(tiny_bundles):
    m = str(tiny_bundles["llama"])
    cases = [
        (["refine", "x", "-m", m, "--objective", "bogus"], 1, "Error: unknown objective 'bogus'; known:"),
        (["refine", "x", "-m", m, "--objective", "logprob=nan"], 2, "weight must be a finite number"),
        (["refine", "x", "-m", m, "--budget-seconds", "0"], 2, "budget-seconds must be > 0"),
        (["refine", "x", "-m", m, "--initial", ""], 2, "--initial text is empty"),
        (["refine", "x", "-m", m, "--top-k", "0"], 2, "Invalid value for '--top-k'"),
        (["refine", "x", "-m", m, "--screen-keep", "0"], 2, "Invalid value for '--screen-keep'"),
        (["refine", "x", "-m", m, "--objective", "reward=test_refine:raises_value_error"], 1,
         "Error: reward function test_refine:raises_value_error raised ValueError: boom"),
    ]
    for args, code, text in cases:
        r = invoke(*args)
        assert r.exit_code == code, (args, r.output)
        assert text in r.output, (args, r.output)
        assert "Traceback" not in r.output


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is not None, reason="checks a runtime-only install")
@pytest.mark.parametrize("args", [["export", "tiny:llama", "OUT"], ["quantize", "BUNDLE", "--to", "int8", "--out", "OUT", "--force"],
                                  ["distill", "BUNDLE", "--steps", "1", "--out", "OUT"], ["export-gradient", "BUNDLE"]])
def test_export_commands_without_the_extra_name_the_pip_command(tmp_path, args):
    """A wheel install without [export]: one line naming the extra, not a ModuleNotFoundError."""
    import subprocess
    import sys

    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "ortrefine.json").write_text('{"files": {}, "special_tokens": {"eos_ids": [0]}}')
    (bundle / "model.onnx").write_bytes(b"")
    (bundle / "tokenizer.json").write_text("{}")
    (bundle / "config.json").write_text("{}")
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("BUNDLE", str(bundle)) for a in args]
    r = subprocess.run([sys.executable, "-m", "ortrefine", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "export" in r.stderr.strip().splitlines()[-1] and r.stderr.strip().splitlines()[-1].startswith("Error: ")


# -- exact output: what a user sees and a script parses ---------------------------------------------


def test_models_output_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTREFINE_MODELS", str(tmp_path / "none"))
    r = invoke("models")
    assert r.exit_code == 0
    assert r.output == (
        "smollm2-135m                 catalog     not exported (ortrefine export smollm2-135m)\n"
        "tiny-llama                   catalog     not exported (ortrefine export tiny-llama)\n"
        "tiny-gpt2                    catalog     not exported (ortrefine export tiny-gpt2)\n"
        "gemma3-270m                  catalog     not exported (ortrefine export gemma3-270m)\n"
    )


def test_generate_output_exactly(tiny_bundles):
    import ortrefine

    path = str(tiny_bundles["llama"])
    r = CliRunner().invoke(cli, ["generate", "Hello", "-m", path, "--max-new-tokens", "6"])
    assert r.exit_code == 0, r.output
    out = ortrefine.load(path, provider="cpu").generate("Hello", max_new_tokens=6)
    assert r.stdout == out.text + "\n"
    assert re.fullmatch(r"\[greedy, 6 tokens, log P -\d+\.\d\d, (length|eos|stop), \d+\.\d\ds, cpu\]\n", r.stderr)
    j = json.loads(CliRunner().invoke(cli, ["generate", "Hello", "-m", path, "--max-new-tokens", "6", "--json"]).stdout)
    assert j["ids"] == list(out.ids) and j["text"] == out.text and j["provider"] == "cpu" and j["model"] == path


def test_refine_output_exactly(tiny_bundles):
    path = str(tiny_bundles["llama"])
    r = CliRunner().invoke(cli, ["refine", "Hello", "-m", path, "--max-new-tokens", "6"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0].startswith("Y⁰: ") and lines[1].startswith("Y*: ") and lines[2] == ""
    assert lines[3] == f"{'term':<14}{'before':>12}{'after':>12}{'gain':>10}"
    assert [ln.split()[0] for ln in lines[4:10]] == ["total", "logprob", "repetition", "echo", "length", "guard"] and lines[10] == ""
    k = next(i for i, ln in enumerate(lines) if ln.startswith("sweeps "))
    assert all(re.fullmatch(r"edit: sweep 1 pos \d+ substitute '.*' → '.*'  ΔJ \+\d+\.\d{3}", ln) for ln in lines[11:k]), lines
    assert re.fullmatch(r"sweeps 1 \(\w+\), edits \d+, forward tokens \d+ \(\+\d+ initial\), candidates \d+ "
                        r"\(pruned \d+, \d+ tokens skipped\), \d+\.\d\ds", lines[k]), lines
    assert all(ln.startswith("note: ") for ln in lines[k + 1:]), lines
