"""Decode steps after a prefill, and the IO-binding forward pass: the paths that bind tensors.

Feeding numpy dicts to `session.run` copies the whole cache in and out every call; binding
OrtValues lets a cache stay where the graph wrote it (on the GPU, or in a buffer the graph extends
in place). Written against `BoundModel`, the few attributes they read, so this module never
imports the LM facade.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnxruntime as ort

from ortrefine.runtime.kvcache import ForwardOutput, KVCache, _host


class BoundModel(Protocol):
    """What binding needs from an LM: its session, the graph's names and dtypes, the cost counter."""

    session: ort.InferenceSession
    provider: str
    past_names: list[str]
    present_names: list[str]
    input_dtypes: dict[str, type]
    has_position_ids: bool
    forward_tokens: int

    def forward(self, input_ids: np.ndarray, past: KVCache | None = None) -> ForwardOutput: ...


def forward_io_binding(lm: BoundModel, feed: dict[str, np.ndarray], past: KVCache) -> ForwardOutput:
    """CUDA: logits come back to the host, the present KV stays on the device for the next step.

    feed: graph inputs by name (input_ids (batch, new), attention_mask (batch, past + new), …) in
    the graph's dtypes; past: arrays or OrtValues (batch, kv_heads, past, head_dim). Returns logits
    (batch, new, vocab) float32 on the host and the present cache as OrtValues on `lm.provider`.
    IO binding sees graph inputs only: an overridable initializer such as the fused graph's
    `logits_to_keep` cannot be bound, so it keeps its default (every position) and the caller
    slices the logits afterwards. On the CPU this path is no faster (benchmarks/RESULTS.md).
    """
    binding = lm.session.io_binding()
    for name, arr in feed.items():
        if name in lm.input_dtypes:
            binding.bind_cpu_input(name, arr)
    for name, arr in zip(lm.past_names, past.arrays):
        if isinstance(arr, ort.OrtValue):
            binding.bind_ortvalue_input(name, arr)
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
    binding.bind_output("logits")
    for name in lm.present_names:
        binding.bind_output(name, lm.provider, 0)  # "cuda", or "cpu" when this path is tested there
    lm.session.run_with_iobinding(binding)
    outs = binding.get_outputs()
    logits = outs[0].numpy()
    return ForwardOutput(logits=logits.astype(np.float32, copy=False), kv=KVCache(list(outs[1:])))


class PlainSteps:
    """Batch-1 one-token decode steps through `LM.forward` (any graph, any provider)."""

    def __init__(self, lm: BoundModel, kv: KVCache) -> None:
        self.lm, self.kv = lm, kv

    def step(self, token: int) -> np.ndarray:
        """Feed `token`; the logits of the next position, (vocab,) float32."""
        out = self.lm.forward(np.array([[token]], dtype=np.int64), self.kv)
        self.kv = out.kv
        return out.logits[0, -1]


class SharedKVSteps:
    """Batch-1 one-token decode steps on a KV buffer that GroupQueryAttention extends in place.

    Why: through `LM.forward` every step hands the graph the whole past and gets a fresh present
    back, a copy of the cache per token. Bound (IO binding) as both past and present, a buffer with
    room for every token lets GroupQueryAttention write only the new token's keys and values; the
    logits are the same, and int4 decode is faster, more so the longer the output
    (benchmarks/RESULTS.md).
    Only for ortrefine's fused graph (GroupQueryAttention) on the CPU, one unpadded row.
    buffers[j]: (1, kv_heads, capacity, head_dim), filled up to `length`.
    """

    def __init__(self, lm: BoundModel, kv: KVCache, capacity: int) -> None:
        self.lm, self.length, self.capacity = lm, kv.length, capacity
        self.buffers = []  # numpy arrays the OrtValues wrap: kept alive here
        self.binding = lm.session.io_binding()
        self.binding.bind_output("logits")  # first: get_outputs() lists outputs in binding order
        for past, present, a in zip(lm.past_names, lm.present_names, kv.arrays):
            a = _host(a)
            buf = np.zeros((1, a.shape[1], capacity, a.shape[3]), dtype=a.dtype)
            buf[:, :, : self.length] = a
            self.buffers.append(buf)
            value = ort.OrtValue.ortvalue_from_numpy(buf)  # wraps buf, no copy
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)
        self.mask = np.ones((1, capacity), dtype=lm.input_dtypes["attention_mask"])

    def step(self, token: int) -> np.ndarray:
        """Feed `token`; the logits of the next position, (vocab,) float32."""
        if self.length >= self.capacity:
            raise ValueError(f"the KV buffer holds {self.capacity} positions; all are used")
        dtypes, total = self.lm.input_dtypes, self.length + 1
        self.binding.bind_cpu_input("input_ids", np.array([[token]], dtype=dtypes["input_ids"]))
        self.binding.bind_cpu_input("attention_mask", self.mask[:, :total])
        if self.lm.has_position_ids:
            self.binding.bind_cpu_input("position_ids", np.array([[total - 1]], dtype=dtypes["position_ids"]))
        self.lm.session.run_with_iobinding(self.binding)
        self.length = total
        self.lm.forward_tokens += 1
        # a copy: the returned array may share memory with the binding's output, which the next step reuses
        return np.array(self.binding.get_outputs()[0].numpy()[0, -1], dtype=np.float32)
