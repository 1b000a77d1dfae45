"""`ortrefine bench` on a tiny bundle: runs, exit 0, prints the expected rows (no timing assertions),
and the measuring functions it shares with benchmarks/ measure the right thing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from ortrefine.cli.main import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_bench_decode(tiny_bundles):
    r = invoke("bench", "decode", "-m", str(tiny_bundles["llama"]), "--tokens", "5", "--reps", "2", "--bandwidth-mb", "8")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(f"{tiny_bundles['llama']} (fp32, cpu), 5 tokens, median of 2")
    assert lines[1:3] == ["| figure | value |", "|---|---|"]
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines[3:]]
    assert rows == ["decode", "time to first token", "weights read per token", "memory read bandwidth (numpy max / sgemv)",
                    "weights × tok/s / bandwidth"]
    assert re.search(r"\| decode \| [\d.]+ \([\d.]+–[\d.]+\) tok/s \|", r.output)


def test_bench_scoring_reuse_matches_plain(tiny_bundles):
    r = invoke("bench", "scoring", "-m", str(tiny_bundles["gpt2"]), "--batch", "4", "--prefix", "8", "--suffix", "4", "--reps", "1")
    assert r.exit_code == 0, r.output
    assert "| plain: 4 × 12 |" in r.output
    assert "| prefix reuse: 1 × 8 + 4 × 4 |" in r.output and "of 3.00×" in r.output
    diff = float(re.search(r"max \|Δlogits\| reuse vs plain ([\d.e+-]+)", r.output).group(1))
    assert diff < 1e-4  # the sliced-KV path scores the same tokens as the full pass


def test_bench_coldstart(tiny_bundles):
    r = invoke("bench", "coldstart", "-m", str(tiny_bundles["llama"]), "--reps", "1")
    assert r.exit_code == 0, r.output
    for row in ("| python -c pass |", "| import ortrefine (minus bare start) |", "| generate, start to first token |"):
        assert row in r.output


def test_bench_errors_are_one_line(tmp_path):
    for sub in ("decode", "scoring", "coldstart"):
        r = invoke("bench", sub, "-m", str(tmp_path / "none"))
        assert r.exit_code == 1 and r.output.startswith("Error: no bundle at"), r.output
    r = invoke("bench", "decode", "--tokens", "0")
    assert r.exit_code == 2 and "Invalid value for '--tokens'" in r.output


def test_decode_fixed_is_greedy_and_ignores_eos(tiny_bundles):
    import ortrefine
    from ortrefine.bench import decode_fixed

    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    ids = lm.encode_prompt("Once upon a time")
    run = decode_fixed(lm, ids, 12)
    assert len(run.ids) == 12 and 0 < run.ttft <= run.seconds
    greedy = lm.generate(ids, max_new_tokens=12).ids  # may stop early at eos; decode_fixed does not
    assert run.ids[: len(greedy)] == greedy


def test_weight_bytes_counts_initializers(tiny_bundles, monkeypatch):
    import builtins

    import onnx

    from ortrefine.bench import weight_bytes

    model_file = tiny_bundles["llama"] / "model.onnx"
    model = onnx.load(str(model_file))
    expected = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert weight_bytes(model_file) == expected
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    data = model_file.with_name("model.onnx_data")  # the fused export keeps its weights beside the graph
    assert data.exists() and weight_bytes(model_file) == model_file.stat().st_size + data.stat().st_size  # onnx-free fallback


@pytest.mark.integration
def test_weight_bytes_per_token_leaves_out_tables_only_gathered_from(tmp_path):
    """An untied embedding (Gather only) is not read whole per token; a tied one (also a MatMul) is."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ortrefine.bench import weight_bytes

    table = numpy_helper.from_array(np.zeros((50, 4), np.float32), "table")    # Gather only: 800 B
    tied = numpy_helper.from_array(np.zeros((50, 4), np.float32), "tied")      # Gather and MatMul: 800 B
    w = numpy_helper.from_array(np.zeros((4, 3), np.float32), "w")             # MatMul only: 48 B
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e1"]), helper.make_node("Gather", ["tied", "ids"], ["e2"]),
             helper.make_node("Add", ["e1", "e2"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["h"]),
             helper.make_node("MatMul", ["e", "tied_t"], ["y"]), helper.make_node("Transpose", ["tied"], ["tied_t"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table, tied, w])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert weight_bytes(path) == 800 + 800 + 48
    assert weight_bytes(path, per_token=True) == 800 + 48


def test_memory_bandwidth_is_positive():
    from ortrefine.bench import memory_bandwidth

    assert memory_bandwidth(megabytes=4, reps=1) > 0
    assert np.isfinite(memory_bandwidth(megabytes=4, reps=1))


def test_kv_rows_and_repeat_from_one_buffer_match_numpy():
    """KVCache.rows/repeat fill one allocation for all layers: same values as numpy indexing, each
    layer its own contiguous array, no aliasing between layers; mixed shapes fall back per array."""
    import numpy as np

    from ortrefine.runtime.session import KVCache

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 2, 5, 4)).astype(np.float32) for _ in range(6)]
    kv = KVCache(arrays)
    idx = [2, 0, 2, 1]
    picked = kv.rows(idx)
    for a, b in zip(arrays, picked.arrays):
        np.testing.assert_array_equal(b, a[idx])
        assert b.flags.c_contiguous
    picked.arrays[0][...] = 7.0
    assert not (picked.arrays[1] == 7.0).any() and not (arrays[0] == 7.0).all()
    one = KVCache([a[:1] for a in arrays]).repeat(5)
    for a, b in zip(arrays, one.arrays):
        np.testing.assert_array_equal(b, np.repeat(a[:1], 5, axis=0))
    np.testing.assert_array_equal(kv.rows([-1]).arrays[2], arrays[2][[-1]])  # numpy's negative indices
    with pytest.raises(IndexError):
        kv.rows([3])
    mixed = KVCache([arrays[0], arrays[1][:, :1]]).rows([1, 1])
    np.testing.assert_array_equal(mixed.arrays[1], arrays[1][:, :1][[1, 1]])
