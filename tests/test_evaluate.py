"""ortrefine.evaluate: every flag and metric on hand-made texts, the statistics, the judge path,
report writing, and `ortrefine eval` end to end on the tiny bundles."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ortrefine.errors import ConfigError
from ortrefine.evaluate import metrics as m
from ortrefine.evaluate.data import DEFAULT_SYSTEMS, EvalItem, parse_system, read_items, read_systems
from ortrefine.evaluate.stats import bootstrap_mean, paired

KW = ["dog", "frisbee", "park"]


# -- degeneration flags ---------------------------------------------------------------------------
def test_repeated_ngram():
    assert m.text_report("the cat sat. the cat sat. the cat sat.", "x").flags["repeated_ngram"]
    assert not m.text_report("the cat sat. the cat sat. then it left.", "x").flags["repeated_ngram"]  # twice only
    assert m.max_ngram_count("a b c a b c a b c", 3) == 3


def test_low_distinct2():
    r = m.text_report("I think I think I think so", "x")
    assert m.distinct_n("I think I think I think so", 2) == pytest.approx(3 / 6)
    assert r.flags["low_distinct2"]
    assert not m.text_report("The sun rose over the quiet hills and the birds began to sing.", "x").flags["low_distinct2"]
    assert not m.text_report("no no", "x").flags["low_distinct2"]  # one bigram says nothing
    assert m.distinct_n("word", 2) is None


def test_char_run():
    r = m.text_report("Mmmmmmmmmmmmm happy birthday", "x")
    assert r.flags["char_run"] and r.stats["longest_char_run"] == 13  # case-folded: M + 12 m
    assert not m.text_report("Wow!!!!!!! great", "x").flags["char_run"]  # 7 is under the threshold
    assert m.text_report("Wow!!!!!!!! great", "x").flags["char_run"]  # 8
    assert not m.text_report("a        b", "x").flags["char_run"]  # spaces are not a run


def test_prompt_echo():
    prompt = "Once upon a time, in a small village"
    assert m.text_report("and then once upon a time there was", prompt).flags["prompt_echo"]
    assert not m.text_report("a girl lived upon a hill for a time", prompt).flags["prompt_echo"]
    assert not m.text_report("Hi there you", "Hi there").flags["prompt_echo"]  # prompt shorter than 4 words


def test_empty_and_cut_off():
    assert m.text_report("", "x").flags["empty"] and m.text_report("  ...  ", "x").flags["empty"]
    assert m.text_report("", "x").degenerate
    assert m.text_report("The sky is blue because", "x", hit_cap=True).flags["cut_off"]
    assert not m.text_report("The sky is blue.", "x", hit_cap=True).flags["cut_off"]
    assert not m.text_report("The sky is blue because", "x", hit_cap=False).flags["cut_off"]  # ended by eos
    assert not m.text_report("The sky is blue because", "x", hit_cap=True).degenerate  # counted, not degenerate


@pytest.mark.parametrize("text", [
    "dog, frisbee, park.", "A dog, a frisbee, and a park.", "Keywords: dog, frisbee, park.", "1. dog 2. frisbee 3. park",
    "Dog frisbee park.", "Dog and frisbee and park", "Dog, frisbee, park, red ball, and stick, all at the park today",
    "Here is a list: dog, frisbee, park.",  # 3 of 4 pieces bare, a verb cue elsewhere
    "Dogs chase frisbees.",  # headline style: flagged (documented)
])
def test_keyword_list_flagged(text):
    r = m.text_report(text, "Write one sentence that uses all of these words: dog, frisbee, park.", keywords=KW)
    assert r.flags["keyword_list"] and r.degenerate and not r.real_sentence


@pytest.mark.parametrize("text", [
    "The dog caught the frisbee in the park.", "In the park, the dog, a happy puppy, caught the frisbee.",
    "Dogs, frisbees and parks are fun.", "The dog catches the frisbee, the ball, and the stick in the park.",
    "My dog loves the park, the frisbee, and the sun.", "Dog caught frisbee at park.",
])
def test_real_sentences_not_flagged(text):
    r = m.text_report(text, "Write one sentence that uses all of these words: dog, frisbee, park.", keywords=KW)
    assert not r.flags["keyword_list"] and r.all_covered and r.real_sentence


def test_keyword_list_only_tested_with_keywords():
    assert not m.text_report("dog, frisbee, park.", "x").flags["keyword_list"]


def test_commongen_references_are_sentences():
    """No human reference of the bundled CommonGen sample may be flagged, and all cover their concepts."""
    from pathlib import Path

    items = read_items(Path(__file__).parents[1] / "data" / "commongen-dev-120.jsonl")
    assert len(items) == 120
    for item in items:
        for ref in item.references:
            r = m.text_report(ref, item.prompt, keywords=item.keywords)
            assert not r.degenerate and r.all_covered, (ref, item.keywords, r.flags)


# -- keyword coverage -----------------------------------------------------------------------------
def test_coverage_lemmatised():
    text = "She sat down, held the mice and was cutting leaves while standing by the hands of children."
    kws = ["sit", "hold", "mouse", "cut", "leaf", "stand", "hand", "child", "frisbee"]
    r = m.text_report(text, "x", keywords=kws)
    assert r.keywords_covered == kws[:-1] and r.coverage == pytest.approx(8 / 9) and r.all_covered is False


def test_coverage_whole_words_only():
    assert m.covered_keywords("The category of cats", ["cat", "dog"]) == ["cat"]
    assert m.covered_keywords("A doghouse", ["dog"]) == []
    assert m.covered_keywords("an ice cream cone", ["ice cream", "cone"]) == ["ice cream", "cone"]
    assert m.covered_keywords("ice and cream", ["ice cream"]) == []


# -- chrF -----------------------------------------------------------------------------------------
def test_chrf_hand_computed():
    # "abc" vs "abd": orders 1..3 effective (P = R = 2/3, 1/2, 0) → P = R = 7/18 → F2 = 7/18
    assert m.chrf("abc", ["abd"]) == pytest.approx(100 * 7 / 18)
    # "ab" vs "abab": P = (1, 1) / 2 = 1, R = (2/4 + 1/3) / 2 = 5/12 → F2 = 5·P·R / (4P + R) = 25/53
    assert m.chrf("ab", ["abab"]) == pytest.approx(100 * 25 / 53)
    assert m.chrf("a b", ["ab"]) == pytest.approx(100.0)  # whitespace is ignored
    assert m.chrf("A", ["a"]) == 0.0  # case is kept
    assert m.chrf("", ["abc"]) == 0.0
    assert m.chrf("abc", ["xyz", "abc"]) == pytest.approx(100.0)  # best reference
    with pytest.raises(ValueError):
        m.chrf("abc", [])


def test_chrf_recall_weighted():
    # beta 2 weights recall: a hypothesis holding the whole reference plus extra scores higher
    # than one holding half of it exactly
    ref = "the cat sat on the mat"
    assert m.chrf(ref + " today in the sun", [ref]) > m.chrf("the cat sat", [ref])


# -- statistics -----------------------------------------------------------------------------------
def test_bootstrap():
    iv = bootstrap_mean([0.0] * 50 + [1.0] * 50, seed=1)
    assert iv.mean == 0.5 and iv.n == 100
    se = math.sqrt(0.25 / 100)
    assert iv.low == pytest.approx(0.5 - 1.96 * se, abs=0.03) and iv.high == pytest.approx(0.5 + 1.96 * se, abs=0.03)
    assert bootstrap_mean([0.0] * 50 + [1.0] * 50, seed=1) == iv  # seeded
    assert bootstrap_mean([2.0, 2.0, 2.0]).low == 2.0 == bootstrap_mean([2.0, 2.0, 2.0]).high
    assert bootstrap_mean([]).mean is None and bootstrap_mean([None, 3.0]).n == 1


def test_paired_win_rate():
    p = paired([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0])
    assert (p.n, p.wins, p.ties, p.losses) == (4, 2, 1, 1)
    assert p.win_rate == pytest.approx(2.5 / 4) and p.delta.mean == pytest.approx(0.5)
    assert paired([], []).win_rate is None
    with pytest.raises(ValueError):
        paired([1.0], [])


# -- inputs ---------------------------------------------------------------------------------------
def test_read_items_schema(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "kind": "continue", "prompt": "Hi"}\n\n'
                 '{"id": "b", "kind": "reference", "prompt": "Q", "reference": "R"}\n')
    items = read_items(p)
    assert items[1] == EvalItem("b", "reference", "Q", (), ("R",)) and items[1].chat and not items[0].chat
    for line, msg in [('{"kind": "nope", "prompt": "x"}', "kind 'nope'"), ('{"kind": "keywords", "prompt": "x"}', "needs \"keywords\""),
                      ('{"prompt": ""}', "non-empty"), ('not json', "not JSON"), ('{"prompt": "x", "colour": 1}', "unknown field"),
                      ('{"prompt": "x", "keywords": "a,b"}', None)]:
        p.write_text(line + "\n")
        if msg is None:
            assert read_items(p)[0].keywords == ("a,b",)
            continue
        with pytest.raises(ConfigError, match=msg):
            read_items(p)
    p.write_text('{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n')
    with pytest.raises(ConfigError, match="p.jsonl:2: id '1' is used twice"):
        read_items(p)


def test_systems_file(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"baseline": "g", "systems": [
        {"name": "g", "strategy": "greedy"}, {"name": "b2", "strategy": "beam", "num_beams": 2},
        {"name": "s", "strategy": "sample", "temperature": 0.7, "seed": 3},
        {"name": "r", "strategy": "refine", "objectives": ["logprob", "repetition=1.0"], "top_k": 2, "initial_strategy": "beam"}]}))
    systems, baseline = read_systems(p)
    assert baseline == "g" and [s.name for s in systems] == ["g", "b2", "s", "r"]
    assert systems[3].refine_config(16).initial_strategy.strategy == "beam"
    t = tmp_path / "s.toml"
    t.write_text('[[systems]]\nname = "g"\nstrategy = "greedy"\n[[systems]]\nname = "r"\nstrategy = "refine"\nsweeps = 2\n')
    assert [s.name for s in read_systems(t)[0]] == ["g", "r"]
    for bad, msg in [({"name": "x", "strategy": "beam", "sweeps": 2}, "unknown option"), ({"name": "x", "strategy": "magic"}, "strategy 'magic'"),
                     ({"name": "x", "strategy": "refine", "objectives": ["nope"]}, "system 'x'"),
                     ({"name": "x", "strategy": "sample", "temperature": -1}, "temperature")]:
        with pytest.raises(ConfigError, match=msg):
            parse_system(bad, "here")
    p.write_text(json.dumps([{"name": "g", "strategy": "greedy"}, {"name": "g", "strategy": "greedy"}]))
    with pytest.raises(ConfigError, match="used twice: g"):
        read_systems(p)
    assert [s.name for s in DEFAULT_SYSTEMS] == ["greedy", "beam-4", "refine", "refine-logprob"]


# -- judging --------------------------------------------------------------------------------------
def test_judge_texts_on_a_scripted_model():
    from fakelm import CHARS, FakeLM

    from ortrefine.evaluate.judge import judge_context, judge_texts

    def next_lp(ctx):  # favours the letter after the last one
        logits = np.zeros(len(CHARS))
        logits[(ctx[-1] % (len(CHARS) - 1)) + 1] = 3.0
        return logits - np.log(np.exp(logits).sum())

    lm = FakeLM(next_lp)
    scores = judge_texts(lm, "ab", ["cde", "", "hhh", "cde"])
    want = sum(next_lp([1, 2, 3, 4][: k + 2])[t] for k, t in enumerate([3, 4, 5]))
    assert scores[0].total == pytest.approx(want, abs=1e-5) and scores[0].tokens == 3 and scores[0].mean == pytest.approx(want / 3, abs=1e-5)
    assert scores[1].mean is None and scores[1].tokens == 0
    assert scores[2].mean < scores[0].mean and scores[3] == scores[0]
    assert judge_context("Q?", chat=True) == "Q?\n" and judge_context("Once", chat=False) == "Once"


def test_independence(tmp_path):
    from ortrefine.evaluate.data import System
    from ortrefine.evaluate.run import EvalConfig, independence

    model, judge, other = (tmp_path / n for n in ("model", "judge", "other"))
    for d in (model, judge, other):
        d.mkdir()
        (d / "ortrefine.json").write_text("{}")
    plain = EvalConfig(model=str(model), judges=[str(judge)], systems=[System("g", "greedy"), System("r", "refine")])
    assert independence(plain, str(judge)) == {"independent": True, "reasons": []}
    assert independence(plain, str(model))["reasons"] == ["the judge is the model under test"]
    inside = EvalConfig(model=str(model), judges=[str(judge)],
                        systems=[System("r", "refine", {"objectives": ["logprob", f"reward:fn={judge},label=0"]})])
    assert independence(inside, str(judge))["independent"] is False
    assert "system 'r' has the judge inside J" in independence(inside, str(judge))["reasons"][0]
    assert independence(inside, str(other))["independent"] is True


# -- report ---------------------------------------------------------------------------------------
def _fake_report():
    from ortrefine.evaluate.run import EvalConfig, Output, summarize

    items = [EvalItem("a", "continue", "Once upon a time"), EvalItem("k", "keywords", "Use: dog, park.", ("dog", "park"), ("A dog in a park.",))]
    texts = {("greedy", "a"): "there was a cat.", ("greedy", "k"): "dog, park.", ("r", "a"): "there was a dog.",
             ("r", "k"): "The dog ran in the park."}
    judge = {("greedy", "a"): -2.0, ("greedy", "k"): -1.0, ("r", "a"): -1.5, ("r", "k"): -2.5}
    outs = []
    for (sysname, iid), text in texts.items():
        item = next(i for i in items if i.id == iid)
        rep = m.text_report(text, item.prompt, False, item.keywords, item.references)
        outs.append(Output(iid, item.kind, sysname, text, 5, False, 0.1, -3.0, {
            "flags": rep.flags, "degenerate": rep.degenerate, "stats": rep.stats, "keywords_covered": rep.keywords_covered,
            "coverage": rep.coverage, "all_covered": rep.all_covered, "real_sentence": rep.real_sentence, "chrf": rep.chrf},
            judges={"j": {"total": judge[(sysname, iid)] * 5, "mean": judge[(sysname, iid)], "tokens": 5, "joint": True}}))
    from ortrefine.evaluate.data import System

    cfg = EvalConfig(model="m", judges=["j"], systems=[System("greedy", "greedy"), System("r", "refine")])
    summary = summarize(outs, items, cfg, ["j"])
    meta = {"model": "m", "judges": [{"name": "j", "bundle": "j", "independent": False, "reasons": ["the judge is the model under test"]}],
            "independent": False, "n_prompts": 2, "kinds": {"continue": 1, "keywords": 1}, "max_new_tokens": 5, "baseline": "greedy",
            "degenerate_flags": list(m.DEGENERATE_FLAGS), "date_utc": "now", "machine": {"cpus": 2}}
    return {"meta": meta, "systems": [s.to_dict() for s in cfg.systems], "summary": summary, "outputs": [o.to_dict() for o in outs]}


def test_summary_figures():
    s = _fake_report()["summary"]
    assert s["greedy"]["degenerate"] == 1 and s["greedy"]["degenerate_ids"] == ["k"]  # the comma list
    assert s["r"]["degenerate"] == 0 and s["r"]["degenerate_new_vs_baseline"] == 0
    pv = s["r"]["judges"]["j"]["paired_vs_baseline"]
    assert pv["n"] == 1 and pv["wins"] == 1 and pv["delta"]["mean"] == pytest.approx(0.5)  # only prompt a is a clean pair
    assert s["r"]["keywords"]["real_sentence"]["mean"] == 1.0 and s["greedy"]["keywords"]["real_sentence"]["mean"] == 0.0
    assert s["greedy"]["keywords"]["lists"] == 1 and s["r"]["chrf"]["n"] == 1
    assert s["greedy"]["judges"]["j"]["mean_logprob"]["mean"] == pytest.approx(-1.5)


def test_write_report(tmp_path):
    pytest.importorskip("matplotlib", reason="the PNG needs the plot extra")
    from ortrefine.evaluate.report import write_report

    files = write_report(_fake_report(), tmp_path / "out")
    assert [f.name for f in files] == ["report.json", "report.md", "report.png"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "judge `j` (j): **not independent**: the judge is the model under test" in md
    assert "| r | 0/2 (0) | -2.00 [-2.50, -1.50] | +0.50 (n 1) | 100 % (1-0-0) | 100 % [100, 100] (lists 0/1) |" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["r"]["n"] == 2
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_without_matplotlib(tmp_path, monkeypatch):
    from ortrefine.evaluate.report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    files = write_report(_fake_report(), tmp_path / "out")
    assert [f.name for f in files] == ["report.json", "report.md"] and not (tmp_path / "out" / "report.png").exists()
    assert "no report.png" in (tmp_path / "out" / "report.md").read_text()
    assert "no report.png" in json.loads((tmp_path / "out" / "report.json").read_text())["meta"]["plot"]


def _tree(folder):
    """{name: bytes or '-> target'} of a folder, not following links."""
    out = {}
    for e in sorted(folder.iterdir()):
        out[e.name] = f"-> {os.readlink(e)}" if e.is_symlink() else e.read_bytes()
    return out


def test_write_report_never_replaces_a_users_file(tmp_path):
    """A folder holding the user's own report.md (ortrefine never wrote there) is refused, untouched."""
    from ortrefine.errors import ExportError
    from ortrefine.evaluate.report import write_report

    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    with pytest.raises(ExportError, match=r"mine holds files ortrefine did not write \(report.md\).*move them or choose another --out"):
        write_report(_fake_report(), out)
    assert _tree(out) == {"report.md": b"my own notes"}


