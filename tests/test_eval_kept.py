"""`ortrefine eval-kept`: the share of refinement's judged gain a quantized bundle keeps, from stored reports."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ortrefine.errors import ConfigError
from ortrefine.evaluate.kept import gain_kept, markdown, read_report


def _report(scores: dict[str, dict[str, float]], degenerate: dict[tuple[str, str], bool] | None = None,
            judge: str = "j", tokens: int = 32) -> dict:
    """A report with one output per (prompt, system): scores[system][prompt] is the judge's mean."""
    degenerate = degenerate or {}
    outputs = [{"id": pid, "system": system, "text": "t", "degenerate": degenerate.get((pid, system), False),
                "judges": {judge: {"mean": value, "total": value * 10, "tokens": 10}}}
               for system, per in scores.items() for pid, value in per.items()]
    return {"meta": {"baseline": "greedy", "max_new_tokens": tokens, "judges": [{"name": judge, "independent": True}]},
            "outputs": outputs}


def _pair(full_gain: list[float], quant_gain: list[float], quant_base_shift: float = 0.0):
    ids = [f"p{k}" for k in range(len(full_gain))]
    full = _report({"greedy": {i: -2.0 for i in ids}, "refine": {i: -2.0 + g for i, g in zip(ids, full_gain)}})
    quant = _report({"greedy": {i: -2.0 + quant_base_shift for i in ids},
                     "refine": {i: -2.0 + quant_base_shift + g for i, g in zip(ids, quant_gain)}})
    return full, quant


def test_share_kept_is_the_ratio_of_mean_gains_on_common_prompts():
    full, quant = _pair([0.2, 0.4, 0.3, 0.1], [0.1, 0.2, 0.15, 0.05])
    r = gain_kept([(full, quant)])
    assert r.n_clean == 4 and r.judge == "j" and r.baseline == "greedy"
    assert r.gain_full.mean == pytest.approx(0.25) and r.gain_quant.mean == pytest.approx(0.125)
    assert r.kept.value == pytest.approx(0.5)
    assert r.margin.mean == pytest.approx(0.125 - 0.8 * 0.25)
    assert r.verdict == "not met"  # every prompt keeps half: the margin's interval lies below 0


def test_verdict_met_and_undecided():
    full, quant = _pair([0.2] * 6, [0.19, 0.2, 0.21, 0.2, 0.19, 0.21])
    assert gain_kept([(full, quant)]).verdict == "met"
    full, quant = _pair([0.2] * 6, [0.8, -0.4, 0.6, -0.3, 0.5, -0.2])
    assert gain_kept([(full, quant)]).verdict == "undecided"


def test_against_the_full_precision_baseline():
    # int4's own greedy is 0.1 worse and its refine gains as much as fp32's: all of its own gain is
    # kept, but against fp32's greedy it has only half of it
    full, quant = _pair([0.2, 0.2], [0.2, 0.2], quant_base_shift=-0.1)
    r = gain_kept([(full, quant)])
    assert r.kept.value == pytest.approx(1.0)
    assert r.gain_quant_vs_full_baseline.mean == pytest.approx(0.1) and r.kept_vs_full_baseline.value == pytest.approx(0.5)


def test_a_prompt_counts_only_when_all_four_outputs_are_clean():
    full, quant = _pair([0.2, 0.2, 5.0], [0.2, 0.2, -5.0])
    for o in quant["outputs"]:
        if o["id"] == "p2" and o["system"] == "greedy":
            o["degenerate"] = True  # a loop in the quantized bundle's greedy: p2 leaves the comparison
    r = gain_kept([(full, quant)])
    assert r.n_clean == 2 and r.n_prompts == 3 and r.kept.value == pytest.approx(1.0)
    assert r.degenerate == {"full/greedy": 0, "full/refine": 0, "quant/greedy": 1, "quant/refine": 0}


def test_pairs_pool_and_prompt_ids_may_repeat_across_sets():
    a = _pair([0.2, 0.2], [0.2, 0.2])
    b = _pair([0.4, 0.4], [0.0, 0.0])  # the same ids p0, p1: another prompt set
    r = gain_kept([a, b])
    assert r.n_clean == 4 and r.gain_full.mean == pytest.approx(0.3) and r.kept.value == pytest.approx(0.1 / 0.3)


@pytest.mark.parametrize("break_it, message", [
    (lambda f, q: q["outputs"].pop(), "not every prompt"),
    (lambda f, q: q["outputs"].append(dict(q["outputs"][0])), "two outputs"),
    (lambda f, q: q["outputs"][0]["judges"].clear(), "partial report"),
    (lambda f, q: q["meta"].update(max_new_tokens=64), "not comparable"),
    (lambda f, q: [o.update(id="x" + o["id"]) for o in q["outputs"]], "not runs of the same prompts"),
    (lambda f, q: [o.update(system="beam-4") for o in q["outputs"] if o["system"] == "refine"], "no system 'refine'"),
    (lambda f, q: q["meta"].update(judges=[{"name": "other"}]), "share no judge"),
    (lambda f, q: q["meta"].update(baseline="beam-4"), "baselines differ"),
])
def test_mismatched_reports_are_refused_in_one_line(break_it, message):
    full, quant = _pair([0.2, 0.3], [0.1, 0.2])
    break_it(full, quant)
    with pytest.raises(ConfigError, match=message):
        gain_kept([(full, quant)])


