"""`ortrefine batch`: one model load, ids kept, error records, resumable after kill -9; and on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ortrefine.batch.config import BatchConfig
from ortrefine.batch.records import OutputLog, read_input
from ortrefine.errors import ConfigError, OrtRefineError


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _same(a, b):
    """Records equal: ids, texts, reasons exactly; log-probs to 1e-4 (in a shared batch the
    kernels round differently depending on the batch-mates, by ~1e-6)."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        assert {f for f in x if f not in ("logprob", "token_logprobs")} == {f for f in y if f not in ("logprob", "token_logprobs")}
        for f in x:
            if f in ("logprob", "token_logprobs"):
                assert x[f] == pytest.approx(y[f], abs=1e-4), (k, f)
            else:
                assert x[f] == y[f], (k, f)
    return True


def _by_id(path):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ids = [json.dumps(r["id"]) for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, rows))


# -- units (no model) ------------------------------------------------------------------------------
def test_torn_last_line_is_cut_and_its_record_redone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "text": "a"}\n{"id": "2", "text": "b"}\n{"id": 3, "te')
    with OutputLog(out) as log:
        assert log.done == {"1", '"2"'} and log.repaired == len('{"id": 3, "te')
        log.append({"id": 3, "text": "c"})
    assert out.read_text().splitlines()[-1] == '{"id": 3, "text": "c"}'
    with OutputLog(out) as log:
        assert len(log.done) == 3 and log.repaired == 0


def test_output_log_refuses_a_second_writer_and_foreign_files(tmp_path):
    out = tmp_path / "out.jsonl"
    with OutputLog(out):
        with pytest.raises(OrtRefineError, match="another batch job is writing it"):
            OutputLog(out)
    bad = tmp_path / "notes.jsonl"
    bad.write_text("hello\n")
    with pytest.raises(OrtRefineError, match="not an output record"):
        OutputLog(bad)


def test_input_ids_are_kept_or_line_numbers_and_must_be_unique(tmp_path):
    recs = read_input(_write(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"prompt": "y"}, "not json", "", {"id": 7, "prompt": "z"}]))
    assert [r.id for r in recs] == ["a", 2, 3, 7] and recs[2].problem and recs[1].record == {"prompt": "y"}
    with pytest.raises(ConfigError, match="id 'a' is on lines 1 and 2"):
        read_input(_write(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]))


def test_config_refuses_options_that_would_be_ignored():
    for opts, msg in (({"temperature": 0.5}, "--temperature only applies with --strategy sample"),
                      ({"task": "refine", "strategy": "beam"}, "--strategy does not apply to --task refine"),
                      ({"mode": "keep"}, "--mode does not apply to --task generate"),
                      ({"bogus": 1}, "unknown batch setting")):
        with pytest.raises(ConfigError, match=msg):
            BatchConfig.from_dict(opts)
    cfg = BatchConfig.from_dict({"task": "refine", "objective": ["logprob", "repetition=1"], "top-k": "all", "max_tokens": 8})
    assert cfg.refine.top_k is None and cfg.refine.max_new_tokens == 8 and len(cfg.refine.objectives) == 2
    assert BatchConfig.from_dict({"strategy": "sample", "top_k": "5", "seed": 3}).generation.top_k == 5
    assert BatchConfig.from_dict({"task": "refine"}).refine.end_repair is True
    assert BatchConfig.from_dict({"task": "refine", "end_repair": False}).refine.end_repair is False
    with pytest.raises(ConfigError, match="end_repair must be true or false"):
        BatchConfig.from_dict({"task": "refine", "end_repair": "no"})
    with pytest.raises(ConfigError, match=r"--no-end-repair \(end_repair\) does not apply to --task generate"):
        BatchConfig.from_dict({"end_repair": False})
    with pytest.raises(ConfigError, match=r"--no-prune \(prune\) does not apply"):
        BatchConfig.from_dict({"prune": False})


# -- on the tiny model ------------------------------------------------------------------------------
PROMPTS = ["Once upon a time", "The capital of France is", "Hello", "Why is the sky blue?", "Numbers: 1, 2, 3,"]


@pytest.fixture(scope="module")
def llama(tiny_bundles):
    import ortrefine

    return ortrefine.load(tiny_bundles["llama"], provider="cpu")


