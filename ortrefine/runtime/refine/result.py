"""What a refinement hands back: the outputs, the accepted edits, the cost and the whole trace.

Plain dataclasses, so RefineResult.to_dict() is JSON for the CLI, the server and the reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Output:
    """A continuation: text (special tokens skipped), ids (eos included), per-token log-probs."""

    text: str
    ids: list[int]
    token_logprobs: list[float]


@dataclass
class Edit:
    """One accepted edit: where, what (token ids and their text), and the gain in J."""

    sweep: int
    position: int
    kind: str
    old_id: int | None
    new_id: int | None
    old_token: str | None
    new_token: str | None
    delta: float
    objective: float


@dataclass
class Cost:
    """What refinement spent (initial decode excluded from forward_tokens but timed in seconds).

    forward_tokens: tokens pushed through the graph by refinement.
    candidates: candidate sequences proposed; pruned: dropped by the exact bound before finishing.
    tokens_skipped: suffix tokens not computed thanks to pruning (regenerate: counted to the
        length cap, an upper estimate). noncanonical: candidates dropped because their text
        re-tokenizes differently. passes: forward passes. draft_tokens / draft_accepted: regenerate
    mode's tokens drafted from the incumbent and verified, and how many were the greedy choice.
    rescore_rejected: winning candidates whose J, recomputed by a full pass once chosen, did not
        beat the incumbent after all (their batched score was higher than the full pass's).
    screened_out: candidates dropped by the (approximate) screen, `RefineConfig.screen`.
    end_repairs: times Y* was still degenerate after the sweeps and its sentence ends were tried
        as endings (`RefineConfig.end_repair`).
    initial_seconds / seconds: wall time.
    """

    forward_tokens: int = 0
    candidates: int = 0
    pruned: int = 0
    tokens_skipped: int = 0
    noncanonical: int = 0
    passes: int = 0
    positions_visited: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0
    rescore_rejected: int = 0
    screened_out: int = 0
    end_repairs: int = 0
    gradient_calls: int = 0
    gradient_seconds: float = 0.0
    initial_forward_tokens: int = 0
    initial_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class RefineResult:
    """The whole trace of one refinement.

    objective_before / objective_after: {"total": J, term: raw value, ...} for Y⁰ and Y*.
    final_retokenized: Y*'s text re-tokenized, with J recomputed from scratch on it
        (equal to `final` whenever every accepted candidate was canonical).
    stop_reason: converged | sweeps | budget-seconds | budget-tokens.
    """

    prompt: str
    prompt_ids: list[int]
    initial: Output
    final: Output
    objective_before: dict[str, float]
    objective_after: dict[str, float]
    final_retokenized: dict[str, Any]
    edits: list[Edit]
    cost: Cost
    sweeps: int
    stop_reason: str
    config: dict[str, Any]

    @property
    def gain(self) -> float:
        return self.objective_after["total"] - self.objective_before["total"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "prompt_ids": self.prompt_ids,
            "initial": asdict(self.initial),
            "final": asdict(self.final),
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "gain": self.gain,
            "final_retokenized": self.final_retokenized,
            "edits": [asdict(e) for e in self.edits],
            "cost": asdict(self.cost),
            "sweeps": self.sweeps,
            "stop_reason": self.stop_reason,
            "config": self.config,
        }
