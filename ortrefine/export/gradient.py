"""A second ONNX graph in a bundle: log-probs and their gradient w.r.t. the input embeddings.

The runtime (ortrefine.runtime.gradient) runs it with ONNX Runtime alone, so HotFlip/GCG-style
proposals need no torch on the edge box. The route (../shared/FACTS.md, "A gradient graph that
ONNX Runtime can run"): eager attention (the SDPA backward has no ONNX mapping), frozen
parameters, a plain function that calls `torch.autograd.grad`, traced by `make_fx` into core
aten ops, then the dynamo ONNX exporter with a dynamic sequence axis.

Graph interface (T = sequence length, dynamic; H = hidden size; V = vocab):

    inputs   inputs_embeds  (1, T, H) float32   rows of the input embedding matrix (embeddings.npy)
             labels         (1, T)    int64     labels[t] = the token whose log-prob position t's
                                                logits give, i.e. ids[t + 1] (caller shifts; the
                                                last label is any valid id, masked out)
             loss_mask      (1, T)    float32   weight of each position's term: 1 on the positions
                                                whose label belongs to Y, 0 on the prompt
    outputs  logprob_sum    ()        float32   S = Σ_t loss_mask[t] · log p(labels[t] | e_≤t)
             token_logprobs (1, T)    float32   log p(labels[t] | e_≤t) at every position (unmasked)
             grad_embeds    (1, T, H) float32   ∂S/∂inputs_embeds
             log_probs      (1, T, V) float32   the whole next-token log-softmax at every position

Position ids are 0..T-1: one unpadded sequence, batch 1. The gradient is of the log-prob
(a quantity to MAXIMISE), not of a loss.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ortrefine.errors import BundleError, ConfigError, ExportError, ValidationError
from ortrefine.export.writer import save_with_external_data
from ortrefine.runtime.gradient import EMBEDDINGS_FILE, GRADIENT_DATA, GRADIENT_FILE, INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger(__name__)
TRACE_LENGTH = 7  # sequence length of the example inputs; the exported axis is dynamic


@dataclass
class GradientExportConfig:
    """Add a gradient graph to an existing bundle.

    bundle: the bundle folder (catalog names are resolved like `ortrefine.load`).
    rtol: max relative error allowed between ONNX Runtime and torch autograd, per output, as
        max|ONNX − torch| / max|torch| over the whole tensor (elementwise ratios are meaningless
        for gradient entries near zero). None takes the source's validation tolerance (1e-4 for
        tiny models, 1e-3 for real ones: on SmolLM2-135M fp32 noise alone reaches ~1e-4).
    lengths: sequence lengths of the validation inputs (random ids, a third of them prompt).
    seed: seed of the validation ids.
    overwrite: replace a gradient graph the bundle already has.
    progress: show a progress bar on stderr.
    """

    bundle: Path | str
    rtol: float | None = None
    lengths: tuple[int, ...] = (5, 17, 40)
    seed: int = 0
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        self.lengths = tuple(int(n) for n in self.lengths)
        if self.rtol is not None and not self.rtol > 0:
            raise ConfigError(f"rtol must be positive, got {self.rtol}")
        if not self.lengths or min(self.lengths) < 2:
            raise ConfigError(f"validation lengths must be at least 2 tokens, got {self.lengths}")


@dataclass
class GradientExportResult:
    """path: the bundle. manifest: its rewritten ortrefine.json. checks: one dict per validation
    input (length, relative error of each output). max_rel_error: worst relative error of the
    gradient. bytes: size of the files added. seconds: wall time of the whole export."""

    path: Path
    manifest: dict[str, Any]
    checks: list[dict[str, Any]]
    max_rel_error: float
    bytes: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def gradient_function(model: Any) -> Callable[..., tuple[Any, Any, Any, Any]]:
    """fn(inputs_embeds, labels, loss_mask) -> (logprob_sum, token_logprobs, grad_embeds, log_probs).

    The model must already be in eval mode with eager attention and frozen parameters.
    """
    import torch

    def fn(inputs_embeds: Any, labels: Any, loss_mask: Any) -> tuple[Any, Any, Any, Any]:
        with torch.enable_grad():
            e = inputs_embeds.detach().requires_grad_(True)
            positions = torch.arange(e.shape[1], device=e.device).unsqueeze(0)  # (1, T): 0..T-1
            logits = model(inputs_embeds=e, position_ids=positions, use_cache=False).logits  # (1, T, V)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            token = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (1, T)
            total = (token * loss_mask).sum()
            (grad,) = torch.autograd.grad(total, e)
        return total.detach(), token.detach(), grad, log_probs.detach()

    return fn


def prepare_model(model: Any) -> Any:
    """Eager attention (SDPA's backward has no ONNX mapping), eval mode, frozen parameters."""
    model.config._attn_implementation = "eager"
    for module in model.modules():  # some models cache the attention choice per layer config
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = "eager"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def trace_gradient(model: Any) -> tuple[Any, tuple[Any, ...]]:
    """(FX graph of plain core-aten ops, example inputs): backward ops decomposed, symbolic in T."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    fn = gradient_function(model)
    H = model.get_input_embeddings().weight.shape[1]
    example = (torch.zeros(1, TRACE_LENGTH, H), torch.zeros(1, TRACE_LENGTH, dtype=torch.int64), torch.ones(1, TRACE_LENGTH))
    return make_fx(
        fn,
        tracing_mode="symbolic",
        decomposition_table=torch._decomp.core_aten_decompositions(),
        _allow_non_fake_inputs=True,
    )(*example), example


def export_onnx(graph_module: Any, example: tuple[Any, ...], context_length: int) -> Any:
    """Dynamo ONNX export of the traced graph → onnx.ModelProto with the weights in memory."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, gm: Any) -> None:
            super().__init__()
            self.gm = gm

        def forward(self, inputs_embeds: Any, labels: Any, loss_mask: Any) -> Any:
            return self.gm(inputs_embeds, labels, loss_mask)

    seq = torch.export.Dim("seq", min=2, max=max(context_length, TRACE_LENGTH + 1))
    try:
        program = torch.onnx.export(
            Wrapped(graph_module),
            example,
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({1: seq}, {1: seq}, {1: seq}),
            optimize=False,  # onnxscript's optimizer ran > 8 min on a 135 M model; ORT folds at load
            verbose=False,
        )
    except Exception as e:  # torch.onnx raises many types; all mean "this model does not export"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the gradient graph does not export to ONNX ({type(e).__name__}: {first}); the bundle was left unchanged") from None
    return program.model_proto


# -- graph surgery: one copy of each weight -------------------------------------------------
# The traced backward of y = x @ Wᵀ computes gx = gy @ (Wᵀ)ᵀ, so the exported graph holds
# Transpose(W) for the forward and Transpose(Transpose(W)) for the backward. ONNX Runtime's
# constant folding materialises both, and prepacking copies each again: ~2.5× the weights in
# RAM. Rewriting every such MatMul to read one stored layout (MatMul, or FusedMatMul with
# transB=1 for the other orientation) leaves a single copy that ORT can memory-map.


def _is_transpose_2d(node: Any) -> bool:
    if node.op_type != "Transpose":
        return False
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return perm in (None, [1, 0])


def dedupe_weight_transposes(model: Any, layout: Callable[[str, np.ndarray], tuple[str, bool]] | None = None, min_elements: int = 4096) -> dict[str, Any]:
    """Rewrite `model` (onnx.ModelProto, weights loaded) in place; returns counts for the manifest.

    layout(name, W) → (stored name, store transposed?): lets the caller store a weight under the
    name and orientation the bundle's main graph uses (so the two sessions can share it).
    Default: keep name and orientation. Weights with any use other than MatMul's or Gemm's B
    (through chains of 2-D Transposes) are left alone.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    outputs = {o.name for o in g.output}
    replaced: dict[int, Any] = {}  # id(MatMul node) -> replacement node
    stats = {"weights": 0, "transposed": 0, "fused_matmuls": 0, "skipped": 0}
    for init in list(g.initializer):
        if len(init.dims) != 2 or init.dims[0] * init.dims[1] < min_elements or init.name in outputs:
            continue
        uses: list[tuple[Any, int]] = []  # (MatMul/Gemm reading it as B, orientation 0 = W / 1 = Wᵀ)
        ok, stack = True, [(init.name, 0)]
        while stack and ok:
            value, orient = stack.pop()
            if value in outputs:
                ok = False
            for node, k in consumers.get(value, []):
                if _is_transpose_2d(node):
                    stack.append((node.output[0], 1 - orient))
                elif node.op_type in ("MatMul", "Gemm") and k == 1:
                    uses.append((node, orient))
                else:
                    ok = False
        if not ok or not uses:
            stats["skipped"] += 1
            continue
        W = numpy_helper.to_array(init)
        new_name, transposed = layout(init.name, W) if layout else (init.name, False)
        stored = 1 if transposed else 0
        if transposed or new_name != init.name:
            data = np.ascontiguousarray(W.T) if transposed else W
            init.CopyFrom(numpy_helper.from_array(data, new_name))
        for node, orient in uses:
            if node.op_type == "Gemm":  # Gemm reads B through transB: fold the orientation into it
                attr = next((a for a in node.attribute if a.name == "transB"), None)
                flip = orient ^ stored ^ (attr.i if attr is not None else 0)
                if attr is None:
                    node.attribute.append(helper.make_attribute("transB", flip))
                else:
                    attr.i = flip
                node.input[1] = new_name
            elif orient == stored:
                node.input[1] = new_name
            else:
                fused = helper.make_node(
                    "FusedMatMul", [node.input[0], new_name], list(node.output), name=(node.name or "mm") + "_fused",
                    domain="com.microsoft", transA=0, transB=1, alpha=1.0,
                )
                replaced[id(node)] = fused
                stats["fused_matmuls"] += 1
        stats["weights"] += 1
        stats["transposed"] += int(transposed)
    if replaced:
        nodes = [replaced.get(id(n), n) for n in g.node]
        del g.node[:]
        g.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    stats["removed_nodes"] = _remove_dead_nodes(model)
    return stats


def _remove_dead_nodes(model: Any) -> int:
    """Drop nodes none of whose outputs are used (the orphaned weight Transposes)."""
    g = model.graph
    removed = 0
    while True:
        used = {o.name for o in g.output} | {name for n in g.node for name in n.input}
        keep = [n for n in g.node if any(o in used for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        removed += len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
    return removed


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


def bundle_source(path: Path, manifest: dict[str, Any]) -> Any:
    """The checkpoint the bundle was exported from, as recorded in its manifest."""
    from ortrefine.export.sources import Source

    fix = f"re-export the bundle from its checkpoint (`ortrefine export SOURCE {path}`), then run `ortrefine export-gradient {path}`"
    raw = manifest.get("source")
    if not isinstance(raw, dict) or not raw.get("kind") or not raw.get("location"):
        raise ExportError(f"{path} records no source checkpoint in its manifest, so there is nothing to differentiate; {fix}")
    try:
        return Source(**raw)
    except TypeError as e:
        raise ExportError(f"{path}: the manifest's source entry is not understood ({e}); {fix}") from None


def _check_same_model(path: Path, bundle_config: dict[str, Any], model: Any) -> None:
    """The loaded checkpoint must have the bundle's shape (a moved or replaced source fails here)."""
    cfg = model.config
    pairs = {
        "vocab_size": (bundle_config.get("vocab_size"), getattr(cfg, "vocab_size", None)),
        "hidden_size": (bundle_config.get("hidden_size", bundle_config.get("n_embd")), getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None))),
        "model_type": (bundle_config.get("model_type"), getattr(cfg, "model_type", None)),
    }
    bad = {k: v for k, v in pairs.items() if v[0] is not None and v[0] != v[1]}
    if bad:
        raise ExportError(
            f"the source checkpoint no longer matches {path} (bundle vs checkpoint: {bad}); re-export the bundle first"
        )


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


