"""The quality gate: does a quantized bundle still predict text the way its parent does?

On a small built-in English text set, both bundles score every token with the runtime (no torch):
perplexity of each, mean KL(parent ‖ quantized) per predicted token, and how often their top-1
next-token predictions agree. Past a threshold the quantized bundle is refused (QualityGateError)
unless the caller forces it.

Each text is scored alone (batch 1, no padding), so the figures do not depend on batch-mates even
for dynamically quantized graphs (one activation scale per tensor across the batch).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ortrefine.errors import ConfigError, ExportError, QualityGateError

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM

# Six short paragraphs of plain English in different registers (narrative, explanation,
# instructions, dialogue, news, technical), written for this module.
GATE_TEXTS: tuple[str, ...] = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. He carried a small "
    "oil lamp, a notebook, and a thermos of sweet black tea. From the top he could see the whole "
    "harbour: the fishing boats tied up for the night, the gulls settling on the breakwater, and the "
    "lights of the village coming on one by one. He wrote down the wind, the colour of the sky and "
    "the number of ships he counted on the horizon. Nobody had asked him to keep these notes, but he "
    "had done it for thirty years, and he saw no reason to stop now.",
    "Bread rises because yeast eats the sugars in the flour and releases carbon dioxide. The gas is "
    "trapped in a network of gluten, a protein that forms when flour is mixed with water and kneaded. "
    "The longer the dough is kneaded, the stronger and more elastic this network becomes. Warmth speeds "
    "the process up, while cold slows it down, which is why many bakers let their dough rise slowly "
    "in the refrigerator overnight. The slow rise gives the bread a deeper flavour and a more open "
    "crumb.",
    "To change a flat tyre, first park the car on level ground and switch on the hazard lights. Loosen "
    "the wheel nuts slightly while the wheel is still on the ground. Then place the jack under the "
    "frame near the flat tyre and raise the car until the wheel is a few centimetres off the road. "
    "Remove the nuts completely, pull the wheel off, and fit the spare. Tighten the nuts by hand, lower "
    "the car, and finally tighten them firmly with the wrench in a star pattern.",
    "\"Are you coming to the meeting tomorrow?\" asked Maria. \"I think so,\" said Tom, \"but I have to "
    "finish the report first. The numbers for the second quarter are still missing.\" Maria nodded. "
    "\"Send me what you have tonight, and I will check the tables in the morning. If anything is wrong, "
    "we can fix it before the meeting starts.\" Tom smiled with relief and promised to send the draft "
    "before dinner.",
    "The city council approved a plan on Monday to add twelve kilometres of protected bicycle lanes over "
    "the next three years. Supporters said the lanes would make cycling safer for children and older "
    "residents, while some shop owners worried about losing parking spaces in front of their stores. "
    "The first section, along the river, is expected to open next spring. The council will publish a "
    "map of the planned routes and invite comments from the public before construction begins.",
    "A computer stores every number as a pattern of bits. Whole numbers are written in base two, so the "
    "number five becomes one, zero, one. Fractions are harder: most decimal fractions, such as one "
    "tenth, have no exact binary form, and the computer keeps only the closest value it can represent. "
    "This is why adding one tenth ten times does not always give exactly one, and why careful programs "
    "compare such results with a small tolerance instead of testing for equality.",
)


@dataclass
class GateConfig:
    """Thresholds of the quality gate and the text it measures on.

    max_kl: largest mean KL(parent ‖ quantized) per predicted token, in nats, that passes.
    max_ppl_ratio: largest perplexity(quantized) / perplexity(parent) that passes.
    min_top1: smallest fraction of positions whose top-1 next token agrees that passes, in [0, 1].
    max_tokens: each text is cut to this many tokens (and to the model's context length).
    texts: the texts scored; GATE_TEXTS by default.
    """

    max_kl: float = 0.5
    max_ppl_ratio: float = 1.5
    min_top1: float = 0.6
    max_tokens: int = 256
    texts: tuple[str, ...] = GATE_TEXTS

    def __post_init__(self) -> None:
        self.texts = tuple(self.texts)
        if not (self.max_kl >= 0 and math.isfinite(self.max_kl)):
            raise ConfigError(f"max_kl must be a finite number >= 0, got {self.max_kl}")
        if not (self.max_ppl_ratio >= 1 and math.isfinite(self.max_ppl_ratio)):
            raise ConfigError(f"max_ppl_ratio must be a finite number >= 1, got {self.max_ppl_ratio}")
        if not 0 <= self.min_top1 <= 1:
            raise ConfigError(f"min_top1 must be in [0, 1], got {self.min_top1}")
        if self.max_tokens < 2:
            raise ConfigError(f"max_tokens must be >= 2 (one token predicts the next), got {self.max_tokens}")
        if not self.texts or any(not t.strip() for t in self.texts):
            raise ConfigError("the gate needs at least one non-empty text")

    def thresholds(self) -> dict[str, float]:
        return {"max_kl": self.max_kl, "max_ppl_ratio": self.max_ppl_ratio, "min_top1": self.min_top1}


@dataclass
class GateReport:
    """Figures of one gate run.

    parent_ppl / quantized_ppl: exp(mean negative log-likelihood) over every predicted token of all
        texts pooled. ppl_ratio: quantized_ppl / parent_ppl.
    mean_kl: mean over predicted tokens of KL(parent ‖ quantized) of the next-token distributions, nats.
    max_kl_token: the largest per-token KL seen.
    top1_agreement: fraction of positions where both bundles' most likely next token is the same.
    texts / tokens: how many texts and predicted tokens were scored.
    provider: execution provider both bundles ran on.
    thresholds: the GateConfig thresholds applied. failures: one line per threshold exceeded.
    passed: no failures. forced: the bundle was kept despite failures.
    skipped: why the gate could not run (then every figure is None and passed is False).
    seconds: wall time of the measurement.
    """

    parent_ppl: float | None = None
    quantized_ppl: float | None = None
    ppl_ratio: float | None = None
    mean_kl: float | None = None
    max_kl_token: float | None = None
    top1_agreement: float | None = None
    texts: int = 0
    tokens: int = 0
    provider: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    passed: bool = False
    forced: bool = False
    skipped: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: the figures, for the CLI and error messages."""
        if self.skipped:
            return f"quality gate skipped: {self.skipped}"
        return (
            f"perplexity {self.parent_ppl:.2f} -> {self.quantized_ppl:.2f} (x{self.ppl_ratio:.3f}), "
            f"KL {self.mean_kl:.4f} nats/token, top-1 agreement {100 * self.top1_agreement:.1f}% "
            f"({self.texts} texts, {self.tokens} tokens, {self.provider})"
        )


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    """logits: (seq, vocab) float32 → log-probs (seq, vocab) float64 (KL of close models needs it)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def gate_token_ids(lm: "LM", cfg: GateConfig) -> list[list[int]]:
    """The gate texts encoded with the bundle's tokenizer, each cut to fit (at least 2 tokens)."""
    limit = min(cfg.max_tokens, lm.bundle.context_length)
    seqs = [lm.tokenizer.encode(t)[:limit] for t in cfg.texts]
    return [s for s in seqs if len(s) >= 2]


def measure(parent: "LM", quantized: "LM", cfg: GateConfig) -> GateReport:
    """Score the gate texts with both bundles and compare their next-token distributions.

    Both LMs must share a tokenizer (a quantized bundle copies its parent's). Thresholds are not
    applied here: see `apply_thresholds`.
    """
    t0 = time.perf_counter()
    seqs = gate_token_ids(parent, cfg)
    if not seqs:
        raise ExportError("the quality gate texts encode to fewer than 2 tokens each; give longer texts")
    nll_p = nll_q = kl_sum = 0.0
    kl_max = 0.0
    agree = n = 0
    for ids in seqs:
        batch = np.asarray([ids], dtype=np.int64)
        lp = _log_softmax64(parent.forward(batch).logits[0, :-1])  # (S-1, vocab): predicts ids[1:]
        lq = _log_softmax64(quantized.forward(batch).logits[0, :-1])
        targets = np.asarray(ids[1:], dtype=np.int64)
        rows = np.arange(len(targets))
        nll_p -= float(lp[rows, targets].sum())
        nll_q -= float(lq[rows, targets].sum())
        kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)  # (S-1,) KL(parent ‖ quantized) per position
        kl_sum += float(kl.sum())
        kl_max = max(kl_max, float(kl.max()))
        agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())
        n += len(targets)
    ppl_p, ppl_q = math.exp(nll_p / n), math.exp(nll_q / n)
    return GateReport(
        parent_ppl=ppl_p, quantized_ppl=ppl_q, ppl_ratio=ppl_q / ppl_p, mean_kl=kl_sum / n,
        max_kl_token=kl_max, top1_agreement=agree / n, texts=len(seqs), tokens=n,
        provider=quantized.provider, thresholds=cfg.thresholds(), seconds=time.perf_counter() - t0,
    )


