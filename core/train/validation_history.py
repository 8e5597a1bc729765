"""The validation losses of one training run, and the two decisions taken from them: the best step, early stop.

Torch-free (plain numbers), so the same rules can be read and tested without a model:

    h = ValidationHistory(patience=3)
    h.baseline = {"step": 0, "loss": 0.31, ...}        # the base model (adapter off), once per run
    h.add({"step": 250, "loss": 0.29, ...})             # -> True when it is the new best
    h.best["step"], h.evals_since_best, h.should_stop
    state = h.to_dict(); ValidationHistory.from_dict(state, patience=3)   # what checkpoints carry

The best point is the lowest loss; a tie keeps the earlier step (fewer steps of the same quality is the safer
LoRA). "Not improved for K evaluations" counts the evaluations after the best whose loss was not strictly lower.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ValidationHistory:
    patience: int = 0  # early stop after this many evaluations without a new best; 0: never
    points: list[dict] = field(default_factory=list)  # {"step", "loss", "by_sigma", "seconds"}, by step
    baseline: dict | None = None  # the same measure of the base model (adapter off)

    def add(self, point: dict) -> bool:
        """Record an evaluation; True when it is the new best. A step evaluated again (a resumed run that
        repeats steps after its checkpoint) replaces the earlier point of that step."""
        step = int(point["step"])
        self.points = [p for p in self.points if p["step"] < step]
        self.points.append(dict(point))
        return self.best is not None and self.best["step"] == step

    @property
    def best(self) -> dict | None:
        best = None
        for p in self.points:
            if best is None or p["loss"] < best["loss"]:
                best = p
        return best

    @property
    def evals_since_best(self) -> int:
        best = self.best
        return 0 if best is None else sum(1 for p in self.points if p["step"] > best["step"])

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_since_best >= self.patience

    @property
    def seconds(self) -> float:
        """Wall time spent evaluating (the baseline included): the cost of validation."""
        extra = self.baseline.get("seconds", 0.0) if self.baseline else 0.0
        return sum(p.get("seconds", 0.0) for p in self.points) + extra

    def summary(self) -> dict:
        """What progress reports, the job row and the LoRA metadata carry: the series and the decisions."""
        best = self.best
        return {
            "series": [{"step": p["step"], "loss": p["loss"]} for p in self.points],
            "baseline": self.baseline["loss"] if self.baseline else None,
            "best_step": best["step"] if best else None,
            "best_loss": best["loss"] if best else None,
            "evals_since_best": self.evals_since_best,
            "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict:
        return {
            "points": [dict(p) for p in self.points],
            "baseline": dict(self.baseline) if self.baseline else None,
        }

    @classmethod
    def from_dict(cls, state: dict | None, patience: int = 0) -> "ValidationHistory":
        state = state or {}
        return cls(
            patience=patience,
            points=[dict(p) for p in state.get("points", [])],
            baseline=dict(state["baseline"]) if state.get("baseline") else None,
        )