def test_generate_job_equals_generate_and_keeps_going_after_bad_records(tmp_path, tiny_bundles, llama):
    from ortrefine.batch import run_batch

    recs = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)] + [
        {"id": "empty", "prompt": "  "}, "{broken", {"id": "long", "prompt": "word " * 400}, {"id": "odd", "prompt": "x", "colour": 1}]
    inp = _write(tmp_path / "in.jsonl", recs)
    outs = {}
    for bs in (1, 8):  # one at a time and continuously batched: the same records
        out = tmp_path / f"out{bs}.jsonl"
        s = run_batch(inp, out, BatchConfig(model=str(tiny_bundles["llama"]), provider="cpu", generation=_gen(12), batch_size=bs),
                      progress=False)
        assert (s.total, s.written, s.errors, s.skipped) == (9, 9, 4, 0)
        outs[bs] = _by_id(out)
    assert _same(outs[1], outs[8])
    got = outs[8]
    for i, p in enumerate(PROMPTS):
        want = llama.generate(p, max_new_tokens=12)
        assert got[f'"p{i}"']["text"] == want.text and got[f'"p{i}"']["ids"] == want.ids
    assert got['"empty"']["error"]["type"] == "RecordError" and got["7"]["error"]["type"] == "RecordError"
    assert got['"long"']["error"]["type"] == "PromptError" and "colour" in got['"odd"']["error"]["message"]


def _gen(n, **kw):
    from ortrefine.runtime.decoding import GenerationConfig

    return GenerationConfig(max_new_tokens=n, **kw)


def test_refine_job_with_per_record_fields(tmp_path, tiny_bundles, llama):
    import ortrefine
    from ortrefine.batch import run_batch

    inp = _write(tmp_path / "in.jsonl", [{"id": 1, "prompt": "Name a pet", "system": "Be brief."},
                                         {"id": 2, "prompt": "Name a pet", "initial": "a cat", "keywords": "dog,cat"}])
    cfg = BatchConfig.from_dict({"task": "refine", "model": str(tiny_bundles["llama"]), "provider": "cpu", "chat": True,
                                 "objectives": ["logprob", "coverage=2"], "max_new_tokens": 6, "mode": "keep", "top_k": 2})
    run_batch(inp, tmp_path / "out.jsonl", cfg, progress=False)
    got = _by_id(tmp_path / "out.jsonl")
    base = ortrefine.RefineConfig(objectives=["logprob", "coverage=2"], max_new_tokens=6, mode="keep", top_k=2, chat=True)
    from dataclasses import replace

    want1 = ortrefine.refine(llama, "Name a pet", replace(base, system="Be brief."))
    want2 = ortrefine.refine(llama, "Name a pet", replace(base, initial="a cat", keywords=("dog", "cat")))
    assert got["1"]["final"]["text"] == want1.final.text and got["1"]["objective_after"] == pytest.approx(want1.objective_after)
    assert got["2"]["initial"]["text"] == "a cat" and got["2"]["final"]["text"] == want2.final.text


def test_cli_exits_1_when_records_failed_after_writing_the_rest(tmp_path, tiny_bundles):
    """A script running the job must learn that some records were not done, and the others must
    still be there; so must a rerun, which skips the failed ids (they are written), until their
    lines are deleted and they are done."""
    from click.testing import CliRunner

    from ortrefine.cli.main import cli

    inp = _write(tmp_path / "in.jsonl", [{"id": 1, "prompt": PROMPTS[0]}, {"id": 2, "prompt": "  "}, {"id": 3, "prompt": PROMPTS[1]}])
    out = tmp_path / "o.jsonl"
    args = ["batch", str(inp), str(out), "-m", str(tiny_bundles["llama"]), "--max-new-tokens", "4", "--no-progress"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert "Error: 1 record(s) failed" in r.output and "Traceback" not in r.output
    rows = _by_id(out)
    assert "error" in rows["2"] and rows["1"]["text"] and rows["3"]["text"]
    r = CliRunner().invoke(cli, args)  # a rerun redoes nothing, and OUT is still not complete
    assert r.exit_code == 1 and "0 records written" in r.output, r.output
    assert "Error: 1 record(s) failed (1 by an earlier run)" in r.output
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines() if '"error"' not in line))
    inp.write_text(json.dumps({"id": 1, "prompt": PROMPTS[0]}) + "\n" + json.dumps({"id": 2, "prompt": "Hello"}) + "\n"
                   + json.dumps({"id": 3, "prompt": PROMPTS[1]}) + "\n")
    r = CliRunner().invoke(cli, args)  # its line deleted and its prompt fixed, the record is done
    assert r.exit_code == 0 and "1 records written" in r.output and "Error" not in r.output, r.output
    ok = _write(tmp_path / "ok.jsonl", [{"id": 1, "prompt": PROMPTS[0]}])
    r = CliRunner().invoke(cli, ["batch", str(ok), str(tmp_path / "ok-out.jsonl"), *args[3:]])
    assert r.exit_code == 0 and "Error" not in r.output, r.output