@pytest.mark.parametrize("name", ["report.json", "report.md", "report.png"])
def test_write_report_never_writes_through_a_symlink(tmp_path, name):
    """Even in a folder ortrefine wrote, a target that became a symlink is refused, the file it points at kept."""
    pytest.importorskip("matplotlib", reason="the PNG needs the plot extra")
    from ortrefine.errors import ExportError
    from ortrefine.evaluate.report import write_report

    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    out = tmp_path / "out"
    write_report(_fake_report(), out)
    (out / name).unlink()
    (out / name).symlink_to("../precious.txt")
    before = _tree(out)
    with pytest.raises(ExportError, match=f"{name} \\(a symbolic link\\) not written by ortrefine"):
        write_report(_fake_report(), out)
    assert precious.read_text() == "do not touch" and _tree(out) == before


def test_write_report_ignores_a_planted_temp_symlink(tmp_path):
    """The old writer opened `.report.json.tmp` by name and followed a symlink planted there."""
    from ortrefine.evaluate.report import write_report

    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    out = tmp_path / "out"
    write_report(_fake_report(), out)
    for name in ("report.json", "report.md", "report.png"):
        (out / f".{name}.tmp").symlink_to("../precious.txt")
    write_report(_fake_report(), out)
    assert precious.read_text() == "do not touch"
    assert json.loads((out / "report.json").read_text())["summary"]["r"]["n"] == 2
    assert all((out / f".{n}.tmp").is_symlink() for n in ("report.json", "report.md", "report.png"))


