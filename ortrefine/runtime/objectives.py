"""Objective terms J(Y) = Σₖ wₖ · termₖ(Y), evaluated on a batch of candidate outputs.

Two kinds of term:
- *LM terms* (logprob, mean-logprob, reference) are functions of sums of per-token
  log-probabilities, each term ≤ 0 — so a partial sum bounds the final value from above, which
  is what lets the refiner drop a candidate exactly before it is fully scored.
- *Text terms* (length, repetition, coverage, reward) are computed on finished candidates; each
  states the largest value it can take (`max_value`), +inf when unknown (reward).
All terms go through `Objective.evaluate`, the one scoring interface of the refiner.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ortrefine.errors import ConfigError, ObjectiveError
from ortrefine.registry import Registry
from ortrefine.runtime.keywords import covered as keyword_coverage, inflections, is_list
from ortrefine.runtime.tokenizer import one_line as _one_line

if TYPE_CHECKING:
    from ortrefine.runtime.tokenizer import TextTokenizer

TERMS: Registry[type["Term"]] = Registry("objective")

STOPWORDS = frozenset(
    "a an the and or but if then else of to in on at by for with from into onto over under about as is are was were "
    "be been being do does did have has had this that these those it its they them their there here what which who whom "
    "whose why how when where all any each every some such no nor not only own same so than too very can will just should "
    "would could may might must shall one two uses use using write sentence words following these please make give tell "
    "your you me my we our us he she his her him i".split()
)


def opt_float(term: str, key: str, value: Any, low: float | None = None) -> float:
    """An option as a finite float (>= low when given); a string is parsed."""
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise ConfigError(f"objective {term!r}: option {key}={value!r} is not a number") from None
    if not math.isfinite(x):
        raise ConfigError(f"objective {term!r}: option {key} must be a finite number, got {value!r}")
    if low is not None and x < low:
        raise ConfigError(f"objective {term!r}: option {key} must be >= {low:g}, got {value!r}")
    return x


def opt_int(term: str, key: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An option as a whole number (>= low when given); "3" and 3.0 are 3, "2.5" is refused."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"[+-]?\d+", text):
            n = int(text)
        else:
            x = opt_float(term, key, value)
            if not x.is_integer():
                raise ConfigError(f"objective {term!r}: option {key} must be a whole number, got {value!r}")
            n = int(x)
    if low is not None and n < low:
        raise ConfigError(f"objective {term!r}: option {key} must be >= {low}, got {value!r}")
    if high is not None and n > high:
        raise ConfigError(f"objective {term!r}: option {key} must be <= {high}, got {value!r}")
    return n


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def opt_bool(term: str, key: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"objective {term!r}: option {key} must be 1/0 (true/false), got {value!r}")


@dataclass
class Batch:
    """Finished candidates to judge, all continuations of one prompt.

    ids[k]: candidate k's output tokens (the eos that ended it included).
    lp[k]: (len,) float64 log p(y_t | X, y_<t). ref_lp[k]: (min(len, |R|),) log p(R_t | X, y_<t),
    present only when a reference term exists. texts: decoded outputs (special tokens skipped).
    """

    prompt: str
    ids: list[list[int]]
    lp: list[np.ndarray]
    texts: list[str]
    ref_lp: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Context:
    """What terms may need about the task: the prompt, tokenizer, eos ids, output length cap."""

    prompt: str
    tokenizer: "TextTokenizer"
    eos_ids: tuple[int, ...]
    max_len: int
    keywords: tuple[str, ...] = ()
    reference: str | None = None
    reference_ids: list[int] = field(default_factory=list)
    initial_len: int | None = None


class Term:
    """One weighted term. Subclasses set `name`, `lm` (True for log-prob-sum terms), and evaluate."""

    name = ""
    lm = False
    needs_reference = False

    def __init__(self, weight: float = 1.0, ctx: Context | None = None, **options: Any) -> None:
        if not math.isfinite(weight):
            raise ConfigError(f"objective {self.name!r}: weight must be a finite number, got {weight}")
        if weight < 0 and not self.allows_negative_weight():
            raise ConfigError(
                f"objective {self.name!r}: a negative weight ({weight}) is meaningless here "
                f"(it would reward what the term penalises); use a weight >= 0"
            )
        self.weight = weight
        self.ctx = ctx
        self.configure(**options)

    def allows_negative_weight(self) -> bool:
        return False

    def configure(self, **options: Any) -> None:
        if options:
            raise ConfigError(f"objective {self.name!r} takes no option(s) {sorted(options)}")

    def evaluate(self, batch: Batch) -> np.ndarray:
        """(K,) float64 raw values (unweighted)."""
        raise NotImplementedError

    def upper_bound(self, lp_sum: np.ndarray, ref_sum: np.ndarray, length: np.ndarray) -> np.ndarray:
        """LM terms: the largest final value given partial sums so far (future terms ≤ 0)."""
        raise NotImplementedError

    def max_value(self) -> float:
        """Text terms: the largest value the term can ever take."""
        return math.inf

    def propose(self, prefix_ids: Sequence[int]) -> list[int]:
        """Extra candidate tokens this term suggests at a position (default none)."""
        return []

    def describe(self) -> str:
        return f"{self.name}={self.weight:g}"


def _register(cls: type[Term]) -> type[Term]:
    TERMS.register(cls.name, cls)
    return cls


@_register
class LogProb(Term):
    """logprob(Y) = Σₜ log p(yₜ | X, y<t)."""

    name, lm = "logprob", True

    def evaluate(self, batch: Batch) -> np.ndarray:
        return np.array([lp.sum() for lp in batch.lp], dtype=np.float64)

    def upper_bound(self, lp_sum, ref_sum, length):
        return lp_sum


@_register
class MeanLogProb(Term):
    """mean-logprob(Y) = logprob(Y) / |Y|^α  (α = 1: per-token mean; `gnmt=1`: / ((5+|Y|)/6)^α)."""

    name, lm = "mean-logprob", True

    def configure(self, alpha: float = 1.0, gnmt: bool = False) -> None:
        try:
            self.alpha = opt_float(self.name, "alpha", alpha, low=0.0)
        except ConfigError:
            raise ConfigError(f"mean-logprob: alpha must be a finite number >= 0, got {alpha}") from None
        self.gnmt = opt_bool(self.name, "gnmt", gnmt)

    def _norm(self, n: np.ndarray) -> np.ndarray:
        n = np.maximum(np.asarray(n, dtype=np.float64), 1)
        return ((5 + n) / 6) ** self.alpha if self.gnmt else n**self.alpha

    def evaluate(self, batch):
        return np.array([lp.sum() for lp in batch.lp]) / self._norm(np.array([len(i) for i in batch.ids]))

    def upper_bound(self, lp_sum, ref_sum, length):
        # lp_sum ≤ 0 only falls and the length can grow to max_len: the largest denominator bounds it
        return lp_sum / self._norm(np.full_like(lp_sum, self.ctx.max_len if self.ctx else 1))


@_register
class Reference(Term):
    """reference(Y) = Σ_{t<min(|Y|,|R|)} log p(Rₜ | X, y<t) / |R|  +  overlap · F1(words(Y), words(R)).

    The first part is the (negated) cross-entropy of the reference along Y's prefixes: high when, at
    every step, the model would still continue Y the way R goes. The second rewards shared words.
    """

    name, lm, needs_reference = "reference", True, True

    def configure(self, overlap: float = 1.0) -> None:
        try:
            self.overlap = opt_float(self.name, "overlap", overlap, low=0.0)
        except ConfigError:
            raise ConfigError(f"reference: overlap must be a finite number >= 0, got {overlap}") from None
        if self.ctx is not None and not (self.ctx.reference or "").strip():
            raise ConfigError("objective 'reference' needs a reference text: pass --reference TEXT")
        if self.ctx is not None and not self.ctx.reference_ids:
            raise ConfigError("the reference text encodes to no tokens; pass a reference with some text")

    def _n(self) -> int:
        return max(1, len(self.ctx.reference_ids)) if self.ctx else 1

    def evaluate(self, batch):
        ce = np.array([r.sum() for r in batch.ref_lp or [np.zeros(0)] * len(batch)]) / self._n()
        ref_words = _words(self.ctx.reference or "") if self.ctx else []
        f1 = np.array([_f1(_words(t), ref_words) for t in batch.texts])
        return ce + self.overlap * f1

    def upper_bound(self, lp_sum, ref_sum, length):
        return ref_sum / self._n() + self.overlap * 1.0


@_register
class Length(Term):
    """length(Y) = −|len(Y) − target| (in tokens, eos included; target defaults to the initial
    output's length, so the term holds the refined output near Y⁰'s length)."""

    name = "length"

    def configure(self, target: int | None = None) -> None:
        self.target = None if target is None else opt_int(self.name, "target", target, low=1, high=1 << 31)

    def evaluate(self, batch):
        target = self.target if self.target is not None else (self.ctx.initial_len or self.ctx.max_len)
        return -np.abs(np.array([len(i) for i in batch.ids], dtype=np.float64) - target)

    def max_value(self) -> float:
        return 0.0


@_register
class Repetition(Term):
    """repetition(Y) = −#(repeated token n-grams): every n-gram occurrence after its first counts 1."""

    name = "repetition"

    def configure(self, n: int = 3) -> None:
        try:
            self.n = opt_int(self.name, "n", n, low=1)
        except ConfigError:
            raise ConfigError(f"repetition: n must be a whole number >= 1, got {n}") from None

    def evaluate(self, batch):
        out = []
        for ids in batch.ids:
            grams = [tuple(ids[i : i + self.n]) for i in range(len(ids) - self.n + 1)]
            out.append(-(len(grams) - len(set(grams))))
        return np.array(out, dtype=np.float64)

    def max_value(self) -> float:
        return 0.0


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def _f1(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    from collections import Counter

    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def content_words(text: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in _words(text):
        if len(w) >= 4 and w not in STOPWORDS and not w.isdigit():
            seen.setdefault(w, None)
    return tuple(seen)


@_register
class Coverage(Term):
    """coverage(Y) = #{keywords Y uses in some inflection}, and 0 when Y only lists them.

    Matching is simplemma's (sat covers sit, mice covers mouse: `runtime.keywords`, the same
    matcher `ortrefine eval` reports with). A comma list of the concepts ("dog, frisbee, park.")
    scored full marks under log P + coverage and was most of what refinement "covered"; asked
    for a sentence, a list uses no concept. Keywords come from --keywords, else the content
    words of the prompt. Proposes, at every position, the first token of every inflection of
    each keyword still missing (with and without a leading space, and capitalised).
    """

    name = "coverage"

    def configure(self) -> None:
        ctx = self.ctx
        given = bool(ctx and ctx.keywords)
        raw = ctx.keywords if given else content_words(ctx.prompt if ctx else "")
        self.keywords = tuple(dict.fromkeys(k.strip().lower() for k in raw if isinstance(k, str) and k.strip()))
        for k in self.keywords:
            if not _words(k):
                raise ConfigError(f"coverage: keyword {k!r} has no letters or digits, so no text can cover it; drop it from --keywords")
        if ctx is not None and not self.keywords:
            raise ConfigError("objective 'coverage' has no keywords: " + ("--keywords names none" if given else
                              "the prompt has no content words") + "; pass --keywords a,b,c")
        tok = ctx.tokenizer if ctx else None
        self._first_tokens: dict[str, list[int]] = {}
        if tok is not None:
            for k in self.keywords:
                head, *rest = k.split()
                tail = " " + " ".join(rest) if rest else ""
                firsts = set()
                for form in inflections(head):
                    for text in (" " + form + tail, form + tail, " " + form.capitalize() + tail):
                        ids = tok.encode_plain(text)
                        if ids:
                            firsts.add(ids[0])
                self._first_tokens[k] = sorted(firsts)

    def covered(self, text: str) -> list[bool]:
        return keyword_coverage(text, self.keywords)

    def evaluate(self, batch):
        return np.array([0.0 if is_list(t, self.keywords) else float(sum(self.covered(t))) for t in batch.texts], dtype=np.float64)

    def max_value(self) -> float:
        return float(len(self.keywords))

    def propose(self, prefix_ids):
        if self.ctx is None:
            return []
        have = self.covered(self.ctx.tokenizer.decode(prefix_ids))
        return [t for k, c in zip(self.keywords, have) if not c for t in self._first_tokens.get(k, [])]


@_register
class Reward(Term):
    """reward(Y) = f(prompt, text): a Python `module:function` over a batch of (prompt, text) pairs
    returning one float each, or an ONNX sequence-classification bundle folder (its logit `label`)."""

    name = "reward"

    def allows_negative_weight(self) -> bool:
        return True

    def configure(self, fn: str | None = None, label: int = -1, max: float | None = None) -> None:  # noqa: A002
        if not fn:
            raise ConfigError("objective 'reward' needs a function or model: reward=module:function or reward=path/to/bundle")
        if not isinstance(fn, str):
            raise ConfigError(f"objective 'reward': fn must be module:function or a folder, got {fn!r}")
        self.spec = fn
        self.bound = math.inf if max is None else opt_float(self.name, "max", max)
        label = opt_int(self.name, "label", label)
        self.fn: Callable[[list[tuple[str, str]]], Sequence[float]] = (
            _onnx_reward(Path(fn), label) if _is_dir(fn) else _load_function(fn)
        )

    def evaluate(self, batch):
        pairs = [(batch.prompt, t) for t in batch.texts]
        try:
            values = list(self.fn(pairs))
        except Exception as e:  # the user's code: any failure is reported as theirs, in one line
            raise ObjectiveError(f"reward function {self.spec} raised {_one_line(e)}") from None
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except Exception:  # noqa: BLE001 - whatever the values are, they are not floats
            raise ObjectiveError(f"reward function {self.spec} must return one float per (prompt, text) pair") from None
        if arr.shape != (len(pairs),):
            raise ObjectiveError(f"reward function {self.spec} returned {arr.size} values for {len(pairs)} texts; return one float per text")
        if not np.all(np.isfinite(arr)):
            raise ObjectiveError(f"reward function {self.spec} returned NaN or infinite values; return finite floats")
        return arr

    def max_value(self) -> float:
        return self.bound


def _is_dir(path: str) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


def _load_function(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"reward function must be given as module:function, got {spec!r}")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - the user's module: any failure at import (SyntaxError too) is one line
        raise ConfigError(f"cannot load reward function {spec}: importing {module!r} raised {_one_line(e)}") from None
    try:
        fn = getattr(mod, attr)
    except Exception as e:  # noqa: BLE001 - AttributeError, or whatever a module __getattr__ raises
        raise ConfigError(f"cannot load reward function {spec}: {_one_line(e)}") from None
    if not callable(fn):
        raise ConfigError(f"reward {spec} is not callable")
    return fn


def _onnx_reward(folder: Path, label: int) -> Callable[[list[tuple[str, str]]], np.ndarray]:
    """A sequence-classification ONNX model + tokenizer.json as a reward: logit `label` of prompt+text."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    if not (folder / "model.onnx").is_file() or not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"reward model {folder} needs model.onnx and tokenizer.json")
    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - onnxruntime / tokenizers raise their own types for a bad file
        raise ConfigError(f"reward model {folder} cannot be loaded ({_one_line(e)}); give a sequence-classification ONNX folder") from None
    names = {i.name for i in session.get_inputs()}

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        out = []
        for prompt, text in pairs:  # one by one: no padding semantics to get wrong
            ids = np.array([tok.encode(prompt + text).ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(ids)
            logits = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
            out.append(float(logits.reshape(-1)[label]))
        return np.array(out)

    return score


@dataclass
class ObjectiveSpec:
    """One term as the user wrote it: name, weight, options (e.g. alpha=0.8, fn=mod:fn)."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "ObjectiveSpec":
        """NAME[=WEIGHT | =FUNCTION][:key=value,key=value]  e.g. `coverage=2.0`,
        `mean-logprob:alpha=0.8`, `reward=mypkg.scorers:politeness`, `reward:fn=m:f,weight=2`."""
        m = re.match(r"^([a-z][a-z-]*)(.*)$", text.strip())
        if not m:
            raise ConfigError(f"cannot parse objective {text!r}; write NAME[=WEIGHT][:key=value,...]")
        name, rest = m.group(1), m.group(2)
        TERMS.get(name)
        weight, options, seen_weight = 1.0, {}, False
        if rest.startswith("="):
            value = rest[1:]
            if name == "reward":
                options["fn"] = value
            else:
                value, _, opts = value.partition(":")
                weight, seen_weight = _float(value, text), True
                rest = ":" + opts if opts else ""
        if rest.startswith(":"):
            for part in rest[1:].split(","):
                key, eq, val = part.partition("=")
                if not eq:
                    raise ConfigError(f"objective {text!r}: option {part!r} is not key=value")
                key = key.strip().replace("-", "_")
                if key in options or (key == "weight" and seen_weight):
                    raise ConfigError(f"objective {text!r}: option {key!r} is given twice")
                if key == "weight":
                    weight, seen_weight = _float(val, text), True
                else:
                    options[key] = val
        elif rest and not rest.startswith("="):
            raise ConfigError(f"cannot parse objective {text!r}; write NAME[=WEIGHT][:key=value,...]")
        return cls(name, weight, options)


def _float(value: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"objective {text!r}: weight {value!r} is not a number") from None


class Objective:
    """The weighted sum; evaluates every term on a batch and bounds partial candidates."""

    def __init__(self, specs: Sequence[ObjectiveSpec | str], ctx: Context) -> None:
        if not specs:
            raise ConfigError("at least one objective term is needed (e.g. --objective logprob)")
        parsed = [ObjectiveSpec.parse(s) if isinstance(s, str) else s for s in specs]
        self.terms: list[Term] = []
        for spec in parsed:
            cls = TERMS.get(spec.name)
            opts = dict(spec.options)
            accepted = {name for name, p in inspect.signature(cls.configure).parameters.items()
                        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            unknown = sorted(set(opts) - accepted)
            if unknown:
                known = ", ".join(sorted(accepted)) or "none"
                raise ConfigError(f"objective {spec.name!r}: unknown option(s) {', '.join(map(repr, unknown))}; it takes: {known}")
            weight = spec.weight
            if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
                raise ConfigError(f"objective {spec.name!r}: weight must be a finite number, got {weight!r}")
            term = cls(float(weight), ctx, **opts)
            if any(t.name == term.name for t in self.terms):  # J would count the later one's value for both
                raise ConfigError(f"objective {spec.name!r} is given twice; give each term once (add the weights up)")
            self.terms.append(term)
        self.ctx = ctx
        self.needs_reference = any(t.needs_reference for t in self.terms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def evaluate(self, batch: Batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(K,) totals and the raw value of each term."""
        parts = {t.name: t.evaluate(batch) for t in self.terms}
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.asarray(sum(t.weight * parts[t.name] for t in self.terms), dtype=np.float64)
        if not np.all(np.isfinite(total)):
            terms = ", ".join(f"{t.describe()} ({float(np.min(parts[t.name])):g})" for t in self.terms)
            raise ObjectiveError(f"the objective is not a finite number ({terms}); use smaller weights")
        return total, parts

    def can_prune(self) -> bool:
        """Exact pruning needs every non-LM term bounded above."""
        return all(t.lm or math.isfinite(t.max_value()) for t in self.terms)

    def upper_bound(self, lp_sum: np.ndarray, ref_sum: np.ndarray, length: np.ndarray, lm_only: bool = False) -> np.ndarray:
        """Largest J any completion of these partial candidates can reach.

        lm_only: the LM terms alone (for ranking candidates against each other, where a text
        term's bound is the same constant for every row, or infinite for an unbounded reward).
        """
        bound = np.zeros_like(lp_sum, dtype=np.float64)
        for t in self.terms:
            if t.lm:
                bound = bound + t.weight * t.upper_bound(lp_sum, ref_sum, length)
            elif not lm_only:
                bound = bound + t.weight * t.max_value()
        return bound

    def propose(self, prefix_ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for t in self.terms:
            out.extend(t.propose(prefix_ids))
        return out