def test_cli_config_file_and_overrides(tmp_path, tiny_bundles):
    from click.testing import CliRunner

    from ortrefine.cli.main import cli

    inp = _write(tmp_path / "in.jsonl", [{"id": 1, "prompt": PROMPTS[0]}])
    conf = tmp_path / "job.toml"
    conf.write_text('task = "generate"\nmax_new_tokens = 4\nstrategy = "sample"\nseed = 1\n')
    r = CliRunner().invoke(cli, ["batch", str(inp), str(tmp_path / "o.jsonl"), "-m", str(tiny_bundles["llama"]), "--config", str(conf),
                                 "--max-new-tokens", "6", "--no-progress"])
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert row["id"] == 1 and len(row["ids"]) == 6 and row["strategy"] == "sample"
    r = CliRunner().invoke(cli, ["batch", str(inp), str(tmp_path / "p.jsonl"), "--workers", "3"])
    assert r.exit_code == 2 and "--workers only applies with --ray" in r.output
    r = CliRunner().invoke(cli, ["batch", str(inp), str(tmp_path / "p.jsonl"), "--mode", "keep"])
    assert r.exit_code == 2 and "--mode does not apply to --task generate" in r.output
    for flag, key in (("--no-end-repair", "end_repair"), ("--no-prune", "prune")):  # the flag reaches the setting it negates
        r = CliRunner().invoke(cli, ["batch", str(inp), str(tmp_path / "p.jsonl"), flag])
        assert r.exit_code == 2 and f"{flag} ({key}) does not apply to --task generate" in r.output, r.output
    assert not (tmp_path / "p.jsonl").exists()


def test_kill_9_mid_job_then_resume_gives_every_record_once(tmp_path, tiny_bundles):
    """1,000 records: killed with SIGKILL part-way, a torn line added, run again: exactly 1,000 records,
    equal to an uninterrupted run's."""
    from ortrefine.batch import run_batch

    n = 1000
    inp = _write(tmp_path / "in.jsonl", [{"id": i, "prompt": f"{PROMPTS[i % 5]} {i}"} for i in range(n)])
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "ortrefine", "batch", str(inp), str(out), "-m", str(tiny_bundles["llama"]), "--provider", "cpu",
           "--max-new-tokens", "16", "--no-progress"]
    p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 50):
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    lines = out.read_bytes().count(b"\n")
    assert 50 <= lines < n, f"the job was not killed mid-way ({lines} records)"
    with open(out, "ab") as f:  # as if the kill had landed inside a write
        f.write(b'{"id": 999999, "text": "half a rec')
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cut a torn last line" in r.stderr and f"{n - lines} records written" in r.stderr
    got = _by_id(out)
    assert len(got) == n and set(got) == {str(i) for i in range(n)}
    ref = tmp_path / "ref.jsonl"
    run_batch(inp, ref, BatchConfig(model=str(tiny_bundles["llama"]), provider="cpu", generation=_gen(16)), progress=False)
    assert _same(got, _by_id(ref))


# -- Ray -------------------------------------------------------------------------------------------
def test_ray_job_equals_the_local_job_and_resumes(tmp_path, tiny_bundles):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ortrefine.batch import run_batch, run_ray

    inp = _write(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"{PROMPTS[i % 5]} {i}"} for i in range(40)] + ["{broken"])
    cfg = BatchConfig(model=str(tiny_bundles["llama"]), provider="cpu", generation=_gen(10), batch_size=4)
    local = tmp_path / "local.jsonl"
    run_batch(inp, local, cfg, progress=False)
    want = _by_id(local)
    out = tmp_path / "ray.jsonl"  # half done already, and a torn line: Ray does the rest
    lines = local.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:20]) + lines[20][:15])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = run_ray(inp, out, cfg, workers=2, cpus_per_worker=1, progress=False)
    finally:
        ray.shutdown()
    assert (s.total, s.skipped, s.written, s.errors) == (41, 20, 21, 1) and s.repaired == 15
    assert _same(_by_id(out), want)


@pytest.mark.parametrize("content", [b"Dear diary,\nonly copy of text", b"only copy of text", b'{"a": 1}', b'{"id": 1, "text": "x"}\nnotes'])
def test_a_file_batch_did_not_write_is_never_cut(tmp_path, content):
    from ortrefine.batch.records import OutputLog
    from ortrefine.errors import OrtRefineError

    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    with pytest.raises(OrtRefineError, match="not written by `ortrefine batch`|not an unfinished output record"):
        OutputLog(out)
    assert out.read_bytes() == content


def test_a_torn_record_is_cut(tmp_path):
    from ortrefine.batch.records import OutputLog

    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": 1, "text": "x"}\n{"id": 2, "te')
    with OutputLog(out) as log:
        assert log.done == {"1"} or len(log.done) == 1
    assert out.read_bytes() == b'{"id": 1, "text": "x"}\n'


def test_output_symlink_is_refused(tmp_path):
    from ortrefine.batch.records import OutputLog
    from ortrefine.errors import OrtRefineError

    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    (tmp_path / "out.jsonl").symlink_to(precious)
    with pytest.raises(OrtRefineError, match="symlink"):
        OutputLog(tmp_path / "out.jsonl")
    assert precious.read_text() == "mine"