def test_write_report_rewrites_its_own_folder_only(tmp_path):
    """A second run replaces the first run's files; a report.md the user edited since is not replaced."""
    from ortrefine.errors import ExportError
    from ortrefine.evaluate.report import write_report

    out = tmp_path / "out"
    write_report(_fake_report(), out)
    (out / "notes.txt").write_text("mine")  # beside the report: left alone, not in the way
    first = (out / "report.json").read_text()
    write_report(_fake_report(), out)
    assert (out / "report.json").read_text() == first and (out / "notes.txt").read_text() == "mine"
    (out / "report.md").write_text("edited by hand")
    with pytest.raises(ExportError, match="report.md not written by ortrefine \\(or changed since it wrote them\\)"):
        write_report(_fake_report(), out)
    assert (out / "report.md").read_text() == "edited by hand"


def test_write_plot_does_not_follow_a_symlink(tmp_path):
    pytest.importorskip("matplotlib", reason="the PNG needs the plot extra")
    from ortrefine.errors import ExportError
    from ortrefine.evaluate.report import write_plot

    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    (tmp_path / "report.png").symlink_to("precious.txt")
    with pytest.raises(ExportError, match="is a symbolic link"):
        write_plot(_fake_report(), tmp_path / "report.png")
    assert precious.read_text() == "do not touch" and (tmp_path / "report.png").is_symlink()
    assert write_plot(_fake_report(), tmp_path / "plot.png") is None
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_level_is_torch_free():
    import subprocess

    code = ("import sys, ortrefine.cli.eval_cmd, ortrefine.evaluate.run, ortrefine.evaluate.report, ortrefine.evaluate.metrics; "
            "bad = [m for m in ('torch', 'transformers', 'optimum', 'matplotlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- end to end -----------------------------------------------------------------------------------
def _eval(*args):
    from ortrefine.cli.main import cli

    return CliRunner().invoke(cli, ["eval", *args])


@pytest.fixture()
def eval_inputs(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(d) for d in [
        {"id": "k1", "kind": "keywords", "prompt": "Write one sentence that uses all of these words: dog, park.",
         "keywords": ["dog", "park"], "references": ["A dog runs in the park."]},
        {"id": "c1", "kind": "continue", "prompt": "Once upon a time"},
        {"id": "q1", "kind": "chat", "prompt": "Why is the sky blue?"},
    ]) + "\n")
    systems = tmp_path / "s.json"
    systems.write_text(json.dumps([{"name": "greedy", "strategy": "greedy"}, {"name": "beam-2", "strategy": "beam", "num_beams": 2},
                                   {"name": "sample", "strategy": "sample", "seed": 1, "top_k": 5},
                                   {"name": "refine", "strategy": "refine", "top_k": 2, "positions_per_batch": 2}]))
    return prompts, systems