def apply_thresholds(report: GateReport, cfg: GateConfig) -> GateReport:
    """Fill report.failures / passed from the thresholds of cfg."""
    failures = []
    if report.mean_kl is not None and report.mean_kl > cfg.max_kl:
        failures.append(f"mean KL {report.mean_kl:.4f} > max {cfg.max_kl} nats/token")
    if report.ppl_ratio is not None and report.ppl_ratio > cfg.max_ppl_ratio:
        failures.append(f"perplexity ratio {report.ppl_ratio:.3f} > max {cfg.max_ppl_ratio}")
    if report.top1_agreement is not None and report.top1_agreement < cfg.min_top1:
        failures.append(f"top-1 agreement {report.top1_agreement:.3f} < min {cfg.min_top1}")
    report.thresholds = cfg.thresholds()
    report.failures = failures
    report.passed = not failures and report.skipped is None
    return report


def check(report: GateReport, cfg: GateConfig, force: bool = False) -> GateReport:
    """Apply the thresholds; raise QualityGateError naming the figures unless forced."""
    apply_thresholds(report, cfg)
    if report.failures and not force:
        raise QualityGateError(
            f"quality gate failed: {'; '.join(report.failures)} [{report.summary()}]; no bundle was written. "
            "Pass --force to keep it anyway, relax --max-kl / --max-ppl-ratio / --min-top1, "
            "or choose a gentler quantization (--to int8, a smaller --block-size)"
        )
    report.forced = bool(report.failures) and force
    return report