class MainGraphLayout:
    """layout() for dedupe_weight_transposes: store each weight under the name and orientation
    of the identical initializer in the bundle's main graph, when there is one (by content).

    `shared` collects the names so matched: the two sessions can then be handed one buffer
    per name (SessionOptions.add_initializer) instead of holding a copy each.
    """

    def __init__(self, model_file: Path, min_elements: int = 4096) -> None:
        import hashlib

        import onnx
        from onnx import TensorProto

        main = onnx.load(str(model_file), load_external_data=True)
        self.by_hash: dict[str, str] = {}
        for t in main.graph.initializer:
            if len(t.dims) == 2 and t.dims[0] * t.dims[1] >= min_elements and t.data_type == TensorProto.FLOAT and t.raw_data:
                self.by_hash.setdefault(hashlib.sha256(t.raw_data).hexdigest(), t.name)
        self.shared: set[str] = set()

    def __call__(self, name: str, W: np.ndarray) -> tuple[str, bool]:
        import hashlib

        if W.dtype != np.float32:
            return name, False
        for transposed, arr in ((True, W.T), (False, W)):
            found = self.by_hash.get(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
            if found and found not in self.shared:
                self.shared.add(found)
                return found, transposed
        return name, False


def _commit(bundle: Path, staged: Path, new_files: list[str], manifest: dict[str, Any], old_manifest: dict[str, Any]) -> dict[str, Any]:
    """Move the staged files into the bundle, then replace ortrefine.json in one rename.

    The manifest is written in the staging folder (with the bundle's other files hashed where
    they are) and renamed last: until that rename the bundle's
    manifest does not mention the new graph, so an interrupted commit leaves a usable bundle.
    When files are replaced (--overwrite), a manifest without the old graph goes in first, so
    no manifest ever lists a file with another file's size.
    """
    from ortrefine.bundle import describe_files, write_manifest
    from ortrefine.runtime.bundle import MANIFEST

    # only what the old manifest listed: a file the user dropped into the folder is not adopted
    listed = old_manifest.get("files", {})
    others = {k: v for k, v in describe_files(bundle).items() if k in listed and k not in new_files and not (staged / k).exists()}
    written = write_manifest(staged, manifest, other_files=others)
    if any(name in old_manifest.get("files", {}) for name in new_files):
        interim = {k: v for k, v in old_manifest.items() if k != "gradient"}
        interim["files"] = {k: v for k, v in old_manifest.get("files", {}).items() if k not in new_files}
        (staged / "interim.json").write_text(json.dumps(interim, indent=2, sort_keys=True) + "\n")
        os.replace(staged / "interim.json", bundle / MANIFEST)
    for name in new_files:
        os.replace(staged / name, bundle / name)
    os.replace(staged / MANIFEST, bundle / MANIFEST)
    return written


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
    from ortrefine.bundle.write import interrupts_deferred
    from ortrefine.export.sources import load_source, require_export_extra
    from ortrefine.runtime.bundle import open_bundle
    from ortrefine.runtime.gradient import build_feed, make_gradient_session

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    bundle = open_bundle(path)
    if "gradient" in bundle.manifest and not cfg.overwrite:
        raise ExportError(f"{path} already has a gradient graph; pass --overwrite to replace it")
    foreign = [n for n in (GRADIENT_DATA, GRADIENT_FILE, EMBEDDINGS_FILE)
               if os.path.lexists(path / n) and n not in bundle.manifest.get("files", {})]
    if foreign:  # a file the manifest does not list is not ours to replace
        raise ExportError(f"{path} holds {', '.join(foreign)}, which ortrefine did not write; move it away and rerun")
    src = bundle_source(path, bundle.manifest)
    require_export_extra()
    if importlib.util.find_spec("onnxscript") is None:
        from ortrefine.errors import MissingExtraError

        raise MissingExtraError("the gradient export needs onnxscript (torch's ONNX exporter uses it): pip install onnxscript")
    steps = _progress(cfg.progress, path.name)

    t = time.perf_counter()
    model, _tokenizer = load_source(src)
    _check_same_model(path, bundle.config, model)
    prepare_model(model)
    embeddings = np.ascontiguousarray(model.get_input_embeddings().weight.detach().float().numpy())  # (V, H)
    timings["load"] = time.perf_counter() - t
    steps.update()

    staged = claim.new_staging()
    try:
        t = time.perf_counter()
        gm, example = trace_gradient(model)
        timings["trace"] = time.perf_counter() - t
        steps.update()
        t = time.perf_counter()
        proto = export_onnx(gm, example, bundle.context_length)
        del gm
        timings["onnx_export"] = time.perf_counter() - t
        steps.update()
        t = time.perf_counter()
        layout = MainGraphLayout(bundle.model_file)
        surgery = dedupe_weight_transposes(proto, layout)
        index = save_with_external_data(proto, staged / GRADIENT_FILE, GRADIENT_DATA)
        shared = {name: index[name] for name in sorted(layout.shared) if name in index}
        surgery["shared_with_main_graph"] = len(shared)
        del layout
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        del proto
        np.save(staged / EMBEDDINGS_FILE, embeddings)
        timings["write"] = time.perf_counter() - t
        steps.update()

        t = time.perf_counter()
        try:  # the session options the runtime uses
            session, _ = make_gradient_session(staged / GRADIENT_FILE, "cpu")
        except BundleError as e:
            raise ValidationError(f"the exported gradient graph does not load ({e}); the bundle was left unchanged") from None
        cases = validation_cases(embeddings.shape[0], cfg.lengths, cfg.seed)
        feeds = [build_feed(embeddings, ids, start) for ids, start in cases]
        rtol = cfg.rtol if cfg.rtol is not None else src.validate_atol
        checks = check_against_torch(session, gradient_function(model), feeds, rtol)
        token_lps = [session.run(["token_logprobs"], f)[0][0] for f in feeds]
        del session, model
        lm_diff = _bundle_parity(path, cases, token_lps)
        if bundle.precision == "fp32" and not lm_diff <= max(10 * src.validate_atol, 1e-2):
            raise ValidationError(
                f"the gradient graph's log-probs differ from the bundle's by {lm_diff:.3g}: its source checkpoint "
                "is not the model the bundle holds; re-export the bundle first"
            )
        timings["validate"] = time.perf_counter() - t
        steps.update()

        worst = max(c["rel_error"]["grad_embeds"] for c in checks)
        new_files = [GRADIENT_DATA, GRADIENT_FILE, EMBEDDINGS_FILE]
        added = sum((staged / f).stat().st_size for f in new_files)
        manifest = dict(bundle.manifest)
        manifest["gradient"] = {
            "file": GRADIENT_FILE,
            "files": new_files,
            "embeddings": EMBEDDINGS_FILE,
            "opset": opset,
            "inputs": list(INPUT_NAMES),
            "outputs": list(OUTPUT_NAMES),
            "label_convention": "labels[t] = ids[t + 1]; loss_mask[t] weights that term",
            "precision": "fp32",
            "surgery": surgery,
            # weights identical (name, layout, bytes) to the main graph's: {name: offset/shape/dtype in gradient.onnx_data}
            "shared_initializers": shared,
            "validation": {
                "rtol": rtol,
                "max_rel_error_grad": worst,
                "bundle_logprob_max_abs_diff": lm_diff,
                "checks": checks,
            },
        }
        with interrupts_deferred():
            manifest = _commit(path, staged, new_files, manifest, bundle.manifest)
        steps.update()
    finally:
        steps.close()
        shutil.rmtree(staged, ignore_errors=True)
    timings["total"] = time.perf_counter() - t_start
    log.info("gradient graph added to %s: %s", path, {k: round(v, 1) for k, v in timings.items()})
    return GradientExportResult(path, manifest, checks, worst, added, timings["total"], timings)


def _progress(enabled: bool, name: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=6, desc=f"export-gradient {name}", disable=not enabled, leave=False)
