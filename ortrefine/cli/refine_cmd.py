"""`ortrefine refine`: decode Y⁰, improve it by coordinate descent, show before/after."""

from __future__ import annotations

import difflib
import json
from typing import Any

import click

from ortrefine.cli.common import FiniteFloat, LibraryChoice, Text, domain_errors, load_lm, model_options, only_with, strategies


def _modes() -> tuple[str, ...]:
    from ortrefine.runtime.refine import MODES

    return MODES


def _orders() -> list[str]:
    from ortrefine.runtime.refine import ORDERS

    return ORDERS.names()


def _proposals() -> tuple[str, ...]:
    from ortrefine.runtime.refine import PROPOSALS

    return PROPOSALS


def _optimizers() -> tuple[str, ...]:
    from ortrefine.runtime.refine import OPTIMIZERS

    return OPTIMIZERS


def _relax_methods() -> tuple[str, ...]:
    from ortrefine.runtime.relax import METHODS

    return METHODS


def _top_k(value: str) -> int | None:
    if value.lower() == "all":
        return None
    try:
        k = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a whole number or 'all'") from None
    if k < 1:
        raise click.BadParameter("must be >= 1 or 'all'")
    return k


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def highlight(tokens_a: list[str], ids_a: list[int], tokens_b: list[str], ids_b: list[int]) -> tuple[str, str]:
    """Y⁰ with removed tokens in red, Y* with new tokens in green (by token-level diff)."""
    a, b = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ids_a, b=ids_b, autojunk=False).get_opcodes():
        if op == "equal":
            a.append("".join(tokens_a[i1:i2]))
            b.append("".join(tokens_b[j1:j2]))
        else:
            a.append(click.style("".join(tokens_a[i1:i2]), fg="red", bold=True))
            b.append(click.style("".join(tokens_b[j1:j2]), fg="green", bold=True))
    return "".join(a), "".join(b)


def render(result: Any, tokenizer: Any) -> str:
    ini, fin = result.initial, result.final
    show = lambda ids: [t for t in tokenizer.token_strings(ids)]  # noqa: E731
    a, b = highlight(show(ini.ids), ini.ids, show(fin.ids), fin.ids)
    lines = [f"Y⁰: {a}", f"Y*: {b}", "", f"{'term':<14}{'before':>12}{'after':>12}{'gain':>10}"]
    for key in result.objective_before:
        x, y = result.objective_before[key], result.objective_after[key]
        lines.append(f"{key:<14}{x:>12.3f}{y:>12.3f}{y - x:>+10.3f}")
    lines.append("")
    for e in result.edits:
        lines.append(f"edit: sweep {e.sweep} pos {e.position} {e.kind} {e.old_token!r} → {e.new_token!r}  ΔJ {e.delta:+.3f}")
    c = result.cost
    lines.append(
        f"sweeps {result.sweeps} ({result.stop_reason}), edits {len(result.edits)}, forward tokens {c.forward_tokens} "
        f"(+{c.initial_forward_tokens} initial), candidates {c.candidates} (pruned {c.pruned}, "
        f"{c.tokens_skipped} tokens skipped), {c.seconds:.2f}s"
    )
    if c.screened_out:
        lines.append(f"note: approximate (--screen): {c.screened_out} candidate(s) dropped on their first tokens' estimate")
    if c.end_repairs:
        ended = any(e.kind == "end" for e in result.edits)
        clean = result.objective_after.get("guard", -1.0) == 0
        lines.append("note: the sweeps left Y* degenerate by the guard's checks; " + (
            "it was ended at a sentence end (--no-end-repair keeps it as the sweeps left it)" if ended and clean else
            "it was ended at the sentence end J preferred, and is still degenerate" if ended else
            "no ending at one of its sentence ends raised J"))
    if c.rescore_rejected:
        lines.append(f"note: {c.rescore_rejected} winning candidate(s) lost on a full rescoring (batched and full passes "
                     "differ on this bundle) and were not accepted")
    retok = result.final_retokenized
    if not retok.get("same_ids", True):
        j = (retok.get("objective") or {}).get("total")
        lines.append("note: Y*'s text re-tokenizes differently; " + (f"J recomputed on it: {j:.3f}" if j is not None else
                     "J could not be recomputed on it (it re-tokenizes to no tokens, or past the context)"))
    return "\n".join(lines)


