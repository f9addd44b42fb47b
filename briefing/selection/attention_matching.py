"""Task-guided Attention Matching (the briefing default)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from briefing.errors import BriefingError
from briefing.options import check_number
from briefing.selection.base import Fit, ScoredSelector


@dataclass(kw_only=True)
class AttentionMatching(ScoredSelector):
    """Attention Matching compaction (Zweiger et al., 2026, "Fast KV Compaction via Attention Matching"),
    with task-guided queries and a robust threshold as in Ramp Labs' "Latent Briefing" (2026).

    Keeps the positions whose pooled shared score exceeds median + `tau` * MAD (higher tau keeps fewer; any
    finite number), or a fixed `ratio` in (0, 1] or `tokens` >= 1 instead: one of the three (none: tau = 1).
    Then `fit` (default `Fit()`) refits per (layer, KV head) beta and values; fit=None gives TopK's output.
    The other options are `ScoredSelector`'s.
    """

    tau: float | None = None
    fit: Fit | None = field(default_factory=Fit)

    def __post_init__(self) -> None:
        sized = self.ratio is not None or self.tokens is not None
        if self.tau is not None and sized:
            raise BriefingError(f"AttentionMatching: pass one of tau, ratio or tokens, got tau={self.tau!r} with "
                                f"ratio={self.ratio!r}, tokens={self.tokens!r}.")
        if self.tau is None and not sized:
            self.tau = 1.0
        check_number("AttentionMatching", "tau", self.tau, none=True, what="MADs above the median, e.g. 1.0")
        super().__post_init__()

    def size_required(self) -> bool:
        return self.tau is None

    def count_scored(self, shared: torch.Tensor) -> int:
        if self.tau is None:
            return self.count(shared.numel())
        median = shared.median()
        mad = (shared - median).abs().median()
        return int((shared > median + self.tau * mad).sum())