def test_eval_end_to_end(tiny_bundles, eval_inputs, tmp_path):
    prompts, systems = eval_inputs
    llama, gpt2 = str(tiny_bundles["llama"]), str(tiny_bundles["gpt2"])
    out = tmp_path / "report"
    r = _eval("--prompts", str(prompts), "--systems", str(systems), "--judge", llama, "--judge", gpt2, "--model", llama,
              "--out", str(out), "--limit", "2", "--max-new-tokens", "6")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    judges = {j["bundle"]: j for j in rep["meta"]["judges"]}
    assert judges[llama]["independent"] is False and judges[gpt2]["independent"] is True and rep["meta"]["independent"] is False
    assert rep["meta"]["n_prompts"] == 2 and len(rep["outputs"]) == 2 * 4
    names = [j["name"] for j in rep["meta"]["judges"]]
    for o in rep["outputs"]:
        assert set(o["judges"]) == set(names) and set(o["flags"]) == set(m.ALL_FLAGS)
        for sc in o["judges"].values():
            assert sc["mean"] is None or (sc["mean"] < 0 and sc["tokens"] > 0)
    assert set(rep["summary"]) == {"greedy", "beam-2", "sample", "refine"} and "keywords" in rep["summary"]["refine"]
    assert (out / "report.png").is_file() and "not independent" in (out / "report.md").read_text()
    assert "| system | degenerate" in r.output


