"""Gradients of log P(Y | X) w.r.t. the input embeddings, from the bundle's gradient graph.

Torch-free: ONNX Runtime runs `gradient.onnx` (written by `ortrefine export-gradient`, see
ortrefine.export.gradient for the graph's interface) and numpy does the rest.

HotFlip / GCG first-order scores. Let S(Y) = Σ_{t ≥ loss_start} w_t · log p(y_t | y_<t), the
quantity the refiner MAXIMISES, and g_i = ∂S/∂e_i the gradient at the input embedding of
position i. Swapping token y_i for v moves e_i from E[y_i] to E[v], so to first order

    ΔS ≈ (E[v] − E[y_i]) · g_i                                   (input path)
       + w_i · (log p(v | y_<i) − log p(y_i | y_<i))             (y_i is also a label: exact)

The first line is the gradient w.r.t. the one-hot of y_i through the embedding; the second is
its gradient through the log-softmax of position i − 1, which is linear in the one-hot, so
it is exact. This is GCG's −(E[v] − E[y_i]) · ∇_e L with L = −S: the sign is + here because S
is a log-prob, not a loss. `hotflip_scores` returns the sum (or the input path alone with
include_target=False); a higher score means a more promising swap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ortrefine.errors import BundleError, ConfigError, PromptError
from ortrefine.runtime.bundle import Bundle, open_bundle

log = logging.getLogger(__name__)

GRADIENT_FILE = "gradient.onnx"
GRADIENT_DATA = "gradient.onnx_data"
EMBEDDINGS_FILE = "embeddings.npy"
INPUT_NAMES = ("inputs_embeds", "labels", "loss_mask")
OUTPUT_NAMES = ("logprob_sum", "token_logprobs", "grad_embeds", "log_probs")


def build_feed(embeddings: np.ndarray, ids: Sequence[int] | np.ndarray, loss_start: int, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The gradient graph's inputs for one sequence whose tokens from `loss_start` on are scored.

    embeddings: (V, H) float32. ids: (T,) prompt + Y. weights: (T − loss_start,) per-token
    weights of S (default 1). Returns inputs_embeds (1, T, H) float32 = E[ids]; labels (1, T)
    int64 with labels[t] = ids[t + 1] (the last label is 0, masked); loss_mask (1, T) float32
    with loss_mask[t] = weight of token t + 1 for t + 1 ≥ loss_start, else 0.
    """
    ids = np.asarray(ids, dtype=np.int64)
    T = int(ids.shape[0])
    labels = np.zeros((1, T), dtype=np.int64)
    labels[0, :-1] = ids[1:]
    mask = np.zeros((1, T), dtype=np.float32)
    mask[0, loss_start - 1 : T - 1] = 1.0 if weights is None else np.asarray(weights, dtype=np.float32)
    return {
        "inputs_embeds": np.ascontiguousarray(embeddings[ids][None], dtype=np.float32),
        "labels": labels,
        "loss_mask": mask,
    }


@dataclass
class GradResult:
    """One pass of the gradient graph over ids = prompt + Y.

    ids: (T,) int64, the sequence. loss_start: index of Y's first token in ids.
    logprob_sum: S = Σ_{t ≥ loss_start} w_t · log p(ids[t] | ids[:t]) (float64 sum).
    token_logprobs: (T − loss_start,) float32, log p(ids[t] | ids[:t]) for t = loss_start..T−1
        (unweighted), the same numbers as `LM.score(prompt, [Y]).token_logprobs[0]`.
    grad_embeds: (T, H) float32, ∂S/∂e_t at every position (0 at the last one, which predicts
        nothing that S counts).
    log_probs: (T, V) float32, row t = log p(· | ids[:t + 1]), the distribution of token t + 1.
    weights: (T − loss_start,) float32, the w_t used.
    seconds: wall time of the session run.
    """

    ids: np.ndarray
    loss_start: int
    logprob_sum: float
    token_logprobs: np.ndarray
    grad_embeds: np.ndarray
    log_probs: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    seconds: float = 0.0

    def grad_norms(self) -> np.ndarray:
        """(T,) float32 L2 norm of the gradient at each position (for choosing positions)."""
        return np.linalg.norm(self.grad_embeds, axis=-1)


