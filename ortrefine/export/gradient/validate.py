"""Whether the staged graph may join the bundle: it must agree with torch autograd, which it was
traced from, and with the bundle's own graph, which the refiner scores with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ortrefine.errors import BundleError, ValidationError
from ortrefine.export.gradient.function import gradient_function
from ortrefine.runtime.gradient import INPUT_NAMES, OUTPUT_NAMES


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got − ref| / max|ref| (0 when both are all zero)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(got - ref).max()) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def validation_cases(vocab: int, lengths: tuple[int, ...], seed: int) -> list[tuple[np.ndarray, int]]:
    """(ids, loss_start) per length: random ids (specials 0-2 avoided), the first third a prompt."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, vocab, size=n).astype(np.int64), max(1, n // 3)) for n in lengths]


def check_against_torch(session: Any, fn: Callable[..., Any], feeds: list[dict[str, np.ndarray]], rtol: float) -> list[dict[str, Any]]:
    """Run every feed through ORT and through torch autograd; collect, then raise on any failure."""
    import torch

    checks = []
    for feed in feeds:
        ref = fn(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES))
        got = session.run(list(OUTPUT_NAMES), feed)
        errs = {name: relative_error(g, r.numpy()) for name, g, r in zip(OUTPUT_NAMES, got, ref)}
        finite = all(np.isfinite(g).all() for g in got)
        checks.append({
            "length": int(feed["labels"].shape[1]),
            "rel_error": errs,
            "ok": finite and max(errs.values()) <= rtol,
        })
    bad = [c for c in checks if not c["ok"]]
    if bad:
        raise ValidationError(
            f"the ONNX gradient graph disagrees with torch autograd beyond rtol={rtol}: {bad}; "
            "the bundle was left unchanged (raise --rtol only if the differences are benign)"
        )
    return checks


def _check_graph(graph: Path, embeddings: np.ndarray, model: Any, cases: list[tuple[np.ndarray, int]],
                 rtol: float) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Run the staged graph with the runtime's own session options against torch autograd:
    (per-case checks, token log-probs for the bundle comparison)."""
    from ortrefine.runtime.gradient import build_feed, make_gradient_session

    try:
        session, _ = make_gradient_session(graph, "cpu")
    except BundleError as e:
        raise ValidationError(f"the exported gradient graph does not load ({e}); the bundle was left unchanged") from None
    feeds = [build_feed(embeddings, ids, start) for ids, start in cases]
    checks = check_against_torch(session, gradient_function(model), feeds, rtol)
    return checks, [session.run(["token_logprobs"], f)[0][0] for f in feeds]


def _bundle_parity(path: Path, cases: list[tuple[np.ndarray, int]], token_logprobs: list[np.ndarray]) -> float:
    """max |Δ log p| between the gradient graph and the bundle's own graph (LM.score) on Y's tokens."""
    from ortrefine.runtime.bundle import open_bundle
    from ortrefine.runtime.session import LM

    lm = LM(open_bundle(path), provider="cpu")
    worst = 0.0
    for (ids, start), got in zip(cases, token_logprobs):
        ref = lm.score(ids[:start].tolist(), [ids[start:].tolist()]).token_logprobs[0]
        worst = max(worst, float(np.abs(got[start - 1 : len(ids) - 1] - ref).max()))
    return worst


def _require_bundle_parity(precision: str, validate_atol: float, lm_diff: float) -> None:
    """An fp32 bundle must give the checkpoint's log-probs; a gap means the recorded source is no
    longer the model the bundle holds. A quantized bundle differs by design, so it is not held to this."""
    if precision == "fp32" and not lm_diff <= max(10 * validate_atol, 1e-2):
        raise ValidationError(
            f"the gradient graph's log-probs differ from the bundle's by {lm_diff:.3g}: its source checkpoint "
            "is not the model the bundle holds; re-export the bundle first"
        )

