"""onnxslim clean-up of a bundle graph: fewer nodes, same logits and greedy ids, refused when it disagrees."""

from __future__ import annotations

import shutil

import pytest

try:
    import onnxslim
except ImportError:  # fail loudly: a skipped test would hide a missing install step
    pytest.fail("onnxslim is not installed: pip install onnxslim (part of the export extra)", pytrace=False)


@pytest.fixture
def bundle_copy(optimum_llama_bundle, tmp_path):
    """A writable copy of the tiny llama bundle with Optimum's graph (what onnxslim cleans up)."""
    return shutil.copytree(optimum_llama_bundle, tmp_path / "tiny-llama-slim")


def test_slim_keeps_outputs_and_drops_nodes(bundle_copy, tmp_path):
    from ortrefine.export.fuse import slim_bundle_graph

    model = bundle_copy / "model.onnx"
    original = model.read_bytes()
    r = slim_bundle_graph(model, tmp_path / "out" / "model.onnx")
    assert r.path == tmp_path / "out" / "model.onnx" and r.path.exists()
    assert model.read_bytes() == original  # the source is left alone
    assert 0 < r.nodes_after < r.nodes_before
    assert r.ops_before.get("Shape", 0) > r.ops_after.get("Shape", 0)  # shape arithmetic folded away
    assert r.max_abs_diff <= 1e-4 and r.max_kv_diff <= 1e-4
    assert r.greedy_equal and r.greedy_tokens == 8
    assert r.bytes_after > 0 and r.to_dict()["tool"] == "onnxslim"
    assert not [p for p in r.path.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_slimmed_bundle_runs_in_ortrefine(bundle_copy, optimum_llama_bundle):
    import ortrefine
    from ortrefine.export.fuse import slim_bundle_graph
    from ortrefine.export.writer import write_manifest
    from ortrefine.runtime.bundle import MANIFEST

    import json

    r = slim_bundle_graph(bundle_copy / "model.onnx", bundle_copy / "model.onnx")  # in place
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    write_manifest(bundle_copy, {**manifest, "graph": r.to_dict()})  # sizes and sha256 of the new file
    slim = ortrefine.load(bundle_copy, provider="cpu", verify=True)
    base = ortrefine.load(optimum_llama_bundle, provider="cpu")
    prompt = "Once upon a time"
    assert slim.generate(prompt, max_new_tokens=12).ids == base.generate(prompt, max_new_tokens=12).ids
    cands = [[5, 6, 7], [8, 9]]
    a, b = slim.score(base.encode_prompt(prompt), cands), base.score(base.encode_prompt(prompt), cands)
    assert abs(a.totals - b.totals).max() < 1e-4


def test_disagreeing_slim_is_refused(bundle_copy, tmp_path, monkeypatch):
    """A 'slimmed' graph with one weight changed must be rejected and nothing written."""
    import numpy as np
    from onnx import numpy_helper

    from ortrefine.errors import ValidationError
    from ortrefine.export import fuse

    real = onnxslim.slim

    def broken(model, *a, **k):
        out = real(model, *a, **k)
        init = max(out.graph.initializer, key=lambda t: np.prod(t.dims))  # the biggest weight
        arr = numpy_helper.to_array(init) * 1.5
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
        return out

    monkeypatch.setattr(onnxslim, "slim", broken)
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(ValidationError, match="disagrees with the original: max \\|Δlogits\\|"):
        fuse.slim_bundle_graph(bundle_copy / "model.onnx", target)
    assert not target.exists()
    assert not list(target.parent.iterdir())  # staging removed


def test_missing_onnxslim_names_the_fix(bundle_copy, monkeypatch):
    import builtins

    from ortrefine.errors import MissingExtraError
    from ortrefine.export.fuse import slim_bundle_graph

    real_import = builtins.__import__

    def no_slim(name, *a, **k):
        if name == "onnxslim":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_slim)
    with pytest.raises(MissingExtraError, match="pip install onnxslim"):
        slim_bundle_graph(bundle_copy / "model.onnx", bundle_copy / "model.onnx")


def test_missing_model_file(tmp_path):
    from ortrefine.errors import BundleError
    from ortrefine.export.fuse import slim_bundle_graph

    with pytest.raises(BundleError, match="no model file"):
        slim_bundle_graph(tmp_path / "model.onnx", tmp_path / "out.onnx")


def test_export_with_slim_records_graph(tmp_path):
    import ortrefine
    from ortrefine.export.onnx_export import ExportConfig, export_bundle

    r = export_bundle(ExportConfig("tiny:llama", output=tmp_path / "slim", slim=True))
    g = r.manifest["graph"]
    assert g["kind"] == "optimum" and g["nodes_after"] < g["nodes_before"]  # --slim means Optimum's graph
    lm = ortrefine.load(r.path, provider="cpu")
    assert len(lm.generate("Once upon a time", max_new_tokens=6).ids) == 6