@dataclass
class SwapProposals:
    """Top-k token swaps per position by first-order score.

    positions: (P,) int64 indices into ids. tokens: (P, k) int64 candidate ids, best first.
    scores: (P, k) float32 first-order ΔS estimates (see the module docstring).
    """

    positions: np.ndarray
    tokens: np.ndarray
    scores: np.ndarray


def _as_bundle(bundle: Any) -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    if hasattr(bundle, "bundle") and isinstance(bundle.bundle, Bundle):  # an LM
        return bundle.bundle
    from ortrefine.catalog import resolve_bundle_path

    return open_bundle(resolve_bundle_path(bundle))


def shared_weights(bundle: Any) -> dict[str, Any]:
    """{initializer name: OrtValue} over gradient.onnx_data, memory-mapped, for the weights the
    gradient graph shares (same name, layout and bytes) with the bundle's model.onnx.

    Pass the dict to `GradientModel.open(..., shared=...)` and to the main session's
    SessionOptions (`add_initializer(name, value)` for each, plus the session config entry
    `session.disable_prepacking = 1`): both sessions then read one read-only, page-cache-backed
    copy of the weights. Keep the dict alive as long as either session.
    """
    import onnxruntime as ort

    b = _as_bundle(bundle)
    index = (b.manifest.get("gradient") or {}).get("shared_initializers")
    if not isinstance(index, dict):
        raise BundleError(f"{b.path} has no gradient graph with shared weights: run `ortrefine export-gradient {b.path} --overwrite`")
    data = np.memmap(b.path / GRADIENT_DATA, dtype=np.uint8, mode="r")
    out = {}
    for name, entry in index.items():
        shape = tuple(int(d) for d in entry["shape"])
        arr = np.frombuffer(data, dtype=np.dtype(entry["dtype"]), count=int(np.prod(shape)), offset=int(entry["offset"])).reshape(shape)
        out[name] = ort.OrtValue.ortvalue_from_numpy(arr)  # wraps the mapped pages, no copy
    return out


def make_gradient_session(
    model_file: Path, provider: str = "cpu", threads: int | None = None, shared: dict[str, Any] | None = None, prepack: bool = False
) -> tuple[Any, str]:
    """Like session.make_session, with the options the gradient graph wants: no arena, no
    prepacking (unless asked), the shared weights (if given) in place of the file's."""
    from ortrefine.runtime.session import make_session

    def configure(opts: Any) -> None:
        # ORT's arena keeps its high-water mark; this graph's (T, V) temporaries made it grow by
        # ~100 MB per call at T = 50 on SmolLM2-135M. Plain malloc/free returns them.
        opts.enable_cpu_mem_arena = False
        if not prepack or shared:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        for name, value in (shared or {}).items():
            opts.add_initializer(name, value)

    return make_session(model_file, provider, threads, configure, fix=f"run `ortrefine export-gradient {model_file.parent} --overwrite`")


