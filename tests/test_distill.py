"""Distillation on tiny random teachers: student init, KD goes down, exact resume, errors, CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import ortrefine
from ortrefine.cli.main import cli
from ortrefine.errors import BundleError, ConfigError, ExportError
from ortrefine.export.distill import (
    DistillConfig,
    build_student,
    collate,
    default_layers,
    distill,
    distill_losses,
)
from ortrefine.export.writer import write_manifest

CORPUS = "\n\n".join(
    [
        "Once upon a time, in a small village by the sea, there lived an old fisherman and his cat.",
        "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun all day long.",
        "Yesterday the city council voted to build a new park near the river, with a playground.",
        "Why is the sky blue? Sunlight is scattered by the air, and blue light scatters most of all.",
        "The most important thing to remember when learning to cook is to taste as you go, always.",
        "Numbers like 1, 2, 3 and 42 appear in text; so do symbols such as %, $ and # now and then.",
    ]
)


def small(bundle, tmp_path, **kw):
    """A config that runs in about a second on a tiny teacher."""
    base = dict(layers=[1], steps=4, batch_size=2, seq_len=16, lr=3e-3, checkpoint_every=2, out=tmp_path / "student")
    base.update(kw)
    return DistillConfig(bundle, **base)


def test_default_layers():
    assert default_layers(30) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 29]
    assert default_layers(2) == [0, 1]
    assert default_layers(1) == [0]
    assert default_layers(7) == [0, 3, 6]


@pytest.mark.parametrize("arch,layers", [("llama", [1]), ("gpt2", [1]), ("llama", [0, 1])])
def test_student_has_the_teachers_weights(tiny_torch, arch, layers):
    teacher, _ = tiny_torch[arch]
    student = build_student(teacher, layers)
    assert student.config.num_hidden_layers == len(layers)
    if arch == "gpt2":
        assert student.config.n_layer == len(layers)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    prefix = "model.layers" if arch == "llama" else "transformer.h"
    layer_keys = [k for k in s_sd if k.startswith(prefix + ".")]
    assert layer_keys
    for key, value in s_sd.items():
        if key.startswith(prefix + "."):
            j, rest = key[len(prefix) + 1 :].split(".", 1)
            source = f"{prefix}.{layers[int(j)]}.{rest}"
        else:
            source = key  # embeddings, position embeddings, final norm, lm_head
        assert torch.equal(value, t_sd[source]), key
    # and the student's own graph uses them: with every layer kept it *is* the teacher
    ids = torch.tensor([[0, 5, 9, 30, 7]])
    if layers == [0, 1]:
        assert torch.equal(student.eval()(ids).logits, teacher(ids).logits)


def test_kd_loss_of_identical_logits_is_zero():
    logits = torch.randn(2, 5, 11)
    ids, mask = collate([[1, 2, 3, 4, 5], [1, 2, 3]], pad=0)
    kd, ce, n_kd, n_ce = distill_losses(logits, logits, ids, mask, temperature=2.0)
    assert float(kd) == pytest.approx(0.0, abs=1e-6)
    assert (n_kd, n_ce) == (8, 6)  # padding is masked out of both terms
    kd2, *_ = distill_losses(logits + torch.randn(2, 5, 11), logits, ids, mask, temperature=2.0)
    assert float(kd2) > 0


def test_self_generated_distillation_lowers_kd_and_exports(tiny_bundles, tmp_path):
    cfg = small(tiny_bundles["llama"], tmp_path, steps=12, self_generated=16, seq_len=24, batch_size=4, lr=5e-3)
    r = distill(cfg)
    # measured on held-out teacher samples, before and after training
    assert r.heldout_kd_after < r.heldout_kd_before
    assert r.kd_losses[-1] < r.kd_losses[0]
    assert len(r.losses) == len(r.kd_losses) == len(r.ce_losses) == 12
    assert r.student_params < r.teacher_params
    d = r.manifest["distillation"]
    assert d["layers"] == [1] and d["steps"] == 12 and d["final_loss"] == r.losses[-1]
    assert d["teacher"] == str(tiny_bundles["llama"].resolve())
    assert r.manifest["parent"] == str(tiny_bundles["llama"].resolve())
    assert r.manifest["name"] == "student" and r.manifest["validation"]["checks"]
    # the student bundle is an ordinary bundle: loads, generates, and its sizes check out
    lm = ortrefine.load(r.path, provider="cpu", verify=True)
    assert lm.bundle.config["num_hidden_layers"] == 1
    out = lm.generate("Once upon a time", max_new_tokens=4)
    assert len(out.ids) == 4
    # its source is the student's own HF checkpoint (so it can be re-exported or distilled again)
    assert r.manifest["source"]["kind"] == "local"
    assert (r.checkpoint_dir / "student" / "config.json").exists()
    assert not (r.checkpoint_dir / "state.safetensors").exists()  # training state is dropped once the bundle exists


def test_resume_gives_the_identical_loss_curve(tiny_bundles, tmp_path):
    """gpt2 trains with dropout: the curve only matches if RNG and data order are restored."""
    data = tmp_path / "corpus.txt"
    data.write_text(CORPUS)
    kw = dict(layers=[0], steps=6, checkpoint_every=3, data=data, seed=7)
    full = distill(small(tiny_bundles["gpt2"], tmp_path / "a", **kw))

    class Interrupted(Exception):
        pass

    def stop_after_5(step, losses):
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        distill(small(tiny_bundles["gpt2"], tmp_path / "b", on_step=stop_after_5, **kw))
    out_b = tmp_path / "b" / "student"
    assert not out_b.exists() and (tmp_path / "b" / "student.ckpt" / "state.safetensors").exists()
    # a new run refuses to clobber the checkpoint silently
    with pytest.raises(ConfigError, match="--resume"):
        distill(small(tiny_bundles["gpt2"], tmp_path / "b", **kw))
    # resuming under other settings is refused
    with pytest.raises(ConfigError, match="lr"):
        distill(small(tiny_bundles["gpt2"], tmp_path / "b", resume=True, lr=1e-3, **kw))
    resumed = distill(small(tiny_bundles["gpt2"], tmp_path / "b", resume=True, **kw))
    assert resumed.resumed_from == 3
    assert resumed.losses == full.losses  # exact, not approximately
    assert resumed.kd_losses == full.kd_losses and resumed.ce_losses == full.ce_losses
    assert resumed.student_ppl == full.student_ppl
    assert len(set(full.losses)) > 1
    # a different seed is a different curve (the test would pass vacuously otherwise)
    other = distill(small(tiny_bundles["gpt2"], tmp_path / "c", **{**kw, "seed": 8}))
    assert other.losses != full.losses


class Interrupted(Exception):
    pass


def _stop_after(n):
    def on_step(step, losses):
        if step == n:
            raise Interrupted

    return on_step


def _error_of(cfg):
    """The exception distill(cfg) raised, or None: lets a test check side effects before the error."""
    try:
        distill(cfg)
    except Exception as e:  # noqa: BLE001 - the caller asserts the type
        return e
    return None


class _Planted:
    """Unpickling it writes `marker`: what a planted checkpoint could do with any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "unpickled")


