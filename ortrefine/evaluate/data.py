"""The evaluation's inputs: a JSONL prompt set and a systems file.

Prompt lines: {"id", "kind": continue|chat|keywords|reference, "prompt", "keywords": [...],
"references": [...]} ("reference": "..." is read as one reference). Systems: a JSON list (or
{"systems": [...], "baseline": NAME}), or TOML with [[systems]] tables; each is
{"name", "strategy": greedy|beam|sample|refine, ...options}. Every error names the line or the
system, so a long run never starts on a bad file.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from ortrefine.errors import ConfigError, UnknownNameError

KINDS = ("continue", "chat", "keywords", "reference")


@dataclass(frozen=True)
class EvalItem:
    """One prompt.

    kind: continue (plain continuation) | chat (an instruction, chat template) | keywords (use
        every keyword in one sentence; chat template) | reference (an instruction with
        reference answers; chat template).
    keywords: concepts the output must use (keyword coverage, list detection).
    references: human outputs (chrF).
    """

    id: str
    kind: str
    prompt: str
    keywords: tuple[str, ...] = ()
    references: tuple[str, ...] = ()

    @property
    def chat(self) -> bool:
        return self.kind != "continue"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, "prompt": self.prompt}
        if self.keywords:
            d["keywords"] = list(self.keywords)
        if self.references:
            d["references"] = list(self.references)
        return d


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: {name!r} must be a list of non-empty strings")
    return tuple(value)


def parse_item(d: Any, where: str, n: int) -> EvalItem:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: each line must be a JSON object with \"id\", \"kind\" and \"prompt\"")
    prompt = d.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: \"prompt\" must be non-empty text")
    kind = d.get("kind", "continue")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    keywords = _strings(d.get("keywords"), where, "keywords")
    refs = _strings(d.get("references"), where, "references") + _strings(d.get("reference"), where, "reference")
    if kind == "keywords" and not keywords:
        raise ConfigError(f"{where}: a keywords prompt needs \"keywords\": [...]")
    if kind == "reference" and not refs:
        raise ConfigError(f"{where}: a reference prompt needs \"references\": [...]")
    unknown = set(d) - {"id", "kind", "prompt", "keywords", "references", "reference", "source", "chat"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: id, kind, prompt, keywords, references")
    return EvalItem(str(d.get("id", n)), kind, prompt, keywords, refs)


def read_items(path: str | Path) -> list[EvalItem]:
    """The prompt set at `path` (JSONL, UTF-8); a bad line is an error naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"no prompts file at {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}); re-encode it as UTF-8") from None
    items, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not JSON ({e.msg})") from None
        item = parse_item(d, f"{path}:{n}", n)
        if item.id in seen:
            raise ConfigError(f"{path}:{n}: id {item.id!r} is used twice")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise ConfigError(f"{path} has no prompts")
    return items


# -- systems --------------------------------------------------------------------------------------
STRATEGIES = ("greedy", "beam", "sample", "refine", "reference")
_GENERATION_KEYS = {"max_new_tokens", "temperature", "top_k", "top_p", "seed", "num_beams", "length_penalty", "early_stopping", "stop", "examples"}


