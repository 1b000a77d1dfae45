"""The fused llama graph: what it is made of, that it agrees with Optimum's export and torch on the
runtime's mask layouts, and that a disagreeing or unsupported graph never becomes a bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ortrefine
from ortrefine.errors import ConfigError, ExportError, ValidationError
from ortrefine.export.onnx_export import ExportConfig, export_bundle


def _manifest(path):
    return json.loads((path / "ortrefine.json").read_text())


def test_default_llama_export_is_fused_and_checked(tiny_bundles, optimum_llama_bundle):
    g = _manifest(tiny_bundles["llama"])["graph"]
    assert g["kind"] == "fused"
    # attention rotates the packed q|k|v itself: no RotaryEmbedding, one Split per layer (the MLP's)
    assert g["ops_after"]["GroupQueryAttention"] == 2 and "RotaryEmbedding" not in g["ops_after"] and g["ops_after"]["Split"] == 2
    assert g["nodes_after"] < g["nodes_before"] / 4  # tiny llama: ~50 vs Optimum's few hundred
    vs = g["vs_optimum"]
    assert vs["max_abs_diff"] <= 1e-4 and vs["max_kv_diff"] <= 1e-4 and vs["greedy_equal"]
    # weights beside the graph (memory-mapped at load), readable like the rest of the bundle
    graph, data = tiny_bundles["llama"] / "model.onnx", tiny_bundles["llama"] / "model.onnx_data"
    assert data.stat().st_size > 10 * graph.stat().st_size and data.stat().st_mode == graph.stat().st_mode
    assert set(_manifest(tiny_bundles["llama"])["files"]) >= {"model.onnx", "model.onnx_data"}
    assert _manifest(optimum_llama_bundle)["graph"]["kind"] == "optimum"
    assert _manifest(tiny_bundles["gpt2"])["graph"]["kind"] == "optimum"  # auto: fused for llama only
    for other in (optimum_llama_bundle, tiny_bundles["gpt2"]):  # Optimum's graphs keep their weights beside too
        assert (other / "model.onnx_data").stat().st_size > (other / "model.onnx").stat().st_size


def test_mid_padded_kv_matches_torch(tiny_bundles, tiny_torch):
    """The refiner's layout: prefix KV, a masked gap, then new tokens; logits as if the gap were absent."""
    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    model, _ = tiny_torch["llama"]
    prefix, gap, new = [5, 9, 11, 13], [17, 19, 23], [29, 31]
    head = lm.forward(np.array([prefix + gap]))
    mask = np.array([[1] * len(prefix) + [0] * len(gap) + [1] * len(new)])
    out = lm.forward(np.array([new]), head.kv, attention_mask=mask)
    with torch.no_grad():
        ref = model(torch.tensor([prefix + new])).logits[0, -len(new):].numpy()
    np.testing.assert_allclose(out.logits[0], ref, atol=1e-4, rtol=1e-4)


def test_left_padded_rows_then_cached_steps_match_torch(tiny_bundles, tiny_torch):
    """Left-padded prompts, then two cached steps (one and two tokens) on the same cache: the
    attention's own rotary must place every token of a padded row at its position id."""
    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    model, _ = tiny_torch["llama"]
    rows = [[7, 8, 9], [10, 11, 12, 13, 14, 15]]
    steps = [[[21], [22]], [[23, 24], [25, 26]]]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = lm.forward(ids, attention_mask=mask)
    got = [[out.logits[b, -1]] for b in range(2)]
    kv = out.kv
    for step in steps:
        mask = np.concatenate([mask, np.ones((2, len(step[0])), np.int64)], axis=1)
        out = lm.forward(np.array(step), kv, attention_mask=mask)
        kv = out.kv
        for b in range(2):
            got[b].extend(out.logits[b])
    for b, r in enumerate(rows):
        full = r + [t for step in steps for t in step[b]]
        with torch.no_grad():
            ref = model(torch.tensor([full])).logits[0, len(r) - 1 :].numpy()
        np.testing.assert_allclose(np.stack(got[b]), ref, atol=1e-4, rtol=1e-4)


