"""`quantize`: every target really changes the graph, the bundle loads and generates, the quality
gate records its figures and refuses past a threshold, and nothing is left behind on failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from nbits import levels

import ortrefine
from ortrefine.cli.main import cli
from ortrefine.errors import ConfigError, ExportError
from ortrefine.export.quality import GateConfig, QualityGateError, apply_thresholds, measure
from ortrefine.export.quantize import QuantizeConfig, quantize
from ortrefine.runtime.bundle import open_bundle, sha256_file

# Random tiny models predict near-uniform distributions, so top-1 agreement means little on them:
# the tests that need a bundle written use loose thresholds; the gate's own tests set tight ones.
LOOSE = GateConfig(max_kl=10.0, max_ppl_ratio=10.0, min_top1=0.0)


@pytest.fixture
def parent(tiny_bundles, tmp_path) -> Path:
    """A private copy of the tiny llama bundle, so outputs land beside it in tmp_path."""
    return Path(shutil.copytree(tiny_bundles["llama"], tmp_path / "tiny-llama"))


# the tied lm_head as each llama graph writes it: (matmul node, embedding initializer)
TIED_HEAD = {"fused": ("lm_head", "embed_tokens.weight"), "optimum": ("/lm_head/MatMul", "model.embed_tokens.weight")}


@pytest.fixture(params=list(TIED_HEAD))
def tied_parent(request, tiny_bundles, tmp_path) -> tuple[Path, str, str]:
    """A private copy of the tiny llama bundle with each graph, and the names of its tied lm_head."""
    src = tiny_bundles["llama"] if request.param == "fused" else request.getfixturevalue("optimum_llama_bundle")
    return (Path(shutil.copytree(src, tmp_path / "tiny-llama")), *TIED_HEAD[request.param])


@pytest.fixture
def gpt2_parent(tiny_bundles, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundles["gpt2"], tmp_path / "tiny-gpt2"))


def ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path / "model.onnx"), load_external_data=False).graph.node)


def leftovers(folder: Path) -> list[str]:
    """Staging folders (hidden `.NAME.tmp-*`) or bundles other than the parent."""
    return sorted(p.name for p in folder.iterdir() if p.name != "tiny-llama")


def const_matmuls(path: Path) -> int:
    m = onnx.load(str(path / "model.onnx"))
    inits = {t.name for t in m.graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in inits for n in m.graph.node)


@pytest.mark.parametrize("to", ["int8", "int4", "int8-dynamic", "fp16"])
def test_each_target_changes_graph_loads_generates(parent, to):
    r = quantize(QuantizeConfig(parent, to, gate=LOOSE))
    assert r.path == parent.parent / f"tiny-llama-{to}" and r.path.is_dir()
    assert leftovers(parent.parent) == [f"tiny-llama-{to}"]
    weights = const_matmuls(parent)  # 14: q/k/v/o/gate/up/down in 2 layers
    got = ops(r.path)
    if to in ("int8", "int4"):
        assert got["MatMulNBits"] == weights
        node = next(n for n in onnx.load(str(r.path / "model.onnx")).graph.node if n.op_type == "MatMulNBits")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == int(to[-1]) and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    elif to == "int8-dynamic":
        assert got["MatMulInteger"] == weights and got["DynamicQuantizeLinear"] > 0
    else:
        m = onnx.load(str(r.path / "model.onnx"))
        fp16 = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
        big_fp32 = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
        assert len(fp16) >= weights and not big_fp32
        assert r.ops["fp16_initializers"] == len(fp16)
    # the bundle: verified sha256s, parent recorded, figures stored, side files copied
    b = open_bundle(r.path, verify=True)
    man = b.manifest
    pman = json.loads((parent / "ortrefine.json").read_text())
    assert man["precision"] == to and man["name"] == f"tiny-llama-{to}"
    assert man["parent"]["name"] == "tiny-llama" and man["parent"]["sha256"] == sha256_file(parent / "model.onnx")
    assert man["parent"]["weights_sha256"] == sha256_file(parent / "model.onnx_data")
    assert man["special_tokens"] == pman["special_tokens"] and man["context_length"] == pman["context_length"]
    assert man["source"] == pman["source"]
    assert man["batch_invariant"] is (to != "int8-dynamic")
    assert man["target_provider"] == ("cuda" if to == "fp16" else "cpu")
    gate = man["quality_gate"]
    for key in ("parent_ppl", "quantized_ppl", "ppl_ratio", "mean_kl", "top1_agreement"):
        assert np.isfinite(gate[key]), key
    assert gate["passed"] and gate["tokens"] > 100 and gate["provider"] == "cpu"
    assert gate["thresholds"] == LOOSE.thresholds()
    assert man["quantization"]["to"] == to and man["quantization"]["ops"] == r.ops
    for f in ("tokenizer.json", "config.json", "generation_config.json", "chat_template.jinja"):
        assert (r.path / f).read_bytes() == (parent / f).read_bytes()
    assert r.size_bytes < r.parent_size_bytes
    # loads and generates on the CPU (ORT's CPU provider runs the fp16 graph too, with float32 I/O)
    lm = ortrefine.load(r.path, provider="cpu")
    out = lm.generate("Once upon a time", max_new_tokens=6)
    assert len(out.ids) >= 1 and isinstance(out.text, str)


def test_gate_figures_order_and_self_consistency(parent):
    """Same graph → KL 0, full agreement; int8 stays much closer to the parent than int4."""
    lm = ortrefine.load(parent, provider="cpu")
    same = measure(lm, lm, GateConfig())
    assert same.mean_kl == pytest.approx(0, abs=1e-9) and same.top1_agreement == 1 and same.ppl_ratio == pytest.approx(1)
    r8 = quantize(QuantizeConfig(parent, "int8", gate=LOOSE)).gate
    r4 = quantize(QuantizeConfig(parent, "int4", gate=LOOSE)).gate
    assert r8.parent_ppl == pytest.approx(same.parent_ppl, rel=1e-9)
    assert 0 < r8.mean_kl < r4.mean_kl / 10
    assert r8.top1_agreement > r4.top1_agreement


def test_apply_thresholds_lists_every_failure():
    from ortrefine.export.quality import GateReport

    r = apply_thresholds(GateReport(parent_ppl=10, quantized_ppl=30, ppl_ratio=3.0, mean_kl=2.0, top1_agreement=0.1),
                         GateConfig(max_kl=0.5, max_ppl_ratio=1.5, min_top1=0.6))
    assert not r.passed and len(r.failures) == 3
    assert r.failures[0].startswith("mean KL 2.0000 > max 0.5")


def test_quantize_embeddings_unties_lm_head(tied_parent):
    parent, matmul, weight = tied_parent
    plain = quantize(QuantizeConfig(parent, "int4", gate=LOOSE))
    emb = quantize(QuantizeConfig(parent, "int4", quantize_embeddings=True, gate=LOOSE))
    assert emb.path.name == "tiny-llama-int4-emb"
    before, after = ops(plain.path), ops(emb.path)
    assert after["MatMulNBits"] == before["MatMulNBits"] + 1  # the lm_head
    assert after["GatherBlockQuantized"] == 1 and before["GatherBlockQuantized"] == 0
    m = onnx.load(str(emb.path / "model.onnx"))
    assert not [n for n in m.graph.node if n.op_type in ("Transpose", "FusedMatMul") and "embed_tokens" in n.input[-1]]
    assert emb.untied == [{"matmul": matmul, "weight": weight, "shape": [64, 384]}]
    assert emb.manifest["quantization"]["embedding_bits"] == 4
    assert emb.size_bytes < plain.size_bytes
    assert len(ortrefine.load(emb.path, provider="cpu").generate("Hello", max_new_tokens=4).ids) >= 1


@pytest.mark.parametrize("to,head_bits", [("int4", 8), ("int8", 4)])
def test_head_bits_quantizes_only_the_lm_head_differently(tied_parent, to, head_bits):
    parent, matmul, weight = tied_parent
    r = quantize(QuantizeConfig(parent, to, head_bits=head_bits, gate=LOOSE))
    assert r.path.name == f"tiny-llama-{to}-head{head_bits}"
    m = onnx.load(str(r.path / "model.onnx"))
    bits = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["bits"]
            for n in m.graph.node if n.op_type == "MatMulNBits"}
    body = int(to[-1])
    assert bits.pop(next(k for k in bits if k.startswith(matmul))) == head_bits  # the lm_head
    assert bits and set(bits.values()) == {body}
    assert [n.op_type for n in m.graph.node if n.op_type in ("Gather", "GatherBlockQuantized") and weight in n.input] == ["Gather"]
    assert r.untied == [{"matmul": matmul, "weight": weight, "shape": [64, 384]}]
    assert r.manifest["quantization"]["head_bits"] == head_bits and r.manifest["quantization"]["embedding_bits"] is None
    assert len(ortrefine.load(r.path, provider="cpu").generate("Hello", max_new_tokens=4).ids) >= 1


@pytest.mark.parametrize("to", ["int8", "int4"])
def test_symmetric_has_no_zero_points_and_stays_close(parent, to):
    asym = quantize(QuantizeConfig(parent, to, gate=LOOSE))
    sym = quantize(QuantizeConfig(parent, to, symmetric=True, gate=LOOSE))
    assert sym.path.name == f"tiny-llama-{to}-sym"
    nodes = [n for n in onnx.load(str(sym.path / "model.onnx"), load_external_data=False).graph.node if n.op_type == "MatMulNBits"]
    assert nodes and all(len(n.input) == 3 for n in nodes)  # A, B, scales: no zero_points input
    assert all(len(n.input) == 4 for n in onnx.load(str(asym.path / "model.onnx"), load_external_data=False).graph.node
               if n.op_type == "MatMulNBits")
    assert sym.manifest["quantization"]["symmetric"] is True and asym.manifest["quantization"]["symmetric"] is False
    assert sym.gate.mean_kl < (0.01 if to == "int8" else 0.5)  # a grid centred on 0 still fits these weights
    with pytest.raises(ConfigError, match="--symmetric applies"):
        QuantizeConfig(parent, "int4", symmetric=True, algo="hqq")
    with pytest.raises(ConfigError, match="--symmetric applies"):
        QuantizeConfig(parent, "int8-dynamic", symmetric=True)


@pytest.mark.parametrize("kw,match", [({"head_bits": 6}, "must be 4 or 8"), ({"head_bits": 8, "quantize_embeddings": True}, "choose one"),
                                      ({"head_bits": 8, "algo": "hqq"}, "--algo rtn")])
def test_head_bits_bad_combinations(parent, kw, match):
    with pytest.raises(ConfigError, match=match):
        QuantizeConfig(parent, "int4", **kw)


def test_untie_is_exact(tied_parent, tmp_path):
    """Untying only stores Transpose(W) as a constant: the logits do not change."""
    parent, matmul, weight = tied_parent
    from dataclasses import replace

    from ortrefine.export.quantize import save_model, untie_lm_head
    from ortrefine.runtime.session import LM

    m = onnx.load(str(parent / "model.onnx"))
    assert [u["matmul"] for u in untie_lm_head(m)] == [matmul]
    assert not [n for n in m.graph.node if n.op_type in ("Transpose", "FusedMatMul") and weight in n.input]
    assert [n.op_type for n in m.graph.node if n.name == matmul] == ["MatMul"]
    folder = tmp_path / "untied"
    folder.mkdir()
    save_model(m, folder)
    shutil.copy(parent / "tokenizer.json", folder)
    base = ortrefine.load(parent, provider="cpu")
    untied = LM(replace(base.bundle, path=folder), provider="cpu")
    ids = np.arange(3, 40, dtype=np.int64)[None]
    np.testing.assert_allclose(untied.forward(ids).logits, base.forward(ids).logits, rtol=0, atol=1e-5)


def test_fp32_only_files_are_not_inherited(parent):
    """A gradient graph and the fp32 embeddings beside the parent describe the fp32 weights: not copied."""
    from ortrefine.export.writer import write_manifest

    man = json.loads((parent / "ortrefine.json").read_text())
    for name in ("gradient.onnx", "gradient.onnx_data", "embeddings.npy"):
        (parent / name).write_bytes(b"fp32 only")
    man["gradient"] = {"file": "gradient.onnx", "files": ["gradient.onnx_data", "gradient.onnx", "embeddings.npy"]}
    write_manifest(parent, {k: v for k, v in man.items() if k != "files"})
    r = quantize(QuantizeConfig(parent, "int8", gate=LOOSE))
    assert sorted(p.name for p in r.path.iterdir()) == sorted(
        p.name for p in parent.iterdir() if p.name not in ("gradient.onnx", "gradient.onnx_data", "embeddings.npy"))
    assert "gradient" not in r.manifest and "validation" not in r.manifest


def test_gpt2_gemm_graph_refused_unless_embeddings(gpt2_parent):
    with pytest.raises(ExportError, match="changed nothing .*Gemm.*nothing was written; try --quantize-embeddings"):
        quantize(QuantizeConfig(gpt2_parent, "int4", gate=LOOSE))
    assert sorted(p.name for p in gpt2_parent.parent.iterdir()) == ["tiny-gpt2"]
    r = quantize(QuantizeConfig(gpt2_parent, "int4", quantize_embeddings=True, gate=LOOSE))
    assert ops(r.path)["MatMulNBits"] == 1 and ops(r.path)["GatherBlockQuantized"] == 2  # lm_head; wte, wpe


def test_gate_refuses_and_leaves_nothing(parent):
    tight = GateConfig(max_kl=0.0, max_ppl_ratio=1.0, min_top1=1.0)
    with pytest.raises(QualityGateError) as e:
        quantize(QuantizeConfig(parent, "int4", gate=tight))
    msg = str(e.value)
    assert msg.startswith("quality gate failed: mean KL ") and "--force" in msg and "no bundle was written" in msg
    assert leftovers(parent.parent) == []
    r = quantize(QuantizeConfig(parent, "int4", gate=tight, force=True))
    gate = r.manifest["quality_gate"]
    assert gate["forced"] and not gate["passed"] and gate["failures"][0].startswith("mean KL")
    assert open_bundle(r.path, verify=True).precision == "int4"


@pytest.mark.parametrize("step", ["_copy_side_files", "measure", "write_manifest"])
def test_interrupted_quantize_leaves_nothing(parent, monkeypatch, step):
    import ortrefine.export.quantize.api as q

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(q, step, interrupt)
    with pytest.raises(KeyboardInterrupt):
        quantize(QuantizeConfig(parent, "int8", gate=LOOSE))
    assert leftovers(parent.parent) == []


def test_existing_output_and_requantize_refused(parent):
    r = quantize(QuantizeConfig(parent, "int8", gate=LOOSE))
    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        quantize(QuantizeConfig(parent, "int8", gate=LOOSE))
    again = quantize(QuantizeConfig(parent, "int8", gate=LOOSE, overwrite=True))
    assert again.path == r.path and leftovers(parent.parent) == ["tiny-llama-int8"]
    with pytest.raises(ConfigError, match="already int8; quantize from its fp32 parent"):
        quantize(QuantizeConfig(r.path, "int4", gate=LOOSE))
    with pytest.raises(ConfigError, match="is the parent bundle itself"):
        quantize(QuantizeConfig(parent, "int4", out=parent, overwrite=True, gate=LOOSE))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"to": "fp16", "provider": "cpu"}, "fp16 bundles are for the CUDA provider.*--to int8"),
        ({"to": "int8-dynamic", "provider": "cuda"}, "no CUDA kernels.*--to int4, int8 or fp16"),
        ({"to": "int4", "algo": "gptq"}, "gptq is refused.*--algo rtn"),
        ({"to": "int8", "algo": "hqq"}, "float zero points.*--algo rtn for int8"),
        ({"to": "int4", "algo": "hqq", "accuracy_level": 4}, "HQQ quantizer does not set accuracy_level"),
        ({"to": "int4", "algo": "hqq", "quantize_embeddings": True}, "cannot quantize the embedding Gather"),
        ({"to": "int8-dynamic", "algo": "hqq"}, "applies to the weight-only targets"),
        ({"to": "fp16", "accuracy_level": 4}, "applies to the weight-only targets"),
        ({"to": "fp16", "quantize_embeddings": True}, "does not apply to fp16"),
        ({"to": "int4", "block_size": 24}, "power of two >= 16"),
        ({"to": "int4", "accuracy_level": 7}, "accuracy_level must be 0-4"),
        ({"to": "int4", "accuracy_level_8bit": 5}, "accuracy_level_8bit must be 0-4"),
        ({"to": "int8-dynamic", "accuracy_level_8bit": 4}, "--accuracy-level-8bit applies to the weight-only"),
        ({"to": "int4", "algo": "hqq", "accuracy_level_8bit": 4}, "does not set accuracy_level; drop --accuracy-level-8bit"),
        ({"to": "int4", "algo": "rtn", "accuracy_level_8bit": 4}, "no 8-bit MatMulNBits"),
        ({"to": "int4", "quantize_embeddings": True, "accuracy_level_8bit": 4}, "no 8-bit MatMulNBits"),
        ({"to": "int3"}, "unknown quantization target 'int3'; use one of: int8, int4, int8-dynamic, fp16"),
        ({"to": "int8", "algo": "gguf"}, "applies to --to int4, not int8"),
        ({"to": "int4", "algo": "gguf", "head_bits": 8}, "takes its blocks, head and zero points from the file"),
        ({"to": "int4", "algo": "gguf", "block_size": 64}, "drop --block-size"),
        ({"to": "int4", "gguf_layout": "nearest"}, "unknown GGUF layout 'nearest'; use one of: exact, rounded"),
    ],
)
def test_config_refusals_name_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantizeConfig("unused", **kwargs)


def test_gate_config_validation():
    with pytest.raises(ConfigError, match="max_ppl_ratio must be"):
        GateConfig(max_ppl_ratio=0.5)
    with pytest.raises(ConfigError, match="min_top1 must be in"):
        GateConfig(min_top1=1.5)
    with pytest.raises(ConfigError, match="at least one non-empty text"):
        GateConfig(texts=())


def test_batch_dependence_of_dynamic_int8(parent):
    """The manifest's batch_invariant flag is true to life: a candidate's score moves with its
    batch-mates under int8-dynamic, and does not under fp32 or MatMulNBits."""
    int8 = quantize(QuantizeConfig(parent, "int8", gate=LOOSE)).path
    dyn = quantize(QuantizeConfig(parent, "int8-dynamic", gate=LOOSE)).path
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 384, 12).tolist()
    cands = [rng.integers(3, 384, 10).tolist() for _ in range(8)]
    delta = {}
    for name, path in [("fp32", parent), ("int8", int8), ("int8-dynamic", dyn)]:
        lm = ortrefine.load(path, provider="cpu")
        alone = lm.score(prompt, cands[:1]).token_logprobs[0]
        batched = lm.score(prompt, cands).token_logprobs[0]
        delta[name] = float(np.abs(alone - batched).max())
    assert delta["fp32"] < 1e-5 and delta["int8"] < 1e-5, delta
    assert delta["int8-dynamic"] > 1e-3, delta


def test_import_leaves_root_logging_alone():
    code = (
        "import logging\n"
        "from ortrefine.export.quantize import _nbits_module\n"
        "_nbits_module()\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", str(30)] and out.stderr == ""


# -- CLI ------------------------------------------------------------------------------------------
def invoke(*args: str):
    return CliRunner().invoke(cli, ["quantize", *args])


def test_cli_quantize_prints_gate(parent):
    r = invoke(str(parent), "--to", "int8", "--max-kl", "10", "--max-ppl-ratio", "10", "--min-top1", "0")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith(f"wrote {parent.parent / 'tiny-llama-int8'} (") and "parent " in lines[0]
    assert lines[1].startswith("quality gate passed: perplexity ") and "KL " in lines[1] and "top-1 agreement" in lines[1]
    r = invoke(str(parent), "--to", "int8-dynamic", "--min-top1", "1", "--force", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["gate"]["forced"] and data["ops"]["MatMulInteger"] > 0


def test_cli_errors(parent, tmp_path):
    """Bad option values and refused combinations: usage errors (exit 2); domain failures: one line, exit 1."""
    cases = [
        ([str(parent), "--to", "int3"], 2, "Invalid value for '--to'"),
        ([str(parent)], 2, "Missing option '--to'"),
        ([str(parent), "--to", "int4", "--min-top1", "2"], 2, "Invalid value for '--min-top1'"),
        ([str(parent), "--to", "fp16", "--provider", "cpu"], 2, "Error: fp16 bundles are for the CUDA provider"),
        ([str(parent), "--to", "int8-dynamic", "--provider", "cuda"], 2, "Error: int8-dynamic (MatMulInteger"),
        ([str(parent), "--to", "int4", "--block-size", "24"], 2, "Error: block_size must be a power of two"),
        ([str(parent), "--to", "int4", "--algo", "gptq"], 2, "Error: --algo gptq is refused"),
        ([str(parent), "--to", "int4", "--algo", "gguf"], 2, "was not exported from a GGUF file"),
        ([str(tmp_path / "none"), "--to", "int4"], 1, "Error: no bundle at"),
        ([str(parent), "--to", "int4", "--max-kl", "0"], 1, "Error: quality gate failed: mean KL"),
    ]
    for args, code, text in cases:
        r = invoke(*args)
        assert r.exit_code == code, (args, r.output)
        assert text in r.output, (args, r.output)
        assert "Traceback" not in r.output
        if code == 1:
            assert r.output.startswith("Error: ") and r.output.count("\n") == 1, (args, r.output)
    assert leftovers(parent.parent) == []


def test_auto_algo_is_rtn_without_a_gguf_source_or_with_rtn_options():
    assert QuantizeConfig("unused", "int4").algo == "auto"
    assert QuantizeConfig("unused", "int4", head_bits=8).algo == "rtn"
    assert QuantizeConfig("unused", "int8").algo == "rtn"
    assert QuantizeConfig("unused", "int4", block_size=64).algo == "rtn"


def test_tiny_int4_default_is_round_to_nearest(parent):
    r = quantize(QuantizeConfig(parent, "int4", gate=LOOSE, out=parent.parent / "tiny-auto-int4"))
    assert r.manifest["quantization"]["algo"] == "rtn" and "gguf" not in r.manifest["quantization"]


def test_the_8bit_nodes_take_their_own_accuracy_level(parent, tmp_path):
    """fp32 compute for the 4-bit projections, int8 activations for the 8-bit head: onnxruntime's
    CPU has no fast fp32 kernel for 8-bit blocks. The option touches the 8-bit nodes only, is
    recorded in the manifest, and one that matches no node is refused with nothing written."""
    r = quantize(QuantizeConfig(parent, "int4", head_bits=8, accuracy_level=1, accuracy_level_8bit=4,
                                out=tmp_path / "mixed", gate=LOOSE))
    weights = const_matmuls(parent)
    assert levels(r.path) == Counter({(4, 1): weights, (8, 4): 1})
    q = r.manifest["quantization"]
    assert q["accuracy_level"] == 1 and q["accuracy_level_8bit"] == 4
    lm = ortrefine.load(r.path, provider="cpu")
    assert len(lm.generate([1, 2, 3], max_new_tokens=3).ids) == 3
    same = quantize(QuantizeConfig(parent, "int4", head_bits=8, accuracy_level_8bit=4, out=tmp_path / "same", gate=LOOSE))
    assert levels(same.path) == Counter({(4, 4): weights, (8, 4): 1}) and same.manifest["quantization"]["accuracy_level_8bit"] == 4
    with pytest.raises(ConfigError, match="no 8-bit MatMulNBits"):
        quantize(QuantizeConfig(parent, "int4", accuracy_level_8bit=1, out=tmp_path / "none", gate=LOOSE))
    assert not (tmp_path / "none").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "same", "tiny-llama"]


def test_cli_accuracy_level_8bit(parent, tmp_path):
    out = tmp_path / "cli-mixed"
    r = CliRunner().invoke(cli, ["quantize", str(parent), "--to", "int8", "--accuracy-level-8bit", "1", "--out", str(out),
                                 "--max-kl", "10", "--max-ppl-ratio", "10", "--min-top1", "0"])
    assert r.exit_code == 0, r.output
    assert levels(out) == Counter({(8, 1): const_matmuls(parent)})
    bad = CliRunner().invoke(cli, ["quantize", str(parent), "--to", "int4", "--accuracy-level-8bit", "9"])
    assert bad.exit_code == 2 and "--accuracy-level-8bit" in bad.output and "Traceback" not in bad.output
    none = CliRunner().invoke(cli, ["quantize", str(parent), "--to", "int4", "--accuracy-level-8bit", "4", "--out", str(tmp_path / "x")])
    assert none.exit_code != 0 and "no 8-bit MatMulNBits" in none.output and "Traceback" not in none.output
    assert not (tmp_path / "x").exists()


def test_set_accuracy_level_touches_one_width_and_drops_the_attribute_at_0():
    from ortrefine.export.quantize.graph import set_accuracy_level

    def node(bits):
        return onnx.helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", K=32, N=8,
                                     bits=bits, block_size=32, accuracy_level=4)

    graph = onnx.helper.make_graph([node(8), node(4), onnx.helper.make_node("MatMul", ["a", "c"], ["z"])], "g", [], [])
    model = onnx.helper.make_model(graph)
    assert set_accuracy_level(model, 8, 1) == 1
    got = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node[:2]]
    assert got[0]["accuracy_level"] == 1 and got[1]["accuracy_level"] == 4
    assert set_accuracy_level(model, 8, 0) == 1
    assert "accuracy_level" not in {a.name for a in model.graph.node[0].attribute}
    assert set_accuracy_level(model, 2, 1) == 0
