"""The user's own term: a Python function or an ONNX classifier scoring (prompt, text) pairs.
Its code is not ours, so every way it can fail is caught and reported as its failure, in one line."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ortrefine.errors import ConfigError, ObjectiveError
from ortrefine.runtime.objectives.base import Term
from ortrefine.runtime.objectives.options import Option
from ortrefine.runtime.objectives.registry import register
from ortrefine.runtime.tokenizer import one_line as _one_line


@register
class Reward(Term):
    """reward(Y) = f(prompt, text): a Python `module:function` over a batch of (prompt, text) pairs
    returning one float each, or an ONNX sequence-classification bundle folder (its logit `label`)."""

    name, value_option = "reward", "fn"
    options = {  # fn first: without it the other options mean nothing, so its absence is reported first
        "fn": Option(str, missing="objective 'reward' needs a function or model: reward=module:function or reward=path/to/bundle",
                     error="objective 'reward': fn must be module:function or a folder, got {value!r}"),
        "max": Option(float),
        "label": Option(int, -1),
    }
    fn: str
    max: float | None
    label: int

    @classmethod
    def allows_negative_weight(cls) -> bool:
        return True

    def configure(self) -> None:
        self.bound = math.inf if self.max is None else self.max
        self.scorer: Callable[[list[tuple[str, str]]], Sequence[float]] = (
            _onnx_reward(Path(self.fn), self.label) if _is_dir(self.fn) else _load_function(self.fn)
        )

    def evaluate(self, batch):
        pairs = [(batch.prompt, t) for t in batch.texts]
        try:
            values = list(self.scorer(pairs))
        except Exception as e:  # the user's code: any failure is reported as theirs, in one line
            raise ObjectiveError(f"reward function {self.fn} raised {_one_line(e)}") from None
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except Exception:  # noqa: BLE001 - whatever the values are, they are not floats
            raise ObjectiveError(f"reward function {self.fn} must return one float per (prompt, text) pair") from None
        if arr.shape != (len(pairs),):
            raise ObjectiveError(f"reward function {self.fn} returned {arr.size} values for {len(pairs)} texts; return one float per text")
        if not np.all(np.isfinite(arr)):
            raise ObjectiveError(f"reward function {self.fn} returned NaN or infinite values; return finite floats")
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