def test_batched_multi_token_step_on_a_cache(tiny_bundles, tiny_torch):
    """Batch > 1 with several new tokens over a past (GroupQueryAttention needs query_seqlens for it)."""
    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    model, _ = tiny_torch["llama"]
    rows = np.array([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    head = lm.forward(rows[:, :2])
    out = lm.forward(rows[:, 2:], head.kv)
    with torch.no_grad():
        ref = model(torch.tensor(rows)).logits[:, 2:].numpy()
    np.testing.assert_allclose(out.logits, ref, atol=1e-4, rtol=1e-4)


def test_disagreeing_fused_graph_is_refused(tmp_path, monkeypatch):
    from ortrefine.export import llama_graph

    real = llama_graph.build_llama_graph

    def broken(model, *a, **k):
        proto = real(model, *a, **k)
        from onnx import numpy_helper

        init = next(t for t in proto.graph.initializer if t.name == "layers.0.mlp.down.weight")
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3.0, init.name))
        return proto

    monkeypatch.setattr(llama_graph, "build_llama_graph", broken)
    out = tmp_path / "bad"
    with pytest.raises(ValidationError, match="fused graph disagrees with Optimum's export"):
        export_bundle(ExportConfig("tiny:llama", output=out))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unsupported_choices_are_refused(tmp_path):
    with pytest.raises(ExportError, match="supports llama models, not 'gpt2'"):
        export_bundle(ExportConfig("tiny:gpt2", output=tmp_path / "g", graph="fused"))
    assert not (tmp_path / "g").exists()
    with pytest.raises(ConfigError, match="does not apply to --graph fused"):
        ExportConfig("tiny:llama", slim=True, graph="fused")
    with pytest.raises(ConfigError, match="unknown graph"):
        ExportConfig("tiny:llama", graph="genai")


def test_cli_graph_option(tmp_path):
    from ortrefine.cli.main import cli

    r = CliRunner().invoke(cli, ["export", "tiny:llama", str(tmp_path / "o"), "--graph", "optimum"])
    assert r.exit_code == 0, r.output
    assert "optimum graph" in r.output and _manifest(tmp_path / "o")["graph"]["kind"] == "optimum"
    r = CliRunner().invoke(cli, ["export", "tiny:llama", str(tmp_path / "x"), "--graph", "genai"])
    assert r.exit_code == 2 and "genai" in r.output


@pytest.mark.parametrize("variant", ["fused", "optimum"])
def test_keep_last_logits_equal_the_tail_of_all(variant, tiny_bundles, optimum_llama_bundle):
    """keep_last skips the lm_head elsewhere (fused graph input) or slices (other graphs): same numbers."""
    lm = ortrefine.load(tiny_bundles["llama"] if variant == "fused" else optimum_llama_bundle, provider="cpu")
    assert lm.has_logits_to_keep == (variant == "fused")
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    full = lm.forward(ids)
    for k in (1, 3, 6, 50):
        part = lm.forward(ids, keep_last=k)
        assert part.logits.shape == (2, min(k, 6), full.logits.shape[2])
        np.testing.assert_allclose(part.logits, full.logits[:, -min(k, 6):], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(part.kv.arrays[0], full.kv.arrays[0])
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        lm.forward(ids, keep_last=0)


def test_fused_bundle_on_too_old_onnxruntime_is_refused(tiny_bundles, optimum_llama_bundle, monkeypatch):
    """onnxruntime 1.31 rejects the fused graph's GroupQueryAttention (17 inputs): say so and how to fix it."""
    from ortrefine.errors import BundleError
    from ortrefine.runtime import session

    monkeypatch.setattr(session.ort, "__version__", "1.31.1")
    assert session.ort_version() == (1, 31, 1)
    with pytest.raises(BundleError, match=r"needs onnxruntime >= 1\.32 \(this is 1\.31\.1\).*--graph optimum"):
        ortrefine.load(tiny_bundles["llama"], provider="cpu")
    assert ortrefine.load(optimum_llama_bundle, provider="cpu").generate("Hi", max_new_tokens=2).ids  # unaffected
    monkeypatch.setattr(session.ort, "__version__", "1.33.0.dev20261101")
    assert session.ort_version() == (1, 33, 0)
