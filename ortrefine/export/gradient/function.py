"""The torch computation the gradient graph is traced from.

It is a plain function rather than a module's forward so that `make_fx` can trace the backward
pass that `torch.autograd.grad` runs into ordinary ops; the model is first put in the one mode
where that backward has an ONNX mapping.
"""

from __future__ import annotations

from typing import Any, Callable


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

