"""Learning-rate schedule of eq. 5.10 (step decay with a warm-up epoch)."""
from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class StepSchedule:
    """η(n_past) = factors[i] · η0 for milestones[i-1] <= n_past < milestones[i].

    Defaults are eq. 5.10: 0.5·η0 in the warm-up epoch, η0 until epoch 15, then 0.2, 0.04
    and 0.008 of η0 from epochs 15, 20 and 25. ``n_past`` is the number of *completed*
    epochs, fractional within an epoch; the factor changes exactly at the boundaries.
    """

    milestones: tuple[float, ...] = (1, 15, 20, 25)
    factors: tuple[float, ...] = (0.5, 1.0, 0.2, 0.04, 0.008)

    def __post_init__(self):  # OptimConfig refuses a user's values; these are the schedule's invariants
        assert len(self.factors) == len(self.milestones) + 1 and list(self.milestones) == sorted(self.milestones), \
            (self.milestones, self.factors)

    def factor(self, epochs_past: float) -> float:
        return self.factors[bisect.bisect_right(self.milestones, epochs_past)]

    def scaled(self, total_epochs: int, reference_epochs: int = 30) -> StepSchedule:
        """The same shape stretched to ``total_epochs`` (short demo and test runs)."""
        ratio = total_epochs / reference_epochs
        return StepSchedule(tuple(m * ratio for m in self.milestones), self.factors)