def test_eval_refuses_a_users_folder_before_running(eval_inputs, tmp_path):
    """The folder check runs before any model is loaded (the judge here does not even exist)."""
    prompts, systems = eval_inputs
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    r = _eval("--prompts", str(prompts), "--systems", str(systems), "--judge", str(tmp_path / "nope"), "--model",
              str(tmp_path / "nope"), "--out", str(out))
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "holds files ortrefine did not write (report.md)" in r.output
    assert (out / "report.md").read_text() == "my own notes" and sorted(p.name for p in out.iterdir()) == ["report.md"]


def test_judge_score_is_the_models_own(tiny_bundles):
    """Judging text with the model that wrote it gives that model's log P of its tokens (BOS and
    all: the judge's context is encoded as a prompt)."""
    import ortrefine
    from ortrefine.evaluate.judge import judge_texts

    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    prompt, text = "Once upon a time", " there was a cat."
    ids = lm.tokenizer.encode_plain(text)
    assert lm.tokenizer.encode(prompt + text) == lm.tokenizer.encode(prompt) + ids  # no merge across the boundary
    want = lm.score(lm.encode_prompt(prompt), [ids]).totals[0]
    (got,) = judge_texts(lm, prompt, [text])
    assert got.joint and got.tokens == len(ids) and got.total == pytest.approx(want, abs=1e-4)


