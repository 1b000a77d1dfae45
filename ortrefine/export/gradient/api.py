"""export_gradient(): the steps in order under the bundle's write lock, so that a failure at any
step leaves the bundle as it was."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ortrefine.export.gradient.commit import _commit, _with_gradient_entry
from ortrefine.export.gradient.config import GradientExportConfig, GradientExportResult
from ortrefine.export.gradient.function import prepare_model
from ortrefine.export.gradient.onnx_graph import export_onnx, trace_gradient
from ortrefine.export.gradient.preflight import _check_same_model, _refuse_to_clobber, _require_gradient_extras, bundle_source
from ortrefine.export.gradient.sharing import _write_graph
from ortrefine.export.gradient.validate import _bundle_parity, _check_graph, _require_bundle_parity, validation_cases
from ortrefine.runtime.gradient import EMBEDDINGS_FILE, GRADIENT_DATA, GRADIENT_FILE

log = logging.getLogger("ortrefine.export.gradient")  # the name it logged under as one module


def export_gradient(cfg: GradientExportConfig) -> GradientExportResult:
    """Load the bundle's source checkpoint, export, validate, and add the graph to the bundle.

    The bundle's write lock is held throughout (export, quantize and another export-gradient
    into the same folder wait their turn), the graph is staged in a marked folder a later run
    can clear after a kill -9, and the commit's renames are not cut by SIGINT/SIGTERM."""
    from ortrefine.bundle.write import lock_target
    from ortrefine.catalog import resolve_bundle_path

    path = resolve_bundle_path(cfg.bundle)
    with lock_target(path) as claim:
        return _export_gradient(cfg, path, claim)


def _export_gradient(cfg: GradientExportConfig, path: Path, claim: Any) -> GradientExportResult:
    """Runs with the lock held; the refusals come first so that they cost no checkpoint load."""
    from ortrefine.bundle.write import interrupts_deferred
    from ortrefine.export.sources import load_source
    from ortrefine.runtime.bundle import open_bundle

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    bundle = open_bundle(path)
    _refuse_to_clobber(path, bundle.manifest, cfg.overwrite)
    src = bundle_source(path, bundle.manifest)
    _require_gradient_extras()
    steps = _progress(cfg.progress, path.name)

    with _timed(timings, "load", steps):
        model, _tokenizer = load_source(src)
        _check_same_model(path, bundle.config, model)
        prepare_model(model)
        embeddings = np.ascontiguousarray(model.get_input_embeddings().weight.detach().float().numpy())  # (V, H)

    staged = claim.new_staging()
    try:
        with _timed(timings, "trace", steps):
            gm, example = trace_gradient(model)
        with _timed(timings, "onnx_export", steps):
            proto = export_onnx(gm, example, bundle.context_length)
            del gm
        with _timed(timings, "write", steps):
            surgery, shared, opset = _write_graph(proto, bundle.model_file, staged)
            del proto
            np.save(staged / EMBEDDINGS_FILE, embeddings)
        with _timed(timings, "validate", steps):
            cases = validation_cases(embeddings.shape[0], cfg.lengths, cfg.seed)
            rtol = cfg.rtol if cfg.rtol is not None else src.validate_atol
            checks, token_lps = _check_graph(staged / GRADIENT_FILE, embeddings, model, cases, rtol)
            del model  # the bundle's own session comes next: free the torch weights first
            lm_diff = _bundle_parity(path, cases, token_lps)
            _require_bundle_parity(bundle.precision, src.validate_atol, lm_diff)

        worst = max(c["rel_error"]["grad_embeds"] for c in checks)
        new_files = [GRADIENT_DATA, GRADIENT_FILE, EMBEDDINGS_FILE]
        added = sum((staged / f).stat().st_size for f in new_files)
        validation = {"rtol": rtol, "max_rel_error_grad": worst, "bundle_logprob_max_abs_diff": lm_diff, "checks": checks}
        manifest = _with_gradient_entry(bundle.manifest, new_files, opset, surgery, shared, validation)
        with interrupts_deferred():
            manifest = _commit(path, staged, new_files, manifest, bundle.manifest)
        steps.update()
    finally:
        steps.close()
        shutil.rmtree(staged, ignore_errors=True)
    timings["total"] = time.perf_counter() - t_start
    log.info("gradient graph added to %s: %s", path, {k: round(v, 1) for k, v in timings.items()})
    return GradientExportResult(path, manifest, checks, worst, added, timings["total"], timings)


@contextmanager
def _timed(timings: dict[str, float], name: str, steps: Any) -> Iterator[None]:
    """One step of the export: its wall time into `timings` and a tick of the progress bar, on success only."""
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t
    steps.update()


def _progress(enabled: bool, name: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=6, desc=f"export-gradient {name}", disable=not enabled, leave=False)