def _refine_default(name: str) -> Any:
    """A RefineConfig field's default, so the CLI never restates the library's choice."""
    import dataclasses

    from ortrefine.runtime.refine import RefineConfig

    return next(f.default for f in dataclasses.fields(RefineConfig) if f.name == name)


def _default_objectives() -> tuple[str, ...]:
    from ortrefine.runtime.refine import DEFAULT_OBJECTIVES

    return DEFAULT_OBJECTIVES


def _keyword_objectives() -> tuple[str, ...]:
    from ortrefine.runtime.refine import KEYWORD_OBJECTIVES

    return KEYWORD_OBJECTIVES


@click.command()
@click.argument("prompt", type=Text(stdin=True))
@model_options
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--system", default=None, type=Text(), help="System message for --chat.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--objective", "objectives", multiple=True, type=Text(),
              help="Term NAME[=WEIGHT][:key=value,...], repeatable (logprob, mean-logprob, length, repetition, echo, guard, meta, finish, coverage, reference, reward, contrastive, judge) "
                   "[default: " + " ".join(_default_objectives()) + "; with --keywords: " + " ".join(_keyword_objectives()) + "].")
@click.option("--keywords", default=None, type=Text(), help="Comma-separated words the output must use: switches on the keyword J (coverage, finish) and the keyword guide.")
@click.option("--reference", default=None, type=Text(), help="Reference text (adds the reference term).")
@click.option("--mode", type=LibraryChoice(_modes), default="regenerate", show_default=True)
@click.option("--top-k", default="3", show_default=True, callback=lambda ctx, param, value: _top_k(value), help="Proposals per position, or 'all' for the whole vocabulary.")
@click.option("--min-prob", type=FiniteFloat(0, 1, max_open=True), default=0.0, show_default=True)
@click.option("--edits", default="substitute", show_default=True, type=Text(),
              help="Comma-separated: substitute,insert,delete (insert and delete need --mode keep).")
@click.option("--order", type=LibraryChoice(_orders), default="l2r", show_default=True)
@click.option("--proposal", type=LibraryChoice(_proposals), default="topk", show_default=True,
              help="Candidates from the model's own distribution, HotFlip gradient scores (needs `ortrefine export-gradient`), or both.")
@click.option("--optimizer", type=LibraryChoice(_optimizers), default="coordinate", show_default=True,
              help="gradient: ascent on a softmax relaxation of Y, projected and verified exactly (needs export-gradient).")