@dataclass(frozen=True)
class System:
    """One way of producing outputs.

    name: as it appears in the report (unique). strategy: greedy | beam | sample | refine |
        reference (no decoding: each prompt's first human reference, scored like any output, so
        the judge's verdict on a system can be set beside its verdict on what a person wrote).
    options: for greedy/beam/sample, GenerationConfig fields (num_beams, temperature, top_k,
        top_p, seed, ...), and "examples": true (or a count) to put the answered keyword turns
        (runtime/examples.py) before a keyword chat prompt, as refine does by default, so that
        what the examples do alone can be told from what the search does; for refine,
        RefineConfig fields (objectives, top_k, sweeps, mode, budget_seconds, examples, ...) plus
        "initial_strategy": a strategy name or a table of GenerationConfig fields for Y⁰.
    """

    name: str
    strategy: str
    options: dict[str, Any] = field(default_factory=dict)

    def generation_config(self, max_new_tokens: int):
        from ortrefine.runtime.decoding import GenerationConfig

        opts = {"max_new_tokens": max_new_tokens, **self.options}
        opts.pop("examples", None)  # a prompt setting, applied by example_turns
        if self.strategy in ("greedy", "sample", "beam"):
            opts["strategy"] = self.strategy
        return GenerationConfig(**opts)

    def example_turns(self, item: EvalItem) -> tuple[tuple[str, str], ...]:
        """The answered turns a generation system puts before this item's prompt (none unless
        the system asks for them and the item is a keyword chat prompt)."""
        from ortrefine.runtime.examples import select_examples

        return select_examples(self.options.get("examples", False)) if item.keywords and item.chat else ()

    def refine_config(self, max_new_tokens: int, item: EvalItem | None = None):
        from ortrefine.runtime.decoding import GenerationConfig
        from ortrefine.runtime.refine import RefineConfig

        opts = dict(self.options)
        init = opts.pop("initial_strategy", None)
        if isinstance(init, str):
            init = GenerationConfig(strategy=init, max_new_tokens=opts.get("max_new_tokens", max_new_tokens))
        elif isinstance(init, dict):
            init = GenerationConfig(**{"max_new_tokens": opts.get("max_new_tokens", max_new_tokens), **init})
        if "edits" in opts and isinstance(opts["edits"], list):
            opts["edits"] = tuple(opts["edits"])
        opts.setdefault("max_new_tokens", max_new_tokens)
        if item is not None:
            opts["chat"] = item.chat
            if item.keywords:
                opts["keywords"] = item.keywords
            else:  # a system's guide and examples settings are for its keyword prompts
                opts.pop("guide", None)
                opts.pop("examples", None)
            if not item.chat:
                opts.pop("examples", None)  # they are chat turns
            # references are what chrF judges against: J sees one only where the task is to match it
            if item.kind == "reference" and item.references and "reference" not in opts:
                opts["reference"] = item.references[0]
        return RefineConfig(initial_strategy=init, **opts)

    def objectives(self) -> list[str]:
        from ortrefine.runtime.refine import DEFAULT_OBJECTIVES

        # the names a judge's independence is checked against (a keyword item's default J names no bundle either)
        return [str(o) for o in self.options.get("objectives", DEFAULT_OBJECTIVES)] if self.strategy == "refine" else []

    def check(self, max_new_tokens: int = 32) -> None:
        """Build the config once so that a bad option stops the run before any decoding."""
        try:
            if self.strategy == "refine":
                # a keyword item, so that settings only keyword prompts use (the guide's) are checked too
                self.refine_config(max_new_tokens, EvalItem("check", "keywords", "check", keywords=("check",)))
                from ortrefine.runtime.objectives import ObjectiveSpec

                for o in self.objectives():
                    ObjectiveSpec.parse(o)
            elif self.strategy != "reference":
                self.generation_config(max_new_tokens)
        except TypeError as e:  # an unknown keyword reaches the dataclass
            raise ConfigError(f"system {self.name!r}: {e}") from None
        except (ConfigError, UnknownNameError) as e:  # both are mistakes in the systems file: usage errors
            raise ConfigError(f"system {self.name!r}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strategy": self.strategy, **self.options}


# The baselines, the default refine, and log P alone (what refine did before repetition joined the default).
DEFAULT_SYSTEMS = (
    System("greedy", "greedy"),
    System("beam-4", "beam", {"num_beams": 4}),
    System("refine", "refine"),
    System("refine-logprob", "refine", {"objectives": ["logprob"]}),
)


def _refine_keys() -> set[str]:
    from ortrefine.runtime.refine import RefineConfig

    return {f.name for f in fields(RefineConfig)} - {"chat", "system", "keywords", "initial", "relax"}


def parse_system(d: Any, where: str) -> System:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: each system must be a table/object with \"name\" and \"strategy\"")
    name, strategy = d.get("name"), d.get("strategy")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: a system needs a \"name\"")
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}: system {name!r}: strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    options = {k: v for k, v in d.items() if k not in ("name", "strategy")}
    allowed = _refine_keys() if strategy == "refine" else set() if strategy == "reference" else _GENERATION_KEYS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"{where}: system {name!r} ({strategy}): unknown option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(allowed)) or 'none'}")
    if strategy == "greedy" and options.keys() - {"max_new_tokens", "stop", "examples"}:
        raise ConfigError(f"{where}: system {name!r}: greedy takes only max_new_tokens, stop and examples")
    if strategy != "refine" and "examples" in options:
        from ortrefine.runtime.examples import select_examples

        try:
            select_examples(options["examples"])
        except ConfigError as e:
            raise ConfigError(f"{where}: system {name!r}: {e}") from None
    if "objectives" in options:
        obj = options["objectives"]
        if isinstance(obj, str):
            options["objectives"] = [obj]
        elif not isinstance(obj, list) or not obj or not all(isinstance(o, str) for o in obj):
            raise ConfigError(f"{where}: system {name!r}: objectives must be a list of strings such as \"repetition=1.0\"")
    system = System(name.strip(), strategy, options)
    system.check()
    return system


def read_systems(path: str | Path) -> tuple[list[System], str | None]:
    """Systems and the baseline's name (None: the first system) from a JSON or TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no systems file at {path}") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    baseline = None
    if isinstance(data, dict):
        baseline = data.get("baseline")
        data = data.get("systems")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a list of systems (JSON list, {{\"systems\": [...]}}, or TOML [[systems]])")
    systems = [parse_system(d, f"{path}: system {i + 1}") for i, d in enumerate(data)]
    check_systems(systems, baseline, str(path))
    return systems, baseline


def check_systems(systems: Sequence[System], baseline: str | None, where: str = "systems") -> None:
    names = [s.name for s in systems]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: system name(s) used twice: {', '.join(dup)}")
    if baseline is not None and baseline not in names:
        raise ConfigError(f"{where}: baseline {baseline!r} is not a system; systems: {', '.join(names)}")
