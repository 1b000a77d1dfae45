"""The decoder families the fused graph knows, as data for the one builder in decoder_graph.py.

Families differ in a handful of places (norm gain, embedding scale, where the norms sit, q/k norms,
the MLP activation, sliding-window layers with their own rotary table); everything else — packed
projections, GroupQueryAttention with the rotary inside, the padding mask as attention bias, the tied
head read once, ``logits_to_keep`` — is the same graph. Keeping the differences here as fields and
small hooks means a new family is an entry, not a copy of the builder. What a family cannot express
is refused with ExportError (export with ``--graph optimum``) instead of being written wrong.

The attention scale and the final logit soft-cap are read from the torch module and config
themselves (``self_attn.scaling``, ``final_logit_softcapping``), so they need no field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ortrefine.errors import ExportError


def _never_local(config: Any, layer: int) -> bool:
    return False


def _no_check(config: Any) -> None:
    return None


@dataclass(frozen=True)
class Family:
    """How one family's decoder layer departs from llama's.

    name: the family in the manifest and the graph's name. model_types: transformers' model_type
    values it covers. activation: (config attribute, the value the graph writes) of the MLP.
    norm_offset: RMSNorm multiplies by ``norm_offset + weight`` (Gemma stores the gain around 0).
    scaled_embedding: the embedding module multiplies by its ``embed_scale`` buffer.
    pre_mlp_norm: the layer's norm before the MLP (llama calls it post_attention_layernorm).
    post_attention_norm / post_mlp_norm: norms of the attention / MLP output before the residual
    add (Gemma's sandwich), or None. qk_norm: RMSNorm over head_dim of q and k before the rotary.
    is_local: (config, layer index) → a sliding-window layer, attending to ``config.sliding_window``
    keys. local_rotary: the text model's rotary module for local layers, or None for the global one.
    attn_softcap: the family's transformers attention applies ``config.attn_logit_softcapping``
    (Gemma-2 does; transformers' Gemma-3 attention never passes it on, so the graph must not either).
    check: raises ExportError for config options the graph does not express.
    """

    name: str
    model_types: tuple[str, ...]
    activation: tuple[str, str] = ("hidden_act", "silu")
    norm_offset: float = 0.0
    scaled_embedding: bool = False
    pre_mlp_norm: str = "post_attention_layernorm"
    post_attention_norm: str | None = None
    post_mlp_norm: str | None = None
    qk_norm: bool = False
    is_local: Callable[[Any, int], bool] = field(default=_never_local)
    local_rotary: str | None = None
    attn_softcap: bool = False
    check: Callable[[Any], None] = field(default=_no_check)


def _gemma3_local(config: Any, layer: int) -> bool:
    return config.layer_types[layer] == "sliding_attention"


def _gemma3_check(config: Any) -> None:
    """The options of Gemma3TextConfig the graph writes as fixed choices."""
    if getattr(config, "use_bidirectional_attention", False):
        raise ExportError("the fused gemma3 graph is causal; this config asks for bidirectional attention (export with --graph optimum)")
    rope = (config.rope_scaling or {}).get("rope_type", (config.rope_scaling or {}).get("type", "default"))
    if rope not in ("default", "linear"):
        # the cos/sin tables are computed once; dynamic kinds change them with the sequence length
        raise ExportError(f"the fused gemma3 graph supports default or linear rope scaling, not {rope!r}; export with --graph optimum")


LLAMA = Family(name="llama", model_types=("llama",))

GEMMA3 = Family(
    name="gemma3",
    model_types=("gemma3_text",),
    activation=("hidden_activation", "gelu_pytorch_tanh"),
    norm_offset=1.0,
    scaled_embedding=True,
    pre_mlp_norm="pre_feedforward_layernorm",
    post_attention_norm="post_attention_layernorm",
    post_mlp_norm="post_feedforward_layernorm",
    qk_norm=True,
    is_local=_gemma3_local,
    local_rotary="rotary_emb_local",
    check=_gemma3_check,
)

FAMILIES = (LLAMA, GEMMA3)
SUPPORTED = tuple(t for f in FAMILIES for t in f.model_types)


def family_of(config: Any) -> Family:
    """The family of a transformers config, after its own checks; ExportError when there is none."""
    family = next((f for f in FAMILIES if config.model_type in f.model_types), None)
    if family is None:
        # the first family leads the sentence: existing callers match "supports llama models, not …"
        raise ExportError(f"the fused graph supports {SUPPORTED[0]} models, not {config.model_type!r} "
                          f"(fused model types: {', '.join(SUPPORTED)}); export with --graph optimum")
    key, wanted = family.activation
    got = getattr(config, key, wanted)
    if got != wanted:
        raise ExportError(f"the fused graph supports the {wanted} MLP only, not {got!r}; export with --graph optimum")
    family.check(config)
    return family
