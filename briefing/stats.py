"""What a compaction and a fold report (pydantic, no torch: the agents and the run log import these)."""
from __future__ import annotations

from pydantic import BaseModel


class CompactionStats(BaseModel):
    """Figures of one compaction (times in seconds). kept / original_length: trajectory positions kept / held by
    the cache; fit_error and fit_error_topk: relative error of the block output with the fit and with the kept
    positions alone; fallback: why the fit was not used somewhere (None: it was used everywhere)."""

    method: str
    kept: int
    original_length: int
    kept_ratio: float
    prompt_tokens: int
    time_score_s: float = 0.0
    time_select_s: float = 0.0
    time_beta_s: float = 0.0
    time_values_s: float = 0.0
    time_prompt_s: float = 0.0
    time_total_s: float = 0.0
    fit_error: float | None = None
    fit_error_topk: float | None = None
    fallback: str | None = None


class FoldStats(BaseModel):
    """What one fold did. span_*: cache positions [start, stop) folded; tokens_seen: trajectory tokens so far;
    guidance: where its queries came from; selector: what chose the kept positions."""

    span_start: int
    span_stop: int
    span: int
    kept: int
    positions_before: int
    positions_after: int
    tokens_seen: int
    guidance: str
    query_tokens: int
    time_s: float
    fit_error: float | None = None
    selector: str = ""
