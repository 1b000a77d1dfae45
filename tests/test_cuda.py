"""CUDA execution provider: run for real where onnxruntime-gpu and a GPU are present, else skip."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import has_cuda

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not has_cuda(), reason="no CUDA execution provider in this onnxruntime")]


def cuda_bundles(tiny_bundles, optimum_llama_bundle) -> dict:
    """Every tiny graph this onnxruntime can load: the fused one needs >= 1.32 (onnxruntime-gpu
    stopped at 1.31.1 on the index these machines use; README, The export graph)."""
    from ortrefine.runtime.session import FUSED_MIN_ORT, ort_version

    bundles = {"gpt2": tiny_bundles["gpt2"], "llama-optimum": optimum_llama_bundle}
    if ort_version() >= FUSED_MIN_ORT:
        bundles["llama-fused"] = tiny_bundles["llama"]
    return bundles


def test_cuda_fused_graph_needs_a_recent_onnxruntime(tiny_bundles):
    """On onnxruntime-gpu < 1.32 the fused bundle is refused with the fix named, not a raw ORT error."""
    import ortrefine
    from ortrefine.errors import BundleError
    from ortrefine.runtime.session import FUSED_MIN_ORT, ort_version

    if ort_version() >= FUSED_MIN_ORT:
        assert ortrefine.load(tiny_bundles["llama"], provider="cuda").provider == "cuda"
    else:
        with pytest.raises(BundleError, match="--graph optimum"):
            ortrefine.load(tiny_bundles["llama"], provider="cuda")


def test_cuda_parity_and_io_binding(tiny_bundles, optimum_llama_bundle):
    import ortrefine

    for arch, path in cuda_bundles(tiny_bundles, optimum_llama_bundle).items():
        cpu, gpu = ortrefine.load(path, provider="cpu"), ortrefine.load(path, provider="cuda")
        assert gpu.provider == "cuda" and gpu.use_io_binding
        ids = cpu.encode_prompt("Once upon a time")
        a, b = cpu.prefill(ids), gpu.prefill(ids)
        np.testing.assert_allclose(b.logits, a.logits, atol=1e-3)
        assert b.kv.on_device()  # the KV cache stayed on the GPU
        step_cpu = cpu.forward(np.array([[5]]), a.kv)
        step_gpu = gpu.forward(np.array([[5]]), b.kv)
        np.testing.assert_allclose(step_gpu.logits, step_cpu.logits, atol=1e-3)
        assert gpu.generate("Once upon a time", max_new_tokens=12).ids == cpu.generate("Once upon a time", max_new_tokens=12).ids
        # refinement slices the cache on the host: same answer as on the CPU
        from ortrefine.runtime.refine import RefineConfig, refine

        cfg = RefineConfig(max_new_tokens=8)
        assert refine(gpu, "Once upon", cfg).final.ids == refine(cpu, "Once upon", cfg).final.ids