class GradientModel:
    """ONNX Runtime session over a bundle's gradient graph, plus the input embedding matrix.

    Open it with `GradientModel.open(bundle_or_lm_or_path)`. Embeddings are memory-mapped
    (float32 (V, H)): pages are read on first use and shared with other processes.
    """

    def __init__(self, bundle: Bundle, session: Any, embeddings: np.ndarray, provider: str) -> None:
        self.bundle = bundle
        self.session = session
        self.embeddings = embeddings
        self.provider = provider
        self.forward_tokens = 0  # tokens pushed through the gradient graph (cost accounting)
        self.shared: dict[str, Any] | None = None
        self._check_interface()

    @classmethod
    def open(
        cls,
        bundle: Any,
        provider: str | None = None,
        threads: int | None = None,
        shared: dict[str, Any] | None = None,
        prepack: bool = False,
    ) -> "GradientModel":
        """Bundle, LM, folder or catalog name → GradientModel; BundleError when it has no graph.

        provider: auto | cpu | cuda; None: the LM's provider when given an LM, else auto.
        shared: OrtValues from `shared_weights(bundle)`; hand the same dict to the main session
            so both read one copy of the weights (see `shared_weights`).
        prepack: let ONNX Runtime prepack MatMul weights. Off by default: prepacking keeps a
            packed copy per orientation (SmolLM2-135M: +0.5 GB steady RSS for a ~30 % faster
            grad()) instead of reading the memory-mapped gradient.onnx_data in place.
        """
        if provider is None:
            provider = getattr(bundle, "provider", None) if not isinstance(bundle, (str, Path, Bundle)) else None
            provider = provider or "auto"
        b = _as_bundle(bundle)
        info = b.manifest.get("gradient")
        if not isinstance(info, dict):
            raise BundleError(f"{b.path} has no gradient graph: run `ortrefine export-gradient {b.path}`")
        from ortrefine.bundle.format import regular_file

        listed = b.manifest.get("files", {})
        for name in (GRADIENT_FILE, EMBEDDINGS_FILE):
            # regular_file refuses a symlink: the gradient files are read like the bundle's others
            if name not in listed or regular_file(b.path, name) is None:
                raise BundleError(f"{b.path}: missing {name}; run `ortrefine export-gradient {b.path} --overwrite`")
        session, got = make_gradient_session(b.path / GRADIENT_FILE, provider, threads, shared, prepack)
        try:
            embeddings = np.load(b.path / EMBEDDINGS_FILE, mmap_mode="r")
        except ValueError as e:
            raise BundleError(f"{b.path / EMBEDDINGS_FILE}: unreadable ({e}); run `ortrefine export-gradient {b.path} --overwrite`") from None
        model = cls(b, session, embeddings, got)
        model.shared = shared  # the OrtValues must outlive the session
        return model

    def _check_interface(self) -> None:
        fix = f"run `ortrefine export-gradient {self.bundle.path} --overwrite`"
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in INPUT_NAMES if n not in inputs] + [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise BundleError(f"{self.bundle.path / GRADIENT_FILE} lacks {missing}; {fix}")
        E = self.embeddings
        hidden = inputs["inputs_embeds"].shape[2]
        if E.ndim != 2 or E.dtype != np.float32 or (isinstance(hidden, int) and hidden != E.shape[1]):
            raise BundleError(f"{self.bundle.path / EMBEDDINGS_FILE} is {E.dtype} {E.shape}, the graph wants (vocab, {hidden}) float32; {fix}")

    @property
    def vocab_size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.embeddings.shape[1])

    # -- the gradient -----------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ConfigError(f"token ids must lie in [0, {self.vocab_size}), got {int(arr.min())}..{int(arr.max())}")
        return arr

    def grad(self, ids: Sequence[int] | np.ndarray, loss_start: int, weights: Sequence[float] | np.ndarray | None = None) -> GradResult:
        """S and ∂S/∂embeddings for ids = prompt + Y with Y = ids[loss_start:].

        loss_start: 1 ≤ loss_start < len(ids) (Y non-empty; its first token needs a prompt
        before it). weights: optional (len(ids) − loss_start,) per-token weights of S.
        """
        arr = self._check_ids(ids)
        T = int(arr.shape[0])
        if not 1 <= loss_start < T:
            raise ConfigError(f"loss_start must satisfy 1 <= loss_start < len(ids) = {T}, got {loss_start}")
        if T > self.bundle.context_length:
            raise PromptError(f"{T} tokens exceed the model's context of {self.bundle.context_length}; shorten the prompt or the output")
        w = np.ones(T - loss_start, np.float32) if weights is None else np.asarray(weights, dtype=np.float32).reshape(-1)
        if w.shape[0] != T - loss_start or not np.isfinite(w).all():
            raise ConfigError(f"weights must be {T - loss_start} finite numbers, got shape {w.shape}")
        feed = build_feed(self.embeddings, arr, loss_start, w)
        t0 = time.perf_counter()
        _, token, grad, log_probs = self.session.run(list(OUTPUT_NAMES), feed)
        seconds = time.perf_counter() - t0
        self.forward_tokens += T
        per = token[0, loss_start - 1 : T - 1].astype(np.float32)
        return GradResult(
            ids=arr,
            loss_start=int(loss_start),
            logprob_sum=float(np.sum(per.astype(np.float64) * w)),
            token_logprobs=per,
            grad_embeds=grad[0],
            log_probs=log_probs[0],
            weights=w,
            seconds=seconds,
        )

    # -- HotFlip ----------------------------------------------------------------------------
    def hotflip_scores(
        self,
        ids: Sequence[int] | np.ndarray,
        positions: Sequence[int] | np.ndarray,
        grad: GradResult | np.ndarray,
        include_target: bool = True,
    ) -> np.ndarray:
        """(len(positions), V) float32 first-order ΔS of swapping ids[i] → v, for i in positions.

        grad: a GradResult for these ids, or a bare (T, H) gradient (then only the input path
        counts). include_target: add the exact change of y_i's own term (needs a GradResult;
        positions before loss_start have none). The current token scores 0 at its position.
        """
        arr = self._check_ids(ids)
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= arr.shape[0]):
            raise ConfigError(f"positions must index ids (0..{arr.shape[0] - 1}), got {pos.tolist()}")
        if isinstance(grad, GradResult) and not np.array_equal(grad.ids, arr):
            raise ConfigError("the GradResult was computed for other ids; run grad() on these ids first")
        g = grad.grad_embeds if isinstance(grad, GradResult) else np.asarray(grad, dtype=np.float32)
        if g.shape != (arr.shape[0], self.hidden_size):
            raise ConfigError(f"the gradient is {g.shape}, expected ({arr.shape[0]}, {self.hidden_size}) for these ids")
        gp = g[pos]  # (P, H)
        E = self.embeddings
        scores = (np.asarray(E) @ gp.T).T  # (P, V): E[v] · g_i
        scores -= np.einsum("ph,ph->p", E[arr[pos]], gp)[:, None]  # − E[y_i] · g_i
        if include_target and isinstance(grad, GradResult):
            for row, i in enumerate(pos):
                if i >= grad.loss_start:
                    lp = grad.log_probs[i - 1]  # (V,) log p(· | ids[:i])
                    scores[row] += grad.weights[i - grad.loss_start] * (lp - lp[arr[i]])
        return scores.astype(np.float32, copy=False)

    def topk_swaps(
        self,
        ids: Sequence[int] | np.ndarray,
        positions: Sequence[int] | np.ndarray,
        k: int,
        loss_start: int | None = None,
        grad: GradResult | None = None,
        banned: Sequence[int] | None = None,
        include_target: bool = True,
    ) -> SwapProposals:
        """The k best-scoring replacement tokens at each position (the current token excluded).

        Give `grad` (a GradResult for these ids) to reuse a pass, else `loss_start` to run one.
        banned: token ids never proposed (e.g. eos or other special tokens).
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        arr = self._check_ids(ids)
        if grad is None:
            if loss_start is None:
                raise ConfigError("topk_swaps needs loss_start (or a GradResult in grad=)")
            grad = self.grad(arr, loss_start)
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        scores = self.hotflip_scores(arr, pos, grad, include_target)
        scores[np.arange(pos.size), arr[pos]] = -np.inf
        if banned:
            scores[:, np.asarray(list(banned), dtype=np.int64)] = -np.inf
        k = min(k, self.vocab_size - 1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        return SwapProposals(pos, np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1))