@pytest.mark.parametrize("name", ["data.pt", "state.pt"])
def test_a_planted_pickle_is_never_loaded(tiny_bundles, tmp_path, name):
    """Old versions torch.load-ed these with weights_only=False: a planted file ran code."""
    kw = dict(self_generated=6, seq_len=12, steps=4, checkpoint_every=2)
    with pytest.raises(Interrupted):
        distill(small(tiny_bundles["llama"], tmp_path, on_step=_stop_after(3), **kw))
    work, marker = tmp_path / "student.ckpt", tmp_path / "unpickled"
    torch.save(_Planted(marker), work / name)
    for extra in (dict(resume=True), dict()):
        err = _error_of(small(tiny_bundles["llama"], tmp_path, **kw, **extra))
        assert not marker.exists(), f"{name} was unpickled"
        assert isinstance(err, ConfigError), err
        assert re.search(f"{name} is a pickle .* never loaded .* pass --overwrite", str(err)) and "\n" not in str(err)
    # the fix the message names: the folder is distill's (stamped), so it is cleared, the pickle unread
    r = distill(small(tiny_bundles["llama"], tmp_path, overwrite=True, **kw))
    assert len(r.losses) == 4 and r.resumed_from is None
    assert not marker.exists() and not (work / name).exists()


def test_overwrite_never_deletes_a_folder_distill_did_not_write(tiny_bundles, tmp_path):
    llama, work = tiny_bundles["llama"], tmp_path / "student.ckpt"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    for extra in (dict(overwrite=True), dict(), dict(overwrite=True, resume=True)):
        err = _error_of(small(llama, tmp_path, self_generated=4, steps=2, **extra))
        assert (work / "thesis.tex").exists(), f"{extra}: the user's folder was deleted"
        assert sorted(p.name for p in work.iterdir()) == ["thesis.tex"], f"{extra}: distill wrote into the user's folder"
        assert isinstance(err, ExportError) and "no settings.json stamp of ortrefine distill" in str(err), err
        assert not (tmp_path / "student").exists()
    r = CliRunner().invoke(cli, ["distill", str(llama), "--layers", "1", "--steps", "2", "--self-generated", "4",
                                 "--out", str(tmp_path / "student"), "--overwrite"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: ") and "never written into or deleted" in r.output
    assert (work / "thesis.tex").read_text() == "years of work"


def test_overwrite_replaces_only_what_distill_wrote(tiny_bundles, tmp_path):
    """A finished run's folders are distill's; a file added to either makes --overwrite refuse."""
    kw = dict(self_generated=4, seq_len=12, steps=2)
    first = distill(small(tiny_bundles["llama"], tmp_path, **kw))
    out, work = first.path, first.checkpoint_dir
    for folder, name, message in ((work, "notes.txt", "was not written by ortrefine distill"),
                                  (out, "notes.txt", "is not a file of that bundle's ortrefine.json")):
        (folder / name).write_text("mine")
        err = _error_of(small(tiny_bundles["llama"], tmp_path, overwrite=True, **kw))
        assert (folder / name).exists(), f"--overwrite deleted {folder} with the user's {name} in it"
        assert (out / "ortrefine.json").exists()
        assert isinstance(err, ExportError) and message in str(err), err
        (folder / name).unlink()
    # a folder that is not a bundle at all is not replaced either
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    err = _error_of(small(tiny_bundles["llama"], tmp_path, overwrite=True, out=other, **kw))
    assert isinstance(err, ExportError) and "no readable ortrefine.json" in str(err), err
    assert (other / "data.csv").read_text() == "1,2" and not (tmp_path / "other.ckpt").exists()
    # distill's own folders are replaced (the stamp outlives the run for this)
    again = distill(small(tiny_bundles["llama"], tmp_path, overwrite=True, **kw))
    assert again.losses == first.losses and json.loads((out / "ortrefine.json").read_text())["distillation"]


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_bad_input_raises_and_leaves_nothing(tiny_bundles, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    empty = work / "empty.txt"
    empty.write_text("  \n\n \n")
    blank_jsonl = work / "blank.jsonl"
    blank_jsonl.write_text('{"text": "   "}\n{"prompt": ""}\n')
    no_field = work / "nofield.jsonl"
    no_field.write_text('{"body": "hello"}\n')
    one_token = work / "one.txt"
    one_token.write_text("a")
    no_source = work / "nosource"
    shutil.copytree(tiny_bundles["llama"], no_source)
    manifest = json.loads((no_source / "ortrefine.json").read_text())
    del manifest["source"]
    write_manifest(no_source, manifest)
    gone_source = work / "gone"
    shutil.copytree(tiny_bundles["llama"], gone_source)
    manifest["source"] = {"kind": "local", "location": str(tmp_path / "deleted-checkpoint")}
    write_manifest(gone_source, manifest)
    existing = work / "existing"
    existing.mkdir()
    before = _listing(work)
    llama = tiny_bundles["llama"]
    out = work / "student"
    cases = [
        (ConfigError, "layer 2 is out of range: the teacher has 2 layers", dict(bundle=llama, layers=[0, 2])),
        (ConfigError, "distinct and increasing", dict(bundle=llama, layers=[1, 0])),
        (ConfigError, "holds no text", dict(bundle=llama, data=empty)),
        (ConfigError, "holds no text", dict(bundle=llama, data=blank_jsonl)),
        (ConfigError, 'no string field "text" or "prompt"', dict(bundle=llama, data=no_field)),
        (ConfigError, r"gives 1 sequence\(s\) of 2\+ tokens", dict(bundle=llama, data=one_token)),
        (ConfigError, "no data file", dict(bundle=llama, data=work / "missing.txt")),
        (ConfigError, "not both", dict(bundle=llama, data=one_token, self_generated=3)),
        (ConfigError, "no checkpoint", dict(bundle=llama, resume=True)),
        (BundleError, "records no source checkpoint", dict(bundle=no_source)),
        (BundleError, "no longer exists", dict(bundle=gone_source)),
        (BundleError, "no bundle at", dict(bundle=work / "nothing")),
        (ExportError, "already exists; pass --overwrite", dict(bundle=llama, out=existing)),
    ]
    for error, message, kw in cases:
        kw.setdefault("out", out)
        with pytest.raises(error, match=message):
            distill(DistillConfig(steps=2, **kw))
        assert _listing(work) == before, message


def test_cli_distill(tiny_bundles, tmp_path):
    out = tmp_path / "cli-student"
    args = ["distill", str(tiny_bundles["llama"]), "--layers", "1", "--steps", "2", "--self-generated", "4",
            "--seq-len", "12", "--batch-size", "2", "--seed", "3", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (" in r.output and "layers 1)" in r.output
    assert "over 2 steps; held-out ppl teacher" in r.output
    assert json.loads((out / "ortrefine.json").read_text())["distillation"]["layers"] == [1]
    # the same command again: the output exists
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "Error: " in r.output and "already exists; pass --overwrite" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["distill", str(tiny_bundles["llama"]), "--layers", "0,5", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2  # a ConfigError is a bad option value: usage error
    assert r.output.strip().endswith("Error: layer 5 is out of range: the teacher has 2 layers (0..1)")
    r = CliRunner().invoke(cli, ["distill", str(tiny_bundles["llama"]), "--layers", "0,a"])
    assert r.exit_code == 2 and "not a comma-separated list of layer indices" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.ckpt").exists()


def test_a_second_run_to_the_same_out_fails_at_once(tiny_bundles, tmp_path):
    """Two runs to one --out used to train into the same <out>.ckpt, and --overwrite rmtree'd the live run's
    checkpoint: the output is claimed (locked) for the whole run, so the second fails before touching anything."""
    llama, work = tiny_bundles["llama"], tmp_path / "student.ckpt"
    kw = dict(self_generated=4, seq_len=12, steps=3, checkpoint_every=1)
    errors = []

    def second_runs(step, losses):
        if step != 1:
            return
        before = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
        for extra in (dict(), dict(overwrite=True)):
            errors.append(_error_of(small(llama, tmp_path, **kw, **extra)))
            assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()} == before, f"{extra}: the live run's checkpoint was touched"
            assert not (tmp_path / "student").exists()

    r = distill(small(llama, tmp_path, on_step=second_runs, **kw))
    assert len(errors) == 2
    for e in errors:
        assert isinstance(e, ExportError) and "another ortrefine run" in str(e) and "\n" not in str(e), e
    assert len(r.losses) == 3 and json.loads((tmp_path / "student" / "ortrefine.json").read_text())["distillation"]["steps"] == 3


def test_the_target_is_checked_before_training(tiny_bundles, tmp_path):
    """The output was checked only at export: an empty folder with --overwrite trained fully, then failed
    "not an ortrefine bundle"; an output inside the teacher bundle was written into it."""
    llama = tiny_bundles["llama"]
    kw = dict(self_generated=4, seq_len=12, steps=2)
    steps = []

    def count(step, losses):
        steps.append(step)

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error_of(small(llama, tmp_path, out=empty, overwrite=True, on_step=count, **kw))
    if err is None:  # an empty folder is accepted: the student is in it
        assert json.loads((empty / "ortrefine.json").read_text())["distillation"]["steps"] == 2
    else:  # refused: at once, not after training
        assert isinstance(err, ExportError) and steps == [], (err, steps)
        assert list(empty.iterdir()) == []
    # never into the teacher bundle itself (the source the student is distilled from)
    teacher = tmp_path / "teacher"
    shutil.copytree(llama, teacher)
    before = _listing(teacher)
    steps.clear()
    err = _error_of(small(teacher, tmp_path, out=teacher / "student", on_step=count, **kw))
    assert isinstance(err, ExportError) and "lies inside the source" in str(err), err
    assert steps == [] and _listing(teacher) == before


def test_out_dot_is_refused_with_one_line(tiny_bundles, tmp_path, monkeypatch):
    """`cd e2; ortrefine distill ../t --out . --overwrite` raised ValueError: PosixPath('.') has an empty name."""
    llama = tiny_bundles["llama"]
    here = tmp_path / "e2"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "..", "sub/..", str(here)):
        err = _error_of(small(llama, tmp_path, out=Path(out), overwrite=True, self_generated=4, steps=2))
        assert isinstance(err, ConfigError) and "is the current folder or holds it" in str(err), (out, err)
    r = CliRunner().invoke(cli, ["distill", str(llama), "--layers", "1", "--steps", "2", "--self-generated", "4",
                                 "--out", ".", "--overwrite"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: the student's output . is the current folder or holds it")
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["e2"]
    # a relative --out works and is named in full
    r = CliRunner().invoke(cli, ["distill", str(llama), "--layers", "1", "--steps", "2", "--self-generated", "4",
                                 "--seq-len", "12", "--out", "sub/student"])
    assert r.exit_code == 0, r.output
    assert f"wrote {here / 'sub' / 'student'} (" in r.output and (here / "sub" / "student.ckpt" / "settings.json").is_file()