def test_markdown_names_the_verdict():
    full, quant = _pair([0.2, 0.4, 0.3, 0.1], [0.1, 0.2, 0.15, 0.05])
    text = markdown(gain_kept([(full, quant)]))
    assert "4 of 4 prompts" in text and "50 %" in text and "not met" in text


def test_read_report_refuses_what_is_not_a_report(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not an `ortrefine eval` report"):
        read_report(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not a readable JSON report"):
        read_report(bad)


def test_eval_kept_cli(tmp_path):
    from ortrefine.cli.main import cli

    full, quant = _pair([0.2, 0.4, 0.3, 0.1], [0.1, 0.2, 0.15, 0.05])
    (tmp_path / "f.json").write_text(json.dumps(full))
    (tmp_path / "q.json").write_text(json.dumps(quant))
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(cli, ["eval-kept", "--full", str(tmp_path / "f.json"), "--quant", str(tmp_path / "q.json"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["kept"]["value"] == pytest.approx(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # it only reads
    r = CliRunner().invoke(cli, ["eval-kept", "--full", str(tmp_path / "f.json"), "--quant", str(tmp_path / "q.json"),
                                 "--quant", str(tmp_path / "q.json")])
    assert r.exit_code != 0 and "one --quant per --full" in r.output and "Traceback" not in r.output
    (tmp_path / "q.json").write_text("{")
    r = CliRunner().invoke(cli, ["eval-kept", "--full", str(tmp_path / "f.json"), "--quant", str(tmp_path / "q.json")])
    assert r.exit_code != 0 and "not a readable JSON report" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["eval-kept", "--full", str(tmp_path / "f.json"), "--quant", str(tmp_path / "f.json"), "--threshold", "2"])
    assert r.exit_code != 0 and "(0, 1]" in r.output


def test_the_quantized_run_may_name_the_system_differently():
    full, quant = _pair([0.2, 0.4], [0.1, 0.2])
    for o in full["outputs"]:
        if o["system"] == "refine":
            o["system"] = "refine-guard100"
    r = gain_kept([(full, quant)], system="refine-guard100", quant_system="refine")
    assert r.kept.value == pytest.approx(0.5) and r.degenerate["quant/refine-guard100"] == 0
    with pytest.raises(ConfigError, match="no system 'refine-guard100'"):
        gain_kept([(full, quant)], system="refine-guard100")


def _rename(report: dict, old: str, new: str) -> dict:
    for o in report["outputs"]:
        if o["system"] == old:
            o["system"] = new
    return report


def test_each_pair_may_name_the_system_its_own_way(tmp_path):
    # two days' runs: the first named the default refine-guard100 in both bundles, the second refine
    a_full, a_quant = (_rename(r, "refine", "refine-guard100") for r in _pair([0.2, 0.4], [0.1, 0.2]))
    b_full, b_quant = _pair([0.6, 0.2], [0.3, 0.1])
    r = gain_kept([(a_full, a_quant), (b_full, b_quant)], system=["refine-guard100", "refine"])
    assert r.n_clean == 4 and r.gain_full.mean == pytest.approx(0.35) and r.kept.value == pytest.approx(0.5)
    assert r.system == "refine-guard100, refine" and set(r.degenerate) == {"full/greedy", "full/refine-guard100, refine",
                                                                           "quant/greedy", "quant/refine-guard100, refine"}
    _rename(b_quant, "refine", "r-int4")
    r = gain_kept([(a_full, a_quant), (b_full, b_quant)], system=["refine-guard100", "refine"],
                  quant_system=["refine-guard100", "r-int4"])
    assert r.kept.value == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="no system 'refine'"):  # the names go with their pairs, in order
        gain_kept([(a_full, a_quant), (b_full, b_quant)], system=["refine", "refine-guard100"])
    with pytest.raises(ConfigError, match=r"once per pair of reports \(2\); got 3"):
        gain_kept([(a_full, a_quant), (b_full, b_quant)], system=["a", "b", "c"])
    with pytest.raises(ConfigError, match="both 'greedy'"):
        gain_kept([(b_full, b_full)], system="greedy")

    from ortrefine.cli.main import cli

    for name, report in (("af", a_full), ("aq", a_quant), ("bf", b_full), ("bq", b_quant)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    args = ["eval-kept", "--full", str(tmp_path / "af.json"), "--quant", str(tmp_path / "aq.json"),
            "--full", str(tmp_path / "bf.json"), "--quant", str(tmp_path / "bq.json"), "--json"]
    r = CliRunner().invoke(cli, args + ["--system", "refine-guard100", "--system", "refine",
                                        "--quant-system", "refine-guard100", "--quant-system", "r-int4"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["kept"]["value"] == pytest.approx(0.5)
    r = CliRunner().invoke(cli, args + ["--system", "a", "--system", "b", "--system", "c"])
    assert r.exit_code != 0 and "once per pair" in r.output and "Traceback" not in r.output
