"""The request and the report of an export-gradient run: what callers build and read, kept apart
from how the export runs so that bad options are refused before any of it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortrefine.errors import ConfigError


@dataclass
class GradientExportConfig:
    """Add a gradient graph to an existing bundle.

    bundle: the bundle folder (catalog names are resolved like `ortrefine.load`).
    rtol: max relative error allowed between ONNX Runtime and torch autograd, per output, as
        max|ONNX − torch| / max|torch| over the whole tensor (elementwise ratios are meaningless
        for gradient entries near zero). None takes the source's validation tolerance (1e-4 for
        tiny models, 1e-3 for real ones, whose fp32 rounding noise alone can exceed the tiny models' bound).
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

