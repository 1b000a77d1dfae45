"""The LM facade: one ONNX Runtime session over a bundle, its forward pass, scoring and decoding.

The interface (input/output names, dtypes, KV head count and size) is read from the session,
never from per-model tables, so any decoder Optimum exports with past key/values works. The parts
live below this module (ort_session, kvcache, steppers, scoring, decoding) and never import it;
it re-exports their names so `ortrefine.runtime.session.X` keeps working for every caller.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from ortrefine.errors import BundleError, PromptError
from ortrefine.runtime import scoring
from ortrefine.runtime.bundle import Bundle, open_bundle
from ortrefine.runtime.decoding import GenerationConfig, GenerationResult, generate as _generate
from ortrefine.runtime.hugepages import CollapseNewMemory, CollapseReport
from ortrefine.runtime.kvcache import ForwardOutput, KVCache, _host, _one_buffer, _shape
from ortrefine.runtime.ort_session import (
    FUSED_MIN_ORT,
    ORT_DTYPES,
    PROVIDERS,
    available_providers,
    check_graph_supported,
    graph_kind,
    make_session,
    one_cpu_per_core,
    ort_version,
    pin_intra_op_threads,
    wanted_provider,
)
from ortrefine.runtime.scoring import ScoreResult
from ortrefine.runtime.steppers import PlainSteps, SharedKVSteps, forward_io_binding
from ortrefine.runtime.tokenizer import TextTokenizer

__all__ = [
    "LM", "load",
    # re-exported from the modules below: callers import them from here
    "KVCache", "ForwardOutput", "_host", "_one_buffer", "_shape",
    "FUSED_MIN_ORT", "PROVIDERS", "available_providers", "check_graph_supported", "graph_kind", "make_session",
    "one_cpu_per_core", "ort_version", "pin_intra_op_threads", "wanted_provider",
    "PlainSteps", "SharedKVSteps", "ScoreResult",
    "ort",  # onnxruntime itself: tests fake an old runtime through `session.ort.__version__`
]

log = logging.getLogger(__name__)


class LM:
    """A causal LM bundle on ONNX Runtime: tokenizer, forward with KV cache, batched scoring."""

    def __init__(self, bundle: Bundle, provider: str = "auto", threads: int | None = None, pin_threads: bool = False,
                 hugepages: bool = False) -> None:
        self.bundle = bundle
        check_graph_supported(bundle)
        # hugepages: what onnxruntime allocates while building the session is its weights (runtime/hugepages.py)
        moved = CollapseNewMemory() if hugepages and wanted_provider(provider) == "cpu" else None  # CUDA: weights on the device
        with moved or contextlib.nullcontext():
            self.session, self.provider = make_session(bundle.model_file, provider, threads, pin_threads=pin_threads)
        self.hugepages: CollapseReport | None = moved.report if moved else None
        self.use_io_binding = self.provider == "cuda"
        self._read_interface()
        self.tokenizer = TextTokenizer.from_files(
            str(bundle.path / "tokenizer.json"),
            bundle.chat_template,
            {k: v for k, v in bundle.manifest.get("special_tokens", {}).items() if isinstance(v, str)},
        )
        self.forward_tokens = 0  # tokens pushed through the graph since load (cost accounting)

    # -- interface -------------------------------------------------------------------------
    def _read_interface(self) -> None:
        """Names, dtypes and KV geometry from the session itself, so no per-model table is needed."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        for required in ("input_ids", "attention_mask"):
            if required not in inputs:
                raise BundleError(
                    f"{self.bundle.model_file}: graph has no {required!r} input (has: {', '.join(inputs)}); "
                    "export with task text-generation-with-past"
                )
        self.past_names = [n for n in inputs if n.startswith("past_key_values")]
        if not self.past_names:
            raise BundleError(f"{self.bundle.model_file}: graph has no past_key_values inputs; export with task text-generation-with-past")
        outputs = [o.name for o in self.session.get_outputs()]
        self.present_names = [n.replace("past_key_values", "present", 1) for n in self.past_names]
        missing = [n for n in ["logits", *self.present_names] if n not in outputs]
        if missing:
            raise BundleError(f"{self.bundle.model_file}: graph lacks outputs {missing}")
        self.has_position_ids = "position_ids" in inputs
        # the fused graph's (export/decoder_graph.py); an input with a default is an overridable initializer
        self.has_logits_to_keep = any(i.name == "logits_to_keep" for i in self.session.get_overridable_initializers())
        self.input_dtypes = {n: ORT_DTYPES.get(i.type, np.float32) for n, i in inputs.items()}
        first = inputs[self.past_names[0]]
        cfg = self.bundle.config
        heads = first.shape[1] if isinstance(first.shape[1], int) else cfg.get("num_key_value_heads", cfg.get("n_head"))
        n_embd = cfg.get("hidden_size", cfg.get("n_embd"))
        n_heads = cfg.get("num_attention_heads", cfg.get("n_head"))
        dim = first.shape[3] if isinstance(first.shape[3], int) else cfg.get("head_dim") or n_embd // n_heads
        self.kv_heads, self.head_dim = int(heads), int(dim)
        self.kv_dtype = self.input_dtypes[self.past_names[0]]
        self.output_names = ["logits", *self.present_names]

    @property
    def vocab_size(self) -> int:
        return int(self.session.get_outputs()[0].shape[2]) if isinstance(self.session.get_outputs()[0].shape[2], int) else self.tokenizer.vocab_size

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.bundle.eos_ids

    def empty_kv(self, batch: int) -> KVCache:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return KVCache([np.zeros(shape, dtype=self.kv_dtype) for _ in self.past_names])

    # -- forward ---------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray, past: KVCache | None = None, attention_mask: np.ndarray | None = None,
                keep_last: int | None = None) -> ForwardOutput:
        """One pass of `input_ids` (batch, new) on top of `past`.

        attention_mask: (batch, past + new) int64, 0 at left padding; all ones by default.
        position_ids are derived from the mask, so left-padded rows count from their first token.
        keep_last: logits of the last `keep_last` positions only (batch, keep_last, vocab). Graphs
        with a `logits_to_keep` input skip the lm_head elsewhere; others are sliced afterwards.
        """
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        batch, new = input_ids.shape
        past = past if past is not None else self.empty_kv(batch)
        if past.batch != batch:
            past = past.repeat(batch)
        total = past.length + new
        if attention_mask is None:
            attention_mask = np.ones((batch, total), dtype=np.int64)
        feed: dict[str, np.ndarray] = {
            "input_ids": input_ids.astype(self.input_dtypes["input_ids"], copy=False),
            "attention_mask": attention_mask.astype(self.input_dtypes["attention_mask"], copy=False),
        }
        if self.has_position_ids:
            pos = np.cumsum(attention_mask, axis=1) - 1
            pos[attention_mask == 0] = 1
            feed["position_ids"] = np.ascontiguousarray(pos[:, -new:]).astype(self.input_dtypes["position_ids"], copy=False)
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 (got {keep_last}); pass None for every position")
        if keep_last is not None and self.has_logits_to_keep:
            feed["logits_to_keep"] = np.array([min(int(keep_last), new)], dtype=np.int64)
        self.forward_tokens += batch * new
        if self.use_io_binding:
            out = forward_io_binding(self, feed, past)
        else:
            for name, arr in zip(self.past_names, past.arrays):
                feed[name] = np.ascontiguousarray(arr)
            outs = self.session.run(self.output_names, feed)
            logits = outs[0] if outs[0].dtype == np.float32 else outs[0].astype(np.float32)
            out = ForwardOutput(logits=logits, kv=KVCache(list(outs[1:])))
        if keep_last is not None and out.logits.shape[1] > keep_last:
            out = ForwardOutput(logits=out.logits[:, -keep_last:], kv=out.kv)
        return out

    def steps(self, kv: KVCache, new_tokens: int) -> "PlainSteps | SharedKVSteps":
        """One-token decode steps after a batch-1 prefill whose cache is `kv`, for up to
        `new_tokens` tokens: on a shared KV buffer where the graph allows it (SharedKVSteps), else
        through `forward`."""
        if graph_kind(self.bundle) == "fused" and self.provider == "cpu" and kv.batch == 1:
            return SharedKVSteps(self, kv, kv.length + max(new_tokens, 1))
        return PlainSteps(self, kv)

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[int], chat: bool = False, max_new_tokens: int = 0, system: str | None = None) -> list[int]:
        """Prompt ids, refusing empty prompts and prompts that leave no room in the context."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty; give some text")
            ids = self.tokenizer.encode(prompt, chat=chat, system=system)
        else:
            ids = [int(i) for i in prompt]
            vocab = self.vocab_size
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise PromptError(f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1}); pass ids this model knows")
        if not ids:
            raise PromptError("the prompt is empty; give some text")
        ctx = self.bundle.context_length
        if len(ids) + max_new_tokens > ctx:
            raise PromptError(
                f"the prompt is {len(ids)} tokens and {max_new_tokens} new tokens were asked for, "
                f"but the model's context is {ctx}; shorten the prompt or lower --max-new-tokens"
            )
        return ids

    # -- scoring (the algorithms live in scoring.py) ----------------------------------------
    def prefill(self, ids: Sequence[int], keep_last: int | None = None) -> ForwardOutput:
        """Batch-1 pass over a whole sequence: its KV cache and the logits at every position (or
        at the last `keep_last`: what decoding and scoring from a prompt need)."""
        return self.forward(np.asarray([ids], dtype=np.int64), keep_last=keep_last)

    def extend(self, past: KVCache, suffixes: Sequence[Sequence[int]], pad_id: int | None = None) -> tuple[ForwardOutput, np.ndarray]:
        """Batched pass of K right-padded suffixes on one prefix cache: see `scoring.extend`."""
        return scoring.extend(self, past, suffixes, pad_id)

    def score(self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]], return_kv: bool = False,
              return_logits: bool = False) -> ScoreResult:
        """log p of each continuation given the prompt: see `scoring.score`."""
        return scoring.score(self, prompt_ids, continuations, return_kv=return_kv, return_logits=return_logits)

    def score_many(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> list[np.ndarray]:
        """Continuation log-probs of several sequences in one left-padded pass: see `scoring.score_many`."""
        return scoring.score_many(self, sequences, prompt_lengths)

    # -- decoding (thin; strategies live in decoding.py) ------------------------------------
    def generate(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, chat: bool = False,
                 **overrides) -> GenerationResult:
        cfg = config or GenerationConfig(**overrides)
        if config is not None and overrides:
            cfg = replace(config, **overrides)
        return _generate(self, prompt, cfg, chat=chat)


def load(path: str | Path, provider: str = "auto", threads: int | None = None, verify: bool = False,
         pin_threads: bool = False, hugepages: bool = False) -> LM:
    """Open a bundle (folder or catalog name) and start a session on it (pin_threads: see
    `pin_intra_op_threads`; hugepages: weights onto transparent huge pages, see runtime/hugepages.py;
    ignored on CUDA)."""
    from ortrefine.catalog import resolve_bundle_path

    t0 = time.perf_counter()
    lm = LM(open_bundle(resolve_bundle_path(path), verify=verify), provider=provider, threads=threads, pin_threads=pin_threads,
            hugepages=hugepages)
    log.info("loaded %s on %s in %.2fs", lm.bundle.path, lm.provider, time.perf_counter() - t0)
    return lm