def test_eval_bad_input(tiny_bundles, eval_inputs, tmp_path):
    prompts, systems = eval_inputs
    llama = str(tiny_bundles["llama"])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x", "strategy": "beam", "num_beams": 0}]')
    r = _eval("--prompts", str(prompts), "--systems", str(bad), "--judge", llama, "--model", llama, "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "num_beams" in r.output and "Traceback" not in r.output
    r = _eval("--prompts", str(prompts), "--judge", str(tmp_path / "nope"), "--model", llama, "--out", str(tmp_path / "o"),
              "--systems", str(systems), "--limit", "1", "--max-new-tokens", "2")
    assert r.exit_code == 1 and r.output.startswith("Error:") and len(r.output.strip().splitlines()) == 1
    r = _eval("--prompts", str(prompts), "--judge", llama, "--model", llama, "--out", str(tmp_path / "o"), "--baseline", "nope")
    assert r.exit_code == 2 and "baseline 'nope'" in r.output
    assert not (tmp_path / "o").exists()


def test_a_systems_guide_settings_apply_to_its_keyword_prompts_and_are_checked_up_front():
    from ortrefine.evaluate.data import System
    from ortrefine.runtime.guide import GuideConfig

    s = System("r", "refine", {"guide": {"bias": 3.0}})
    s.check()
    kw = EvalItem("k", "keywords", "Use dog, park.", keywords=("dog", "park"))
    assert s.refine_config(32, kw).guide_config == GuideConfig(bias=3.0)
    assert s.refine_config(32, EvalItem("c", "continue", "Once upon a time")).guide_config is None
    assert System("r", "refine", {"guide": False}).refine_config(32, kw).guide_config is None
    with pytest.raises(ConfigError, match="bias"):
        System("bad", "refine", {"guide": {"bias": -1}}).check()


def test_meta_comment_flags_an_editors_remark_nobody_asked_for():
    story = "The dog ran across the street"
    remark = ".\n\nI made a few minor tweaks to the text to improve its clarity and grammar."
    assert m.text_report(remark, story).flags["meta_comment"] and m.text_report(remark, story).degenerate
    assert m.text_report(".\n\nThe original sentence is: \"The dog ran.\"", story).flags["meta_comment"]
    assert m.text_report(" a cliff.\n\nThis is a classic example of a metaphor.", story).flags["meta_comment"]
    assert not m.text_report(" and barked at the mailman, who dropped his letters.", story).flags["meta_comment"]
    # the analyst's voice the meta term drove refinement to, when only the editor's was caught
    for remark in (".\n\nI made the following changes to improve the original sentence:\n\n- Changed \"the dog\" to \"it\"",
                   ".\n\nThe original sentence, \"The dog ran,\" is a classic example of a non sequitur.",
                   ".\n\nThis sentence is a classic example of a double negative.",
                   ".\n\nThe answer is no. The sentence \"The girl may have died\" is a classic example of a logical fallacy.",
                   ".\n\nIn the context of your story, this could be a turning point.",
                   ".\n\nIn the context of the original passage, it's a metaphor."):
        assert m.text_report(remark, story).flags["meta_comment"], remark
    # the analyst explaining the words just written, which refining under the guard drifted to
    # once the editor's voice was caught
    for remark in (".\n\nIn this example, the client is the one who makes the haircut.",
                   " a bed of straw.\n\nIn this example, the sentence is structured in a passive voice.",
                   ' sun.\n\nThe phrase "the sun is shining" is an idiomatic expression.',
                   " mouth.\n\nThe phrase is a nod to the traditional Japanese practice.",
                   " a scarf.\n\nIn this story, the scarf is a symbol of her heritage.",
                   ' a cat.\n\nThe word \u201cpet\u201d has multiple meanings.',
                   " party.\n\nThe sentence has a grammatical error.",
                   " eating.\n\nThe sentence can be rephrased to make it more concise.",
                   ' the air.\n\nIn the original, the sentence is: "She put her hand in the air."',
                   ' down.\n\nThe original meaning of the phrase is "to put the baby down".',
                   " the ground.\n\nThis example illustrates the concept of Occam's Razor.",
                   ' teeth. The subject of the sentence is the man.',
                   " the lane.\n\nIn this scenario, the traffic police are not just enforcing laws.",
                   # the critic's: the story just told filed under a genre or device
                   ' hair.\n\nThe original:\n\n"A man with a beard."\n\nThe revised:\n\n"A man."',
                   " a bed.\n\nThe story of the boy and his mom is a classic trope in literature.",
                   " a book.\n\nThe book is a classic example of a non sequitur.",
                   " antics.\n\nThe story of the elephant's antics is a classic example of how a character acts.",
                   " a fork.\n\nThis is a classic lateral thinking puzzle.",
                   " a flower.\n\nThe sentence is a metaphor that uses a simple image."):
        assert m.text_report(remark, story).flags["meta_comment"], remark
    # a story's own sentences, versions and examples are not remarks about a text
    for plain in (" to the court, where the judge read out a sentence of ten years.",
                  ". The original version of the song was slower.",
                  ". The game is a classic example of a game of chance, and he lost.",
                  ". The passage is narrow and damp.", ". The passage contains a secret door.",
                  ", and the lawyer said the sentence is ten years in prison.", ". The teacher said the given answer was wrong.",
                  " the original text of the letter.", ". To improve its battery life, lower the screen brightness.",
                  ". He didn't know the word for it.", ". The word spread quickly through the village.",
                  ". In this town, everyone knows each other.", ". In this case, the ball is lost.",
                  ". She whispered the phrase again and again.", ". The first sentence of the letter was short.",
                  ". In the story she told, the dog was a wolf.", ".\n\nThe expression on her face was grim.",
                  ".\n\nThe phrase was carved above the door.", "\n\nThe term ended in June.",
                  ". The original plan was to leave at dawn.", ". The story of the old mill was told by every child.",
                  "\n\nThe original owner: Jack.", ". The book is heavy.",
                  # a story's own words, signs and reviews (a reviewer's drill)
                  ' and shouted the word "Freedom!" at the crowd.', '. The words "No Entry" were painted on the door.',
                  ' and repeated the word "hello" until she smiled.', '. The term "essential worker" is defined broadly.',
                  ". The story of Apollo 13 is a great example of teamwork.", ". This book is a perfect example of how summer feels.",
                  ". Critics called the twist a classic plot device.", ". The well-known trope of the silent genius returns.",
                  " and would learn about figurative language.", " and find the subject of the sentence on the board.",
                  ". It was a complete non sequitur, and everyone laughed.", " and posed a lateral thinking puzzle to the class.",
                  "\n\nThe phrase has stuck with me ever since.", "\n\nIn the story, she was always late.",
                  "\n\nIn the original, the painting hung in the hall.", "\n\nThe original version: a plain wooden box.",
                  "\n\nThe revised: less sugar this year."):
        assert not m.text_report(plain, story).flags["meta_comment"], plain
    assert not m.text_report("This sentence is a question.", "Explain this sentence: why?").flags["meta_comment"]
    assert not m.text_report('The sentence "The ball was thrown by John" is in the passive voice.',
                             "Give an example of the passive voice.").flags["meta_comment"]


def test_meta_comment_check_is_linear_on_blank_lines():
    """A newline loop is a common degenerate output, and the guard runs the check on every candidate."""
    import time

    t = time.perf_counter()
    m.comments_on_text("\n" * 20000 + "- x", "")
    assert time.perf_counter() - t < 2.0  # quadratic backtracking took 5 s here; linear takes milliseconds
    asked = "Improve this sentence: the dog run fast."
    assert not m.text_report("I made a few changes: \"The dog runs fast.\"", asked).flags["meta_comment"]  # editing was asked for


def test_reflag_recounts_a_stored_run_with_todays_checks():
    from ortrefine.evaluate.run import reflag

    items = [EvalItem("a", "continue", "Once upon a time"), EvalItem("k", "keywords", "Use: dog, park.", ("dog", "park"), ("A dog in a park.",))]
    stored = _fake_report()
    old = next(o for o in stored["outputs"] if (o["system"], o["id"]) == ("r", "a"))
    old["text"] = " there was a dog.\n\nIn the context of your story, the dog is a symbol."  # flags stored before the check existed
    assert not old["degenerate"] and stored["summary"]["r"]["degenerate"] == 0
    new = reflag(stored, items)
    assert new["summary"]["r"]["degenerate"] == 1 and new["summary"]["r"]["degenerate_new_vs_baseline"] == 1
    assert new["summary"]["r"]["flags"]["meta_comment"] == 1 and "paired_vs_baseline" in new["summary"]["r"]["judges"]["j"]
    assert new["summary"]["r"]["judges"]["j"]["paired_vs_baseline"]["n"] == 0  # its one clean pair is no longer clean
    assert [o["judges"] for o in new["outputs"]] == [o["judges"] for o in stored["outputs"]]  # scores kept, not recomputed
    assert new["meta"]["reflagged_utc"] and new["meta"]["date_utc"] == "now"
    with pytest.raises(ConfigError, match="lacks 1 of the report's prompts"):
        reflag(stored, items[:1])
    for broken, says in (({"outputs": []}, "'meta' is missing"),
                         ({**stored, "outputs": stored["outputs"][:-1]}, "has no output for prompt"),
                         ({**stored, "outputs": [{**o, "judges": {}} for o in stored["outputs"]]}, "no score from judge 'j'"),
                         ({**stored, "outputs": [{**o, "kind": "chat"} for o in stored["outputs"]]}, "another kind"),
                         ({**stored, "outputs": []}, "no outputs"),
                         ({**stored, "meta": {**stored["meta"], "bootstrap": None}}, None),
                         ({**stored, "outputs": [{**o, "judges": {"j": {**o["judges"]["j"], "mean": "x"}}} for o in stored["outputs"]]},
                          "not a well-formed")):
        if says is None:
            assert reflag(broken, items)["summary"]["r"]["n"] == 2  # a missing bootstrap seed falls back to 0
            continue
        with pytest.raises(ConfigError, match=says):
            reflag(broken, items)


def test_eval_reflag_cli(tmp_path):
    stored = tmp_path / "report.json"
    stored.write_text(json.dumps(_fake_report()))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "kind": "continue", "prompt": "Once upon a time"}\n'
                       '{"id": "k", "kind": "keywords", "prompt": "Use: dog, park.", "keywords": ["dog", "park"], "references": ["A dog in a park."]}\n')
    r = _eval("--reflag", str(stored), "--prompts", str(prompts), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert "Flags recounted from the stored texts" in (tmp_path / "o" / "report.md").read_text()
    assert json.loads((tmp_path / "o" / "report.json").read_text())["summary"]["greedy"]["degenerate"] == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes")
    r = _eval("--reflag", str(stored), "--prompts", str(prompts), "--out", str(tmp_path / "mine"))
    assert r.exit_code != 0 and "Traceback" not in r.output and (tmp_path / "mine" / "report.md").read_text() == "my notes"
    assert json.loads((tmp_path / "o" / "report.json").read_text())["meta"]["prompts"] == str(prompts)
    before = stored.read_text()
    r = _eval("--reflag", str(stored), "--prompts", str(prompts), "--out", str(tmp_path))  # the stored run's own folder
    assert r.exit_code == 2 and "holds the report being recounted" in r.output and stored.read_text() == before
    prompts.write_text('{"id": "a", "kind": "continue", "prompt": "Once upon a time"}\n')
    r = _eval("--reflag", str(stored), "--prompts", str(prompts), "--out", str(tmp_path / "o2"))
    assert r.exit_code == 2 and "lacks 1" in r.output and not (tmp_path / "o2").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    r = _eval("--reflag", str(bad), "--prompts", str(prompts), "--out", str(tmp_path / "o3"))
    assert r.exit_code == 2 and "not a readable JSON report" in r.output and "Traceback" not in r.output
    r = _eval("--prompts", str(prompts), "--out", str(tmp_path / "o4"))  # no --reflag: a judge is required
    assert r.exit_code == 2 and "--judge" in r.output and not (tmp_path / "o4").exists()


def test_reference_system_scores_the_human_reference(tiny_bundles, eval_inputs, tmp_path):
    """The judge's verdict on what a person wrote, beside a system's: the reference's text, no decoding."""
    prompts, _ = eval_inputs
    llama, gpt2 = str(tiny_bundles["llama"]), str(tiny_bundles["gpt2"])
    systems = tmp_path / "ref.json"
    systems.write_text(json.dumps([{"name": "greedy", "strategy": "greedy"}, {"name": "human", "strategy": "reference"}]))
    out = tmp_path / "report"
    r = _eval("--prompts", str(prompts), "--systems", str(systems), "--judge", gpt2, "--model", llama,
              "--out", str(out), "--limit", "1", "--max-new-tokens", "2")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    human = [o for o in rep["outputs"] if o["system"] == "human"]
    assert [o["text"] for o in human] == ["A dog runs in the park."]
    assert human[0]["hit_cap"] is False and human[0]["flags"]["cut_off"] is False  # longer than the 2-token cap, not cut
    (score,) = human[0]["judges"].values()
    assert human[0]["all_covered"] is True and human[0]["tokens"] > 2 and score["mean"] < 0 and score["tokens"] > 2
    assert rep["summary"]["human"]["judges"]
    # a prompt without references is refused before any decoding, in one line
    r = _eval("--prompts", str(prompts), "--systems", str(systems), "--judge", gpt2, "--model", llama,
              "--out", str(tmp_path / "r2"), "--max-new-tokens", "2")
    assert r.exit_code != 0 and "needs a reference on every prompt" in r.output and "'c1'" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "r2").exists()


def test_reference_system_takes_no_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        parse_system({"name": "h", "strategy": "reference", "num_beams": 2}, "x")
    assert parse_system({"name": "h", "strategy": "reference"}, "x").objectives() == []
