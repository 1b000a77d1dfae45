"""The teacher, found through the bundle it was exported to, and the student cut from it.

The student starts as a copy of chosen teacher layers (DistilBERT / DistilGPT2 initialisation)
rather than random weights: on a small training budget that start is most of the quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ortrefine.errors import BundleError, ConfigError, ExportError

SOURCE_KINDS = ("tiny", "gguf", "local", "hub")


def default_layers(n_layers: int) -> list[int]:
    """Every third layer from 0, the last layer as the final pick (30 → 0,3,…,24,29)."""
    picks = list(range(0, n_layers, 3))
    if picks[-1] != n_layers - 1:
        if len(picks) > 1:
            picks[-1] = n_layers - 1
        else:
            picks.append(n_layers - 1)
    return picks


def teacher_layer_count(config: dict[str, Any]) -> int:
    """Read from the bundle's config, so layer choices are checked before torch loads anything."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise BundleError("the bundle's config.json names no layer count (num_hidden_layers / n_layer); re-export it")


def teacher_source(bundle: Any) -> Any:
    """The bundle's source checkpoint as a `Source`, or BundleError saying how to get one."""
    from ortrefine.export.sources import Source

    fix = "re-export the teacher with `ortrefine export <checkpoint>` so its manifest records a source checkpoint"
    described = bundle.manifest.get("source")
    if not isinstance(described, dict) or not described.get("kind") or not described.get("location"):
        raise BundleError(f"{bundle.path}: the manifest records no source checkpoint to load the teacher from; {fix}")
    try:
        src = Source(**described)
    except TypeError as e:
        raise BundleError(f"{bundle.path}: the manifest's source {described} is not understood ({e}); {fix}") from None
    if src.kind not in SOURCE_KINDS:
        raise BundleError(f"{bundle.path}: unknown source kind {src.kind!r} in the manifest; {fix}")
    if src.kind in ("gguf", "local") and not Path(src.location).exists():
        raise BundleError(f"{bundle.path}: its source checkpoint {src.location} no longer exists; restore it or {fix}")
    return src


def load_teacher(source: Any, bundle: Any) -> tuple[Any, Any]:
    """(teacher, tokenizer), frozen; a source whose depth no longer matches the bundle's would
    distil some other model than the one the bundle holds, so it is refused."""
    from ortrefine.export.sources import load_source

    teacher, tokenizer = load_source(source)
    teacher.eval().requires_grad_(False)
    if teacher.config.num_hidden_layers != teacher_layer_count(bundle.config):
        raise BundleError(f"{bundle.path}: its source checkpoint has {teacher.config.num_hidden_layers} layers, "
                          f"the bundle {teacher_layer_count(bundle.config)}; re-export the teacher")
    return teacher, tokenizer


def _layer_list(model: Any) -> tuple[str, Any]:
    """(dotted name, ModuleList) of the decoder blocks: the ModuleList as long as the layer count."""
    import torch

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name.split(".")[-1] in ("layers", "h", "blocks", "layer"):
            return name, module
    raise ExportError(f"cannot find the decoder layers of {type(model).__name__}; distillation supports llama- and gpt2-style models")


def build_student(teacher: Any, layers: Sequence[int]) -> Any:
    """Teacher config with len(layers) layers; every weight copied from the teacher.

    Student layer j is teacher layer layers[j]; embeddings, position embeddings, final norm and
    lm_head are the teacher's. Per-layer config lists (e.g. `layer_types`) are subset alike.
    """
    import copy

    from transformers import AutoModelForCausalLM

    n = teacher.config.num_hidden_layers
    if any(not 0 <= i < n for i in layers):
        raise ConfigError(f"layer indices must be in 0..{n - 1} (the teacher has {n} layers); got {list(layers)}")
    config = copy.deepcopy(teacher.config)
    for key, value in list(config.to_dict().items()):
        if isinstance(value, list) and len(value) == n and key not in ("architectures",):
            setattr(config, key, [value[i] for i in layers])
    config.num_hidden_layers = len(layers)  # gpt2 maps it to n_layer
    student = AutoModelForCausalLM.from_config(config, attn_implementation=teacher.config._attn_implementation)
    prefix, _ = _layer_list(teacher)
    teacher_sd = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        source_key = key
        if key.startswith(prefix + "."):
            j, rest = key[len(prefix) + 1 :].split(".", 1)
            source_key = f"{prefix}.{layers[int(j)]}.{rest}"
        state[key] = teacher_sd[source_key].detach().clone()
    student.load_state_dict(state, strict=True)
    student.tie_weights()
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def count_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
