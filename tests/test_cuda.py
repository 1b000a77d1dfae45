"""CUDA execution provider: run for real where onnxruntime-gpu and a GPU are present, else skip."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import has_cuda

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not has_cuda(), reason="no CUDA execution provider in this onnxruntime")]


def test_cuda_parity_and_io_binding(tiny_bundles):
    import ortrefine

    for arch, path in tiny_bundles.items():
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
