"""compare: two tiny bundles, one judge; three report files with every figure."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ortrefine.cli.main import cli
from ortrefine.errors import ConfigError
from ortrefine.evaluate.compare import read_prompts

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


def _row(name="b"):
    from ortrefine.evaluate.compare import BundleRow

    return BundleRow(bundle=name, precision="fp32", size_mb=1.0, judge_j_before=-2.0, judge_j_after=-1.5, judge_gain=0.5,
                     judge_lp_before=-2.0, judge_lp_after=-1.5, own_gain=0.4, agreement_initial=1.0, agreement_final=0.9,
                     decode_p50_s=0.1, decode_p95_s=0.2, refine_p50_s=0.3, refine_p95_s=0.4, peak_rss_mb=None,
                     batch_dependence=0.0)


def test_write_report_leaves_a_users_files_and_symlinks_alone(tmp_path):
    """The old writer replaced a user's report.md and wrote through report.json/report.png symlinks."""
    from ortrefine.errors import ExportError
    from ortrefine.evaluate.compare import write_report

    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own notes")
    with pytest.raises(ExportError, match=r"holds files ortrefine did not write \(report.md\)"):
        write_report([_row()], mine, {"judge": "b"})
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"] and (mine / "report.md").read_text() == "my own notes"
    # in a folder ortrefine wrote, a target that became a symlink is refused and never followed
    out = tmp_path / "out"
    files = write_report([_row()], out, {"judge": "b"})
    assert {f.name for f in files} >= {"report.json", "report.md"} and (out / ".ortrefine-report").is_file()
    names = ["report.json", "report.md"] + (["report.png"] if (out / "report.png").exists() else [])
    for name in names:
        (out / name).unlink()
        (out / name).symlink_to("../precious.txt")
        with pytest.raises(ExportError, match=rf"{name} \(a symbolic link\) not written by ortrefine"):
            write_report([_row("c")], out, {"judge": "c"})
        assert precious.read_text() == "do not touch" and (out / name).is_symlink(), name
        (out / name).unlink()
        (out / name).write_bytes(b"the user's own file")
        with pytest.raises(ExportError, match=rf"{name} not written by ortrefine"):  # a file in its place is the user's
            write_report([_row("c")], out, {"judge": "c"})
        (out / name).unlink()
        write_report([_row()], out, {"judge": "b"})  # gone: written afresh
    # a planted temp-name symlink is never followed
    (out / ".report.json.tmp").symlink_to("../precious.txt")
    write_report([_row("c")], out, {"judge": "c"})
    assert precious.read_text() == "do not touch" and json.loads((out / "report.json").read_text())["meta"]["judge"] == "c"


def test_compare_refuses_a_users_folder_before_running(prompts_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.json").write_text("{}")
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "nope"), "--prompts", str(prompts_file), "--out", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: ") and "holds files ortrefine did not write (report.json)" in r.output
    assert (out / "report.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_a_bundle_at_a_non_utf8_path_names_the_rename(tmp_path):
    """onnxruntime cannot open a path that is not UTF-8; "re-export the bundle" (to the same path) cannot fix that."""
    import os

    from ortrefine.errors import BundleError
    from ortrefine.runtime.session import make_session

    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9-bundle")  # Latin-1 "café": not UTF-8
    os.mkdir(folder)
    model = os.fsdecode(os.path.join(folder, b"model.onnx"))
    with open(model, "wb") as f:
        f.write(b"\x08\x07")  # whatever is in it: onnxruntime never gets to read it
    with pytest.raises(BundleError) as e:
        make_session(model, "cpu")
    msg = str(e.value)
    assert "the path is not valid UTF-8" in msg and "rename caf\\xe9-bundle to a UTF-8 name" in msg
    assert "re-export" not in msg and "\n" not in msg
    msg.encode("utf-8")  # printable: no lone surrogates
    # a UTF-8 path with a bad file still gets the file's fix
    good = tmp_path / "café" / "model.onnx"
    good.parent.mkdir()
    good.write_bytes(b"\x08\x07")
    with pytest.raises(BundleError, match="onnxruntime cannot load it .*; re-export the bundle"):
        make_session(good, "cpu")


def test_generate_from_a_non_utf8_path(tiny_bundles, tmp_path):
    import os
    import shutil

    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    shutil.copytree(os.fsencode(tiny_bundles["llama"]), folder)
    r = CliRunner().invoke(cli, ["generate", "-m", os.fsdecode(folder), "Once upon a time", "--max-new-tokens", "2"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "the path is not valid UTF-8" in r.output and "rename caf\\xe9 to a UTF-8 name" in r.output