@click.option("--relax-steps", type=click.IntRange(min=1), default=8, show_default=True, help="--optimizer gradient only.")
@click.option("--relax-lr", type=FiniteFloat(0, min_open=True), default=1.0, show_default=True, help="--optimizer gradient only.")
@click.option("--relax-method", type=LibraryChoice(_relax_methods), default="adam", show_default=True, help="--optimizer gradient only.")
@click.option("--sweeps", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--positions-per-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Positions whose candidates are scored in one batch; the best edit among them is accepted.")
@click.option("--draft", type=click.IntRange(min=0), default=0, show_default=True,
              help="--mode regenerate only: tokens drafted from the incumbent and verified per pass (exact).")
@click.option("--screen", type=click.IntRange(min=0), default=lambda: _refine_default("screen"), show_default="2, the library's default",
              help="Approximate, faster: after the edit and N more tokens, finish only the --screen-keep most promising candidates per batch (0: exact).")
@click.option("--screen-keep", type=click.IntRange(min=1), default=4, show_default=True, help="With --screen only.")
@click.option("--tol", type=FiniteFloat(0), default=1e-6, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="For --order random and --initial-strategy sample.")
@click.option("--budget-seconds", type=FiniteFloat(), default=None, help="Stop once this much wall time is spent (seconds > 0).")
@click.option("--budget-tokens", type=click.IntRange(min=1), default=None, help="Stop once this many tokens were scored.")
@click.option("--no-guide", is_flag=True, help="With --keywords: decode Y⁰ and every regenerated suffix without steering them toward the missing keywords.")
@click.option("--no-examples", is_flag=True,
              help="With --keywords and --chat: leave out the two answered example turns of the keyword task put before the prompt.")
@click.option("--no-end-repair", is_flag=True,
              help="Leave Y* as the sweeps left it where the guard term still calls it degenerate (by default it may be ended at one of its sentence ends).")
@click.option("--no-prune", is_flag=True, help="Score every candidate to the end (for measuring what pruning saves).")
@click.option("--initial", default=None, type=Text(), help="Refine this text instead of decoding Y⁰.")
@click.option("--initial-strategy", type=LibraryChoice(strategies), default="greedy", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole trace as JSON.")
@click.pass_context
@domain_errors
def refine(ctx: click.Context, prompt: str, model: str, provider: str, threads: int | None, as_json: bool, top_k: int | None,
           keywords: str | None, edits: str, initial_strategy: str, no_prune: bool, no_guide: bool, no_examples: bool, no_end_repair: bool, relax_steps: int, relax_lr: float,
           relax_method: str, **kw: Any) -> None:
    """Decode PROMPT's output, then improve it against the objective (PROMPT `-`: read it from standard input)."""
    from ortrefine.runtime.decoding import GenerationConfig
    from ortrefine.runtime.refine import RefineConfig, refine as run
    from ortrefine.runtime.relax import RelaxConfig

    check_refine_options(ctx, kw, keywords, edits)
    objectives = list(kw.pop("objectives")) or None  # None: the library's default for the task
    cfg = RefineConfig(
        objectives=objectives, keywords=_csv(keywords), top_k=top_k, edits=_csv(edits),
        initial_strategy=GenerationConfig(strategy=initial_strategy, max_new_tokens=kw["max_new_tokens"]),
        prune=not no_prune, end_repair=not no_end_repair, guide=False if no_guide else None,
        examples=False if no_examples else None, relax=RelaxConfig(steps=relax_steps, lr=relax_lr, method=relax_method), **kw,
    )
    if no_end_repair and not _has_guard(cfg.objectives):
        raise click.UsageError("--no-end-repair only applies when J has a guard term (the default J without --keywords, "
                               "or --objective guard=W); drop it")
    lm = load_lm(model, provider, threads)
    if cfg.top_k is None:
        v, n = lm.vocab_size, cfg.max_new_tokens
        click.echo(f"--top-k all: up to {v} candidates at each of {n} positions, about {v * n * (n + 1) // 2:,} "
                   "suffix tokens per sweep before pruning", err=True)
    result = run(lm, prompt, cfg)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "provider": lm.provider, "model": str(lm.bundle.path)}))
    else:
        click.echo(render(result, lm.tokenizer))


def _has_guard(objectives: list[Any]) -> bool:
    """Whether J has a guard of positive weight. J is checked first (check_specs), so a malformed
    term is reported for itself rather than as a reason to drop --no-end-repair."""
    from ortrefine.runtime.objectives import check_specs, has_guard

    return has_guard(check_specs(objectives))


def check_refine_options(ctx: click.Context, kw: dict[str, Any], keywords: str | None, edits: str) -> None:
    """Refuse options that this combination would silently ignore (each message names the fix)."""
    from ortrefine.runtime.objectives import ObjectiveSpec

    for o in kw["objectives"]:
        ObjectiveSpec.parse(o)
    only_with(ctx, ("system",), "--chat", kw["chat"])
    only_with(ctx, ("relax_steps", "relax_lr", "relax_method"), "--optimizer gradient", kw["optimizer"] == "gradient")
    only_with(ctx, ("screen_keep",), "--screen N (N > 0)", kw["screen"] > 0)
    only_with(ctx, ("draft",), "--mode regenerate", kw["mode"] == "regenerate")
    only_with(ctx, ("no_guide",), "--keywords in --mode regenerate (the guide is on only there)",
              keywords is not None and kw["mode"] == "regenerate")
    only_with(ctx, ("no_examples",), "--keywords and --chat (the examples are keyword chat turns)", keywords is not None and kw["chat"])
    only_with(ctx, ("initial_strategy",), "no --initial (it decodes Y⁰; --initial gives it)", kw["initial"] is None)
    if keywords is not None and not _csv(keywords):
        raise click.BadParameter("names no keyword; give comma-separated words, e.g. --keywords dog,frisbee,park",
                                 ctx, param_named(ctx, "keywords"))
    kinds = {e.lower() for e in _csv(edits)}
    if kw["mode"] == "regenerate" and kinds & {"insert", "delete"}:
        raise click.UsageError("--edits insert/delete only apply with --mode keep (regenerate re-decodes the suffix after "
                               "every substitution); add --mode keep, or use --edits substitute")


def param_named(ctx: click.Context, name: str) -> click.Parameter | None:
    return next((p for p in ctx.command.params if p.name == name), None)


commands = [refine]
