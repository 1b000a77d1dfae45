"""What a batch job does to each record, from options, a config file, or both."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortrefine.errors import ConfigError
from ortrefine.runtime.decoding import EARLY_STOPPING, GenerationConfig
from ortrefine.runtime.refine import RefineConfig

TASKS = ("generate", "refine")
COMMON_KEYS = {"task", "model", "provider", "threads", "pin_threads", "hugepages", "chat", "system", "max_new_tokens", "seed", "top_k",
               "batch_size"}
GENERATE_KEYS = {"strategy", "temperature", "top_p", "num_beams", "length_penalty", "early_stopping", "stop"}
SAMPLING_KEYS = {"temperature", "top_p", "top_k", "seed"}
BEAM_KEYS = {"num_beams", "length_penalty", "early_stopping"}
REFINE_KEYS = {"objectives", "keywords", "reference", "mode", "sweeps", "positions_per_batch", "order", "edits", "budget_seconds",
               "budget_tokens", "initial_strategy", "tol", "min_prob", "screen", "screen_keep", "draft", "prune", "proposal",
               "optimizer", "end_repair", "examples"}
ALIASES = {"objective": "objectives", "max_tokens": "max_new_tokens"}
# fields a record may set for itself (the rest of the settings are the job's)
RECORD_FIELDS = {"id", "prompt", "system", "initial", "keywords", "reference"}
# fields of `ortrefine eval`'s prompt sets (data/*.jsonl), accepted so the same file feeds both; not used here
EVAL_FIELDS = {"kind", "references"}


@dataclass
class BatchConfig:
    """A batch job's settings.

    task: generate (each record's prompt is decoded with `generation`) or refine (decoded, then
        refined with `refine`).
    model / provider / threads / pin_threads / hugepages: the bundle and how it is loaded (as
        `ortrefine.load`), once per process (per Ray actor).
    chat / system: wrap each prompt in the chat template (a record's own "system" wins).
    generation: decoding settings of the generate task.
    refine: refinement settings of the refine task (its chat/system come from the fields above).
    batch_size: generate task, greedy or sampling: records decoded together in shared passes
        (continuous batching; the outputs are the same as one at a time). 1: one at a time.
        Beam search and refine always go one record at a time. Under Ray, also the records per
        `map_batches` batch.
    """

    task: str = "generate"
    model: str = "smollm2-135m"
    provider: str = "auto"
    threads: int | None = None
    pin_threads: bool = False
    hugepages: bool = False
    chat: bool = False
    system: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    refine: RefineConfig | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch-size must be >= 1, got {self.batch_size}")
        if self.task == "refine" and self.refine is None:
            self.refine = RefineConfig(chat=self.chat, system=self.system)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> "BatchConfig":
        """Settings named as the command's options (underscores or dashes; `objective` or
        `objectives`), e.g. {"task": "refine", "objectives": ["logprob", "repetition=1"]}.
        Options of the other task, or of another decoding strategy, are refused: they would be
        silently ignored."""
        opts = {ALIASES.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in options.items() if v is not None}
        unknown = sorted(set(opts) - COMMON_KEYS - GENERATE_KEYS - REFINE_KEYS)
        if unknown:
            known = ", ".join(sorted(COMMON_KEYS | GENERATE_KEYS | REFINE_KEYS))
            raise ConfigError(f"unknown batch setting(s) {', '.join(unknown)}; known: {known}")
        task = opts.get("task", "generate")
        other = GENERATE_KEYS if task == "refine" else REFINE_KEYS
        wrong = sorted(set(opts) & other)
        if wrong:
            raise ConfigError(f"{_flag(wrong[0])} does not apply to --task {task}; drop it or change the task")
        max_new = _int(opts.get("max_new_tokens", 32), "max-new-tokens")
        common = {k: opts[k] for k in ("model", "provider", "threads", "pin_threads", "hugepages", "chat", "system") if k in opts}
        batch_size = _int(opts.get("batch_size", 8), "batch-size")
        if task == "generate":
            return cls(task=task, generation=_generation(opts, max_new), batch_size=batch_size, **common)
        return cls(task=task, refine=_refine(opts, max_new), batch_size=batch_size, **common)

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "BatchConfig":
        """A TOML or JSON file of the same settings; `overrides` (the command line) win."""
        return cls.from_dict({**read_config_file(path), **(overrides or {})})


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be an object of settings, e.g. {{\"task\": \"refine\"}}")
    return data


# settings whose command-line flag is the negation of the key (the key is what a config file names)
_NEGATED_FLAGS = {"prune": "--no-prune", "end_repair": "--no-end-repair"}


def _flag(key: str) -> str:
    """The option a user typed for a setting: `--no-prune` for prune, so an error names a real flag."""
    flag = _NEGATED_FLAGS.get(key)
    return f"{flag} ({key})" if flag else f"--{key.replace('_', '-')}"


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return value


def _strs(value: Any, name: str, csv: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip()) if csv else (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{name} must be a string or a list of strings, got {value!r}")


def _generation(opts: dict[str, Any], max_new: int) -> GenerationConfig:
    strategy = str(opts.get("strategy", "greedy")).lower()
    for keys, needs in ((SAMPLING_KEYS, "sample"), (BEAM_KEYS, "beam")):
        stray = sorted(k for k in keys & set(opts) if strategy != needs)
        if stray:
            raise ConfigError(f"--{stray[0].replace('_', '-')} only applies with --strategy {needs}; add that, or drop it")
    top_k = opts.get("top_k", 0)
    if isinstance(top_k, str):
        if not top_k.strip().isdigit():
            raise ConfigError(f"top-k must be a whole number >= 0 for --task generate, got {top_k!r}")
        top_k = int(top_k)
    es = opts.get("early_stopping", False)
    if isinstance(es, str):
        if es.lower() not in EARLY_STOPPING:
            raise ConfigError(f"early-stopping must be one of {', '.join(EARLY_STOPPING)}, got {es!r}")
        es = EARLY_STOPPING[es.lower()]
    return GenerationConfig(strategy=strategy, max_new_tokens=max_new, temperature=opts.get("temperature", 1.0),
                            top_k=top_k, top_p=opts.get("top_p", 1.0), seed=opts.get("seed"),
                            num_beams=opts.get("num_beams", 4), length_penalty=opts.get("length_penalty", 1.0),
                            early_stopping=es, stop=_strs(opts.get("stop", ()), "stop"))


def _refine(opts: dict[str, Any], max_new: int) -> RefineConfig:
    kw: dict[str, Any] = {k: opts[k] for k in REFINE_KEYS & set(opts) if k not in ("objectives", "keywords", "edits", "initial_strategy")}
    if "objectives" in opts:
        kw["objectives"] = list(_strs(opts["objectives"], "objectives"))
    if "keywords" in opts:
        kw["keywords"] = _strs(opts["keywords"], "keywords", csv=True)
    if "edits" in opts:
        kw["edits"] = _strs(opts["edits"], "edits", csv=True)
    top_k = opts.get("top_k", 3)
    if isinstance(top_k, str):
        if top_k.lower() != "all" and not top_k.isdigit():
            raise ConfigError(f"top-k must be a whole number or 'all', got {top_k!r}")
        top_k = None if top_k.lower() == "all" else int(top_k)
    kw["top_k"] = top_k
    if "seed" in opts:
        kw["seed"] = opts["seed"]
    strategy = opts.get("initial_strategy", "greedy")
    kw["initial_strategy"] = GenerationConfig(strategy=strategy, max_new_tokens=max_new)
    return RefineConfig(max_new_tokens=max_new, chat=bool(opts.get("chat", False)), system=opts.get("system"), **kw)
