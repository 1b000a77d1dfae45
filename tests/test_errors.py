"""Bad input: each gets a typed error with the fix, and leaves nothing half-written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import ortrefine
from ortrefine.errors import BundleError, ExportError, PromptError, ProviderUnavailableError, UnknownNameError


def copy_bundle(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_bundle_dir(tmp_path):
    with pytest.raises(BundleError, match="no bundle at .*ortrefine export"):
        ortrefine.load(tmp_path / "nope")


def test_missing_model_file(tiny_bundles, tmp_path):
    b = copy_bundle(tiny_bundles["llama"], tmp_path / "b")
    (b / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing model.onnx"):
        ortrefine.load(b)


def test_truncated_model_file(tiny_bundles, tmp_path):
    b = copy_bundle(tiny_bundles["llama"], tmp_path / "b")
    data = (b / "model.onnx").read_bytes()
    (b / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated"):
        ortrefine.load(b)


def test_corrupt_model_file_same_size(tiny_bundles, tmp_path):
    b = copy_bundle(tiny_bundles["llama"], tmp_path / "b")
    size = (b / "model.onnx").stat().st_size
    (b / "model.onnx").write_bytes(b"\x07garbage" * (size // 8) + b"\x00" * (size % 8))
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        ortrefine.load(b)
    with pytest.raises(BundleError, match="sha256"):
        ortrefine.load(b, verify=True)


def test_corrupt_manifest(tiny_bundles, tmp_path):
    b = copy_bundle(tiny_bundles["llama"], tmp_path / "b")
    (b / "ortrefine.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        ortrefine.load(b)


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(), reason="CUDA present")
def test_cuda_unavailable_fails_fast(tiny_bundles):
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        ortrefine.load(tiny_bundles["llama"], provider="cuda")


def test_empty_prompt(tiny):
    _, lm, _, _ = tiny
    for p in ["", "   \n"]:
        with pytest.raises(PromptError, match="empty"):
            lm.generate(p)


def test_prompt_longer_than_context(tiny):
    _, lm, _, _ = tiny
    with pytest.raises(PromptError, match="context is 256"):
        lm.generate("word " * 300, max_new_tokens=4)
    with pytest.raises(PromptError, match="lower --max-new-tokens"):
        lm.generate("Once upon a time", max_new_tokens=255)


def test_unknown_catalog_name_lists_known():
    from ortrefine.catalog import get_entry

    with pytest.raises(UnknownNameError, match="known: gemma3-270m, smollm2-135m, tiny-gpt2, tiny-llama"):
        get_entry("gpt-17")


@pytest.mark.integration
def test_export_interrupted_leaves_nothing(tmp_path, monkeypatch):
    from ortrefine.export import onnx_export

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "validate_bundle", boom)
    out = tmp_path / "models" / "x"
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_bundle(onnx_export.ExportConfig("tiny:llama", output=out))
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


@pytest.mark.integration
def test_export_validation_failure_leaves_nothing(tmp_path):
    from ortrefine.errors import ValidationError
    from ortrefine.export.onnx_export import ExportConfig, export_bundle

    out = tmp_path / "x"
    with pytest.raises(ValidationError, match="not written"):
        export_bundle(ExportConfig("tiny:llama", output=out, atol=1e-12))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_existing_output(tiny_bundles):
    from ortrefine.export.onnx_export import ExportConfig, export_bundle

    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        export_bundle(ExportConfig("tiny:llama", output=tiny_bundles["llama"]))


def test_bad_generation_options():
    from ortrefine.errors import ConfigError
    from ortrefine.runtime.decoding import GenerationConfig

    with pytest.raises(UnknownNameError, match="known: beam, greedy, sample"):
        GenerationConfig(strategy="nucleus")
    for bad in [dict(max_new_tokens=0), dict(temperature=0), dict(top_p=0), dict(top_k=-1), dict(num_beams=0)]:
        with pytest.raises(ConfigError):
            GenerationConfig(**bad)


@pytest.mark.parametrize("text,match", [("x = [", "cannot read the model catalog"), ("[a]\nfoo = 1\n", r"catalog entry \[a\] is malformed"),
                                        ("a = 1\n", r"catalog entry \[a\] is malformed")])
def test_malformed_catalog_is_one_line(tmp_path, monkeypatch, text, match):
    from click.testing import CliRunner

    from ortrefine.cli.main import cli

    bad = tmp_path / "catalog.toml"
    bad.write_text(text)
    monkeypatch.setenv("ORTREFINE_CATALOG", str(bad))
    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 2 and r.exception is None or isinstance(r.exception, SystemExit)
    assert re.search(match, r.output) and "Traceback" not in r.output


def test_bundles_go_to_a_per_user_folder_by_default(tmp_path, monkeypatch):
    """Installed from a wheel and run from anywhere, a catalog name means the same bundle."""
    from ortrefine.catalog import models_dir, resolve_bundle_path

    monkeypatch.delenv("ORTREFINE_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert models_dir() == tmp_path / "data" / "ortrefine" / "models"
    assert resolve_bundle_path("smollm2-135m") == tmp_path / "data" / "ortrefine" / "models" / "smollm2-135m"
    legacy = tmp_path / "models" / "smollm2-135m"  # exported by an older version into ./models
    legacy.mkdir(parents=True)
    (legacy / "ortrefine.json").write_text("{}")
    assert resolve_bundle_path("smollm2-135m") == Path("models") / "smollm2-135m"
