"""Task-guided Attention Matching (the briefing default)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from briefing.errors import BriefingError
from briefing.selection.base import ScoredSelector, resolve_budget


@dataclass
class AttentionMatching(ScoredSelector):
    """Attention Matching compaction (Zweiger et al., 2026, "Fast KV Compaction via Attention Matching"),
    with task-guided queries and a robust threshold as in Ramp Labs' "Latent Briefing" (2026).

    Keeps positions whose shared score exceeds median + tau * MAD (or the top `budget`: a ratio in (0, 1]
    or a count), then fits per (layer, KV head): beta by box-constrained NNLS so the kept keys carry the
    attention mass of all keys, and values C2 by least squares regularised toward the original values.

    tau: threshold in MADs (higher keeps fewer). budget: overrides tau. ridge: C2 regulariser, relative
    to the mean diagonal of X X^T. beta_max: bound on |beta|. nnls_iters: projected-gradient steps.
    """

    fit: ClassVar[bool] = True
    tau: float = 1.0
    budget: float | int | None = None
    ridge: float = 1e-2
    beta_max: float = 8.0
    nnls_iters: int = 15

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget is None and (not isinstance(self.tau, (int, float)) or not math.isfinite(self.tau)):
            raise BriefingError(f"tau must be a finite number of MADs, got {self.tau!r}.")
        if self.budget is not None:
            resolve_budget(self.budget, 1)  # validates
        if not self.ridge > 0:
            raise BriefingError(f"ridge must be > 0, got {self.ridge}.")

    def count(self, shared: torch.Tensor) -> int:
        if self.budget is not None:
            return resolve_budget(self.budget, shared.numel())
        median = shared.median()
        mad = (shared - median).abs().median()
        return int((shared > median + self.tau * mad).sum())
