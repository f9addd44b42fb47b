"""Selection that covers the answer, not only the words the question names.

A continuation or verbatim-recall question attends to the words it quotes; the answer lives in the tokens
AFTER them, which the question never attends to. Score transforms here (each a pure function over a score
tensor [..., T], last dim = trajectory position) widen a task-guided selection toward what the answer needs:

- `look_ahead` (in base, on every scored selector; default 8): a position inherits the decayed score of the
  positions just before it (span expansion);
- `chunk_mean`: ChunkKV-style (Liu et al., 2025): whole chunks are ranked by their mean score;
- `key_diversity`: a query-agnostic importance (KeyDiff, Park et al., 2025: keys far from the mean key);
- `mass_split`: the hybrid: task-guided positions up to a share of the attention mass, then query-agnostic
  ones; how many positions the task-guided part takes is set per call by how peaked its scores are;
- `protect_recent`: the most recent positions are always kept (a protected recent window).

Re-scoring with the queries of the first generated tokens is done by the compaction (`rescore_tokens`,
see briefing.rescore); this module only consumes the mixed scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from briefing.errors import BriefingError
from briefing.selection.attention_matching import AttentionMatching
from briefing.options import check_int, check_number


def chunk_mean(scores: torch.Tensor, size: int) -> torch.Tensor:
    """Every position gets the mean score of its chunk of `size` positions (last chunk may be shorter), plus
    a tie-break of 1e-3 of its own score so a cut chunk keeps its best positions. [..., T] -> [..., T]."""
    T = scores.shape[-1]
    pad = (-T) % size
    padded = F.pad(scores, (0, pad))                                                # [..., T + pad]
    counts = F.pad(torch.ones(T, dtype=scores.dtype, device=scores.device), (0, pad)).view(-1, size).sum(-1)  # [chunks]
    means = padded.view(*scores.shape[:-1], -1, size).sum(-1) / counts             # [..., chunks]
    return means.repeat_interleave(size, dim=-1)[..., :T] + 1e-3 * scores


def key_diversity(keys: torch.Tensor) -> torch.Tensor:
    """KeyDiff importance: 1 - cos(k_i, mean key) per (layer, KV head), in [0, 2]. keys [L, H, T, d] -> [L, H, T]."""
    anchor = F.normalize(keys.mean(-2, keepdim=True), dim=-1)                      # [L, H, 1, d]
    return 1.0 - (F.normalize(keys, dim=-1) * anchor).sum(-1)


def mass_split(task: torch.Tensor, agnostic: torch.Tensor, mass: float) -> torch.Tensor:
    """Hybrid ranking. Per row, the task-guided positions that together hold `mass` of the task score come
    first (in task order); all others follow, ranked by the query-agnostic score. Peaked task scores reach
    `mass` with few positions and leave most of the budget to the agnostic score; flat ones take it all.
    task, agnostic [..., T] (non-negative) -> a score whose top-k is that ranking."""
    p = task / task.sum(-1, keepdim=True).clamp_min(1e-30)
    order = p.sort(-1, descending=True)
    before = order.values.cumsum(-1) - order.values                                 # mass of higher-ranked positions
    in_task = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order.indices, before < mass)
    a = agnostic - agnostic.amin(-1, keepdim=True)
    a = a / a.amax(-1, keepdim=True).clamp_min(1e-30)                                # [0, 1]
    return torch.where(in_task, 2.0 + p, a)


def task_share(task: torch.Tensor, mass: float) -> torch.Tensor:
    """Fraction of positions the task-guided part of `mass_split` takes, per row (a diagnostic). [..., T] -> [...]."""
    p = task / task.sum(-1, keepdim=True).clamp_min(1e-30)
    v = p.sort(-1, descending=True).values
    return ((v.cumsum(-1) - v) < mass).float().mean(-1)


def protect_recent(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Always keep the last `count` positions."""
    if count <= 0:
        return scores
    out = scores.clone()
    out[..., -count:] = float("inf")
    return out


@dataclass(kw_only=True)
class CoverageMatching(AttentionMatching):
    """Attention Matching with the other coverage transforms measured beside the look-ahead (which every scored
    selector has: `look_ahead`, `look_back`). Ranked by the pooled, spread scores, then:

    chunk: ChunkKV chunk size (0: off). agnostic_mass: hybrid with key diversity, the task-guided share of the
    attention mass kept first (None: off; needs per_head). protect_last: protected recent window (0: off).
    Re-scoring with generated tokens is ScoredSelector's `rescore_tokens`.
    """

    chunk: int = 0
    agnostic_mass: float | None = None
    protect_last: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, what in (("chunk", "chunk size; 0: off"), ("protect_last", "recent positions always kept")):
            check_int("CoverageMatching", name, getattr(self, name), low=0, what=what)
        check_number("CoverageMatching", "agnostic_mass", self.agnostic_mass, low=0, high=1, low_open=True, none=True,
                     what="or None")
        if self.agnostic_mass is not None and not self.per_head:
            raise BriefingError("CoverageMatching: agnostic_mass needs per_head=True (key diversity is per KV head).")

    def rank(self, scores: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        s = super().rank(scores, keys)                                                # [..., T]
        if self.chunk > 1:
            s = chunk_mean(s, self.chunk)
        if self.agnostic_mass is not None:
            if keys is None:
                raise BriefingError("CoverageMatching: agnostic_mass needs the trajectory keys in Scores.keys.")
            s = mass_split(s, key_diversity(keys), self.agnostic_mass)
        return protect_recent(s, self.protect_last)
