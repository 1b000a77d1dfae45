"""RefineConfig: every setting of a refinement, checked once so the refiner can trust it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.runtime.decoding import GenerationConfig
from ortrefine.runtime.examples import default_examples, select_examples
from ortrefine.runtime.guide import GuideConfig
from ortrefine.runtime.objectives import ObjectiveSpec
from ortrefine.runtime.refine.orders import ORDERS
from ortrefine.runtime.relax import RelaxConfig

MODES = ("keep", "regenerate")
PROPOSALS = ("topk", "gradient", "hybrid")
OPTIMIZERS = ("coordinate", "gradient")
EDIT_KINDS = ("substitute", "insert", "delete")

# J when the user names no term. log P alone rewards loops, early endings and copying the prompt:
# under an independent judge (benchmarks/eval) it made fluent greedy outputs loop (the repetition
# term removed that), cut one continuation to "." (length:short) and quoted prompts back (echo).
# Where the instruct model finds a loop or an editor's remark likelier than the graded terms
# cost, the guard (the evaluation's own degeneration checks, at a weight no log P gain reaches)
# refuses it.
DEFAULT_OBJECTIVES = ("logprob", "repetition=1.0", "echo=4.0", "length=2.0:short=1", "guard=100.0")
# J for the keyword task when the user names no term. Summed log P rewards ending early, so edits
# cut sentences down to fragments that drop concepts ("A spoon."); per-token log P does not. On
# CommonGen sets of 4-5 concepts it put every concept in a real sentence far more often than
# DEFAULT_OBJECTIVES + coverage, at a much higher cost per prompt (benchmarks/eval/commongen-*).
# finish: the task asks for one sentence, and one cut off at the cap is not one.
KEYWORD_OBJECTIVES = ("mean-logprob", "repetition=1.0", "coverage=1.0", "finish=2.0")
# Terms a task's inputs switch on when the user gave the input but not its term.
TASK_TERMS = {"keywords": "coverage=2.0", "reference": "reference"}


def _term_name(o: ObjectiveSpec | str) -> str:
    return o.name if isinstance(o, ObjectiveSpec) else ObjectiveSpec.parse(str(o)).name


class _DerivedObjectives(list):
    """The objectives a RefineConfig chose itself (the user named none): a list like any other,
    marked so that a copy with other task inputs chooses again."""


@dataclass
class RefineConfig:
    """How to refine.

    objectives: terms of J, as ObjectiveSpec or strings like "coverage=2.0" (README: formulas);
        None: KEYWORD_OBJECTIVES when keywords are given, else DEFAULT_OBJECTIVES.
    keywords / reference: inputs of the coverage / reference terms; giving one adds its term
        (TASK_TERMS) when `objectives` does not name it, so a user need not know the term names.
    mode: keep | regenerate (see the package docstring).
    top_k: proposals per position from p(· | X, Y[:i]); None enumerates the whole vocabulary.
    min_prob: drop top-k proposals below this probability (objective proposals are exempt).
    edits: any of substitute, insert, delete (insert/delete only change anything in keep mode:
        under regenerate every edit is a substitution followed by a fresh suffix).
    order: l2r | r2l | random (seeded) | worst-first (lowest per-token log-prob first) |
        gradient-norm (largest gradient at the token's embedding first; needs a gradient graph).
    proposal: where substitution candidates come from: topk (the model's own next-token
        distribution), gradient (HotFlip/GCG first-order scores from the bundle's gradient graph,
        `ortrefine export-gradient`), hybrid (both lists; exact scoring decides either way).
    optimizer: coordinate (the sweeps above) | gradient (each sweep runs `relax.steps` steps of
        gradient ascent on a softmax relaxation of Y, projects each step to tokens and accepts the
        best projection only if its exact J is higher; needs a gradient graph).
    relax: settings of the gradient optimizer (steps, lr, method plain|momentum|adam, temperature).
    sweeps: maximum sweeps; refinement also stops when a sweep accepts nothing.
    end_repair: when J has a guard term and Y* is still degenerate after the sweeps, try ending it
        at each sentence end (one more group, decided by J like any edit). Re-decoded suffixes
        regrow a loop or an editor's remark from the same seed; its first clean sentence is often
        a finished output.
    positions_per_batch: positions whose candidates are scored together in one batch; the best
        edit among them is accepted (1 = plain coordinate descent).
    tol: minimum ΔJ to accept an edit.
    seed: for the random order (and sampled initial outputs).
    budget_seconds / budget_tokens: stop before the next batch once spent (None: no limit).
        budget_tokens counts the prompt's pass too, also where Y⁰'s decode ran it for the search.
    prune: drop candidates whose exact upper bound falls to the incumbent's J.
    chunk: keep mode: suffix tokens scored per pass between pruning checks. 4 was the fastest on
        the fused SmolLM2 graph (benchmarks/probes/chunk.py): smaller chunks prune more tokens but
        pay a weight read per pass.
    draft: regenerate mode: tokens drafted from the incumbent and verified per pass (exact: kept
        only where they equal the greedy choice); 0 decodes one token per pass.
    screen: approximate; 0 scores every candidate exactly. Once every candidate of a batch has its edit and `screen` more
        suffix tokens scored, only the `screen_keep` most promising are finished; the rest are
        dropped. "Promising" = exact log-probs so far plus the incumbent's own log-probs for the
        tokens not yet scored (keep: the same tokens; regenerate: the incumbent's positions), fed
        to the objective's bound. Exact pruning can only drop a candidate once it has fallen behind
        the incumbent's whole remaining log-prob, so most candidates are scored to the end; the
        screen stops that at a few tokens each. Accepted edits are still scored exactly (J never
        falls), but an edit the screen ranks low is missed.
    screen_keep: candidates per batch finished after the screen.
    max_rows: candidates per forward pass (memory bound for top_k=None).
    max_new_tokens: length cap of Y⁰ and of every candidate.
    chat / system: wrap the prompt in the chat template.
    initial: refine this text instead of decoding Y⁰.
    initial_strategy: how Y⁰ is decoded (default greedy; with a guide, greedy is guided).
    guide: keyword-guided decoding of Y⁰ and of every regenerated suffix (runtime/guide.py):
        None turns it on when keywords are given (regenerate mode), False turns it off, a
        GuideConfig (or its fields as a dict) sets its strengths. J is unchanged: the guide only
        picks tokens. guide_config: what it resolves to (None: off); the refiner reads this, so
        `dataclasses.replace` keeps an explicit False.
    examples: answered keyword turns before the prompt (runtime/examples.py), for Y⁰ and for
        J's log-probs alike: None puts them in when keywords are given to a chat prompt, False
        leaves them out, True insists (keywords and chat needed), a count takes the first N
        (the default is the first DEFAULT_EXAMPLE_COUNT).
        example_turns: what it resolves to (empty: none).
    """

    objectives: list[ObjectiveSpec | str] | None = None
    keywords: tuple[str, ...] = ()
    reference: str | None = None
    mode: str = "regenerate"
    top_k: int | None = 3
    min_prob: float = 0.0
    edits: tuple[str, ...] = ("substitute",)
    order: str = "l2r"
    proposal: str = "topk"
    optimizer: str = "coordinate"
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    sweeps: int = 1
    end_repair: bool = True
    positions_per_batch: int = 8
    tol: float = 1e-6
    seed: int = 0
    budget_seconds: float | None = None
    budget_tokens: int | None = None
    prune: bool = True
    chunk: int = 4
    draft: int = 0
    screen: int = 2  # the independent judge preferred it to exact scoring, and it is faster (benchmarks/eval/dev-screen)
    screen_keep: int = 4
    max_rows: int = 64
    max_new_tokens: int = 32
    chat: bool = False
    system: str | None = None
    initial: str | None = None
    initial_strategy: GenerationConfig | None = None
    guide: GuideConfig | bool | dict | None = None
    guide_config: GuideConfig | None = field(init=False, default=None)  # what `guide` resolves to
    examples: bool | int | None = None
    example_turns: tuple[tuple[str, str], ...] = field(init=False, default=())  # what `examples` resolves to

    def __post_init__(self) -> None:
        self.mode = str(self.mode).lower()
        self.order = str(self.order).lower()
        self.edits = tuple(str(e).lower() for e in self.edits)
        if isinstance(self.keywords, str):  # tuple() would split it into characters
            raise ConfigError(f"keywords must be a sequence of words, not one string ({self.keywords!r}); split it first")
        self.keywords = tuple(self.keywords)
        # checked in this order: the first bad setting is the one reported
        self._check_choices()
        self._check_numbers()
        self._check_inputs()
        self.guide_config = self._resolved_guide()
        self.example_turns = self._resolved_examples()
        if self.objectives is None or isinstance(self.objectives, _DerivedObjectives):
            # derived, not given: derived again from this config's inputs, so that
            # `dataclasses.replace(cfg, keywords=...)` (batch records, compare prompts) gets the keyword J
            self.objectives = _DerivedObjectives(self._with_task_terms(list(KEYWORD_OBJECTIVES if self.keywords else DEFAULT_OBJECTIVES)))
        else:
            self.objectives = self._with_task_terms(list(self.objectives))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RefineConfig":
        """A config from JSON-like settings, e.g. a result's `config` (RefineResult.config, the
        `--json` trace), to run a refinement again as it ran. Nested settings come back as their
        dataclasses; what a config works out itself (guide_config, example_turns, and objectives
        that were derived rather than given) it works out again, so `dataclasses.replace` on the
        result behaves as on the config that ran. A bad name or value is a one-line ConfigError;
        an unknown name lists the known ones."""
        if not isinstance(d, dict):
            raise ConfigError(f"refine settings must be an object of names and values, got {type(d).__name__}")
        derived = {f.name for f in fields(cls) if not f.init}
        d = {k: v for k, v in d.items() if k not in derived}
        _check_names(cls, d, "refine setting")
        if "relax" in d:
            d["relax"] = _nested(RelaxConfig, d["relax"], "relax")
        if d.get("initial_strategy") is not None:
            d["initial_strategy"] = _nested(GenerationConfig, d["initial_strategy"], "initial_strategy")
        if isinstance(d.get("guide"), dict):
            d["guide"] = GuideConfig.from_dict(d["guide"])
        if isinstance(d.get("objectives"), list):
            d["objectives"] = [_nested(ObjectiveSpec, o, "objective", "field") if isinstance(o, dict) else o for o in d["objectives"]]
        for name in ("keywords", "edits"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        cfg = _build(cls, d, "refine settings")
        if d.get("objectives") is not None:
            # the J a config without objectives derives: recorded as a list, derived again
            probe = _build(cls, {**d, "objectives": None}, "refine settings")
            if _config_dict(probe)["objectives"] == _config_dict(cfg)["objectives"]:
                return probe
        return cfg

    def _check_choices(self) -> None:
        """The named settings, lower-cased so the CLI and the API accept any case."""
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        ORDERS.get(self.order)
        self.proposal = str(self.proposal).lower()
        if self.proposal not in PROPOSALS:
            raise ConfigError(f"unknown proposal {self.proposal!r}; known: {', '.join(PROPOSALS)}")
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.order == "gradient-norm" and self.proposal == "topk":
            raise ConfigError("order 'gradient-norm' needs --proposal gradient or hybrid")
        bad = [e for e in self.edits if e not in EDIT_KINDS]
        if bad or not self.edits:
            raise ConfigError(f"unknown edit kind(s) {bad or '(none)'}; known: {', '.join(EDIT_KINDS)}")

    def _check_numbers(self) -> None:
        """Counts and limits; errors name the CLI flag (dashes), which is what users typed."""
        for name in ("sweeps", "positions_per_batch", "chunk", "screen_keep", "max_rows", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("draft", "screen"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top-k must be >= 1 or 'all', got {self.top_k}")
        if not (0 <= self.min_prob < 1):
            raise ConfigError(f"min-prob must be in [0, 1), got {self.min_prob}")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise ConfigError(f"tol must be a finite number >= 0, got {self.tol}")
        for name in ("budget_seconds", "budget_tokens"):
            value = getattr(self, name)
            if value is not None and not (value > 0):
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if self.budget_seconds is not None and not math.isfinite(self.budget_seconds):
            raise ConfigError(f"budget-seconds must be a finite number of seconds, got {self.budget_seconds} (omit it for no limit)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a whole number >= 0, got {self.seed!r}")

    def _check_inputs(self) -> None:
        """The task's own inputs, which the objective terms read as they are."""
        if any(not isinstance(k, str) for k in self.keywords):
            raise ConfigError("keywords must be strings")
        if not isinstance(self.end_repair, (bool, np.bool_)):
            raise ConfigError(f"end_repair must be true or false, got {self.end_repair!r}")
        if self.initial is not None and not self.initial.strip():
            raise ConfigError("--initial text is empty; give the output to refine, or drop --initial")

    def _resolved_guide(self) -> GuideConfig | None:
        """The guide to decode with, or None. It steers toward keywords, so it needs some; keep
        mode never decodes a suffix, so it has nothing to steer there."""
        g = self.guide
        if isinstance(g, dict):
            g = GuideConfig.from_dict(g)
        if g is None:
            return GuideConfig() if self.keywords and self.mode == "regenerate" else None
        if g is False:
            return None
        if g is True:
            g = GuideConfig()
        if not isinstance(g, GuideConfig):
            raise ConfigError(f"guide must be a GuideConfig, true or false, got {g!r}")
        if not self.keywords:
            raise ConfigError("the keyword guide needs keywords (--keywords a,b,c)")
        if self.mode != "regenerate":
            raise ConfigError("the keyword guide steers regenerated suffixes, and mode keep regenerates none; use mode regenerate")
        return g

    def _resolved_examples(self) -> tuple[tuple[str, str], ...]:
        """The worked keyword turns, or none. They are chat turns showing the keyword task, so
        they need both a chat prompt and keywords."""
        if self.examples is None:
            return default_examples() if self.keywords and self.chat else ()
        turns = select_examples(self.examples)
        if turns and not (self.keywords and self.chat):
            raise ConfigError("the answered keyword examples are chat turns of the keyword task: they need a chat prompt and keywords (--chat and --keywords)")
        return turns

    def _with_task_terms(self, objectives: list[ObjectiveSpec | str]) -> list[ObjectiveSpec | str]:
        names = {_term_name(o) for o in objectives}
        given = {"keywords": bool(self.keywords), "reference": self.reference is not None}
        for field_name, term in TASK_TERMS.items():
            if given[field_name] and _term_name(term) not in names:
                objectives.append(term)
        return objectives


def _config_dict(cfg: RefineConfig) -> dict[str, Any]:
    """The config as plain JSON-able data, for RefineResult.config (ObjectiveSpec as dicts;
    `RefineConfig.from_dict` reads it back). numpy numbers, which the API accepts, become
    Python's, so `json.dumps` takes the result."""
    d = asdict(cfg)
    d["objectives"] = [o if isinstance(o, str) else asdict(o) for o in cfg.objectives]
    return _plain(d)


def _check_names(klass: type, d: dict[str, Any], what: str) -> None:
    known = [f.name for f in fields(klass) if f.init]
    bad = sorted(set(d) - set(known))
    if bad:
        raise ConfigError(f"unknown {what}(s) {', '.join(map(repr, bad))}; known: {', '.join(known)}")


def _build(klass: type, d: dict[str, Any], what: str) -> Any:
    try:
        return klass(**d)
    except TypeError as e:  # a value of the wrong type, met by a comparison or a conversion
        raise ConfigError(f"{what}: a value has the wrong type ({e})") from None


def _nested(klass: type, d: Any, name: str, item: str = "setting") -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"a {name} must be an object of names and values, got {d!r}")
    _check_names(klass, d, f"{name} {item}")
    return _build(klass, d, name)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x
