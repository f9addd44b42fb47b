"""Folding: the persistent trajectory cache compacted in place, so that an unbounded trajectory fits a bounded
memory (rolling Attention Matching).

When an extend would take a `TrajectoryCache` past its budget of kept positions, the span between the attention
sink (the first `sink` positions) and the protected recent window (the last `recent` positions) is compacted by
the same Attention Matching machinery as a per-call compaction (briefing.compaction): guidance queries score the
span's keys, the top `keep` positions per (layer, KV head) are kept, beta is fitted by NNLS so the kept keys carry
the span's attention mass, and values are refitted so the span's attention output is matched. The span's stored
beta (earlier folds) is part of every logit, so the new beta composes with it: beta_new = beta_old[kept] + log w.

Decision: an old fold is folded again. Each fold compacts everything between the sink and the recent window,
earlier folds included, to the same number of positions (`keep` of the span), so memory is bounded for any
trajectory length with a fixed ratio (folding only unfolded text at a ratio that shrinks as folds accumulate
reaches a ratio of zero on an unbounded trajectory). How the kept positions are split is `share`: "uniform" (the
default) gives the earlier folds and the newly folded text shares in proportion to the trajectory tokens each
stands for, so old content as a whole keeps its share (within it, positions compete on scores, so the share is
even between old and new, not between every two ages of old); "recency" lets the whole span compete on scores,
and old folds are then halved again at every fold, their share decaying geometrically with age.

Guidance (where the fit's queries come from), one small strategy each:
- `TaskGuidance`: the worker prompts already asked on this trajectory (queries captured by `compact`, the last
  `max_prompts` prompts, tokens sampled over them);
- `SpanGuidance`: query-agnostic, the trajectory's own prefill queries: every `capture_stride`-th token's queries
  are captured as it is read, a uniform sample of `max_queries` is kept at each fold as the memory of what was
  folded, and a fold draws from that memory plus the queries captured since, re-rotated to the current position
  (the repeat-prefill queries of adamzweiger/compaction and KVzip, without a second prefill). Not the span's
  alone: the text read since the last fold lies mostly in the protected recent window, so most drawn queries are
  later text reading the span;
- `MixGuidance`: both, `task_share` of the query tokens from the task (span queries fill in while few prompts
  have been asked).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel

from briefing.errors import BriefingError
from briefing.selection.base import Fit, smooth


class FoldStats(BaseModel):
    """What one fold did. span_*: cache positions [start, stop) folded; tokens_seen: trajectory tokens so far."""

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


@dataclass(kw_only=True)
class Guidance:
    """Where a fold's queries come from. `pick` returns unrotated query tokens [L, KVH, g, n, d] and a label."""

    name: ClassVar[str] = "guidance"

    @property
    def span_only(self) -> bool:
        """True: the prefill queries offered to `pick` are only those of tokens inside the span being folded."""
        return False

    def pick(self, task: torch.Tensor | None, span: torch.Tensor | None, limit: int,
             gen: torch.Generator) -> tuple[torch.Tensor | None, str]:
        raise NotImplementedError


SCOPES = ("read", "span")


def sample_tokens(q: torch.Tensor | None, n: int, gen: torch.Generator) -> torch.Tensor | None:
    """At most n query tokens of q [L, KVH, g, N, d], drawn uniformly without replacement (order kept)."""
    if q is None or n <= 0 or q.shape[3] == 0:
        return None
    if q.shape[3] <= n:
        return q
    pick = torch.randperm(q.shape[3], generator=gen)[:n].sort().values
    return q[:, :, :, pick]


@dataclass(kw_only=True)
class TaskGuidance(Guidance):
    """The worker prompts already asked on this trajectory (query tokens sampled over the remembered prompts);
    span queries until one is asked."""

    name: ClassVar[str] = "task"

    def pick(self, task, span, limit, gen):
        q = sample_tokens(task, limit, gen)
        if q is not None:
            return q, self.name
        return sample_tokens(span, limit, gen), "span (no worker prompt yet)"


@dataclass(kw_only=True)
class SpanGuidance(Guidance):
    """Query-agnostic: sampled prefill queries, re-rotated to the current position. scope "read" (the default):
    of the trajectory read so far (the memory kept at earlier folds and the text read since, most of it in the
    recent window); "span": only of the tokens being folded (the cache then keeps every query of the recent
    window until it is folded, at most recent / capture_stride of them, beside the memory of earlier folds)."""

    name: ClassVar[str] = "span"
    scope: str = "read"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise BriefingError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}. It says whose prefill "
                                "queries guide a fold: the text read so far, or the folded span's own.")

    @property
    def span_only(self) -> bool:
        return self.scope == "span"

    def pick(self, task, span, limit, gen):
        return sample_tokens(span, limit, gen), f"{self.name} (span only)" if self.span_only else self.name


@dataclass(kw_only=True)
class MixGuidance(Guidance):
    """`task_share` of the query tokens from the worker prompts, the rest from SpanGuidance's prefill queries."""

    name: ClassVar[str] = "mix"
    task_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.task_share <= 1.0:
            raise BriefingError(f"task_share must be in [0, 1], got {self.task_share}. It is the share of task queries.")

    def pick(self, task, span, limit, gen):
        q_task = sample_tokens(task, round(limit * self.task_share), gen)
        n_task = 0 if q_task is None else q_task.shape[3]
        q_span = sample_tokens(span, limit - n_task, gen)
        parts = [q for q in (q_task, q_span) if q is not None]
        if not parts:
            return None, self.name
        return torch.cat(parts, dim=3), f"{self.name} ({n_task} task + {0 if q_span is None else q_span.shape[3]} span tokens)"


GUIDANCE = {"task": TaskGuidance, "span": SpanGuidance, "mix": MixGuidance}
SHARES = ("uniform", "recency")


def split_kept(kept: int, old_positions: int, old_tokens: int, new_positions: int) -> int:
    """How many of `kept` positions go to the old folds under the "uniform" share: in proportion to the tokens
    each part stands for (old folds: `old_tokens` in `old_positions`; new text: one token per position), within
    what each part holds."""
    if old_positions <= 0:
        return 0
    want = round(kept * old_tokens / max(1, old_tokens + new_positions))
    return max(kept - new_positions, min(want, old_positions, kept))


def top_kept(scores: torch.Tensor, t: int, split: int | None = None, t_head: int = 0) -> torch.Tensor:
    """Sorted indices of the t best scores [..., S] per row; with `split`, t_head of them from [0, split) and the
    rest from [split, S)."""
    if split is None:
        return scores.topk(t, dim=-1).indices.sort(dim=-1).values                    # [..., t]
    head = scores[..., :split].topk(t_head, dim=-1).indices                           # [..., t_head]
    tail = scores[..., split:].topk(t - t_head, dim=-1).indices + split               # [..., t - t_head]
    return torch.cat([head, tail], dim=-1).sort(dim=-1).values                        # [..., t]


@dataclass(kw_only=True)
class FoldPolicy:
    """How a TrajectoryCache folds (see the module docstring).

    keep: what a fold keeps of its span: a ratio in [0, 1) or a count (0 drops the span: StreamingLLM's sink plus
        recent window). sink: first positions never folded. recent: last positions never folded (the protected
        recent window; also the room the token seam may re-tokenise); None: half the cache budget, so the newest
        half of the window is always held as it was (what truncating the text to that half would keep) and a fold
        never leaves less than half the budget in use. guidance: TaskGuidance | SpanGuidance |
        MixGuidance. max_queries: query tokens per fold (each brings its g query heads per KV head).
    capture_stride: every n-th prefilled token's queries are kept for span guidance. max_prompts: worker prompts
        remembered for task guidance. fit: the `briefing.Fit` step (beta by NNLS, values refitted), as in a call.
        smooth_kernel: score pooling width, as in the selectors.
    share: how a fold splits its kept positions between the content folded before ("old folds") and the newly
        folded text. "uniform": in proportion to the trajectory tokens each part stands for, so every token folded
        so far keeps the same share of the kept positions however old it is; "recency": the whole span competes
        on scores, so old folds are halved again at every fold (their share decays geometrically with age).
    """

    keep: float | int = 0.5
    guidance: Guidance | None = None
    sink: int = 4
    recent: int | None = None
    max_queries: int = 64
    capture_stride: int = 16
    max_prompts: int = 8
    fit: Fit = field(default_factory=Fit)
    smooth_kernel: int = 5
    share: str = "uniform"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise BriefingError(f"keep must be a ratio in [0, 1) or a position count, got {self.keep!r}.")
        if isinstance(self.keep, float) and not 0.0 <= self.keep < 1.0:
            raise BriefingError(f"keep ratio must be in [0, 1), got {self.keep}: a fold must free positions.")
        if isinstance(self.keep, int) and self.keep < 0:
            raise BriefingError(f"keep count must be >= 0, got {self.keep}.")
        for name in ("sink", "recent"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise BriefingError(f"{name} must be an integer >= 0 positions, got {value!r}.")
        if not isinstance(self.fit, Fit):
            raise BriefingError(f"fit must be a briefing.Fit, got {self.fit!r}.")
        for name in ("max_queries", "capture_stride", "max_prompts", "smooth_kernel"):
            if getattr(self, name) < 1:
                raise BriefingError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.share not in SHARES:
            raise BriefingError(f"share must be one of {', '.join(SHARES)}, got {self.share!r}. It says how a fold splits "
                                "its kept positions between old folds and new text.")
        if self.guidance is None:
            self.guidance = MixGuidance()
        if not isinstance(self.guidance, Guidance):
            raise BriefingError(f"guidance must be a briefing Guidance (TaskGuidance(), SpanGuidance(), MixGuidance()), "
                                f"got {self.guidance!r}.")

    def kept(self, span: int) -> int:
        if isinstance(self.keep, float):
            return min(span - 1, math.floor(self.keep * span)) if span > 0 else 0
        return min(span - 1, self.keep) if span > 0 else 0


@torch.no_grad()
def fold_span(keys: list[torch.Tensor], values: list[torch.Tensor], bias: torch.Tensor | None, queries: torch.Tensor,
              start: int, stop: int, t: int, policy: FoldPolicy, scale: float, split: int | None = None,
              t_head: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor, float]:
    """Compact the span [start, stop) of every layer, one layer chunk at a time (the scoring block is reused by the
    fit). keys, values: per layer [1, H, P, d]; bias [L, H, P] (stored beta) or None; queries [L, H, m, d]
    (rotated to the current position); t kept per (layer, KV head); with `split` (span-relative), t_head of them
    from [0, split) and the rest after it (the "uniform" share).
    Returns idx [L, H, t] (sorted, span-relative), the new per-layer keys and values [1, H, P - (stop - start) + t, d]
    (sink and recent window as they were, kept keys, refitted values), beta of the kept positions [L, H, t]
    (stored beta composed with the fitted one) and the mean fit error."""
    from briefing.compaction import LAYER_CHUNK, fit, gather_positions

    idx_all, beta_all, new_k, new_v, errs = [], [], [], [], []
    timing = dict(beta=0.0, values=0.0)
    for c in range(0, len(keys), LAYER_CHUNK):
        layers = range(c, min(c + LAYER_CHUNK, len(keys)))
        K = torch.cat([keys[i][..., start:stop, :] for i in layers])                  # [c, H, S, d]
        V = torch.cat([values[i][..., start:stop, :] for i in layers])                # [c, H, S, d]
        logits = queries[c:c + len(layers)] @ K.transpose(-1, -2) * scale             # [c, H, m, S]
        b = None if bias is None else bias[c:c + len(layers), :, start:stop]          # [c, H, S]
        if b is not None:
            logits = logits + b.unsqueeze(-2)
        E = torch.exp(logits - logits.amax(-1, keepdim=True))                          # [c, H, m, S]
        scores = (E / E.sum(-1, keepdim=True)).mean(-2)                               # [c, H, S]
        idx = top_kept(smooth(scores, policy.smooth_kernel), t, split, t_head)        # [c, H, t]
        beta_fit, C2, err, _, _ = fit(queries[c:c + len(layers)], K, V, idx, policy.fit, scale, timing, [E])
        beta_all.append(beta_fit if b is None else b.gather(-1, idx) + beta_fit)      # [c, H, t]
        C1 = gather_positions(K, idx)                                                 # [c, H, t, d]
        for j, i in enumerate(layers):
            new_k.append(torch.cat([keys[i][..., :start, :], C1[j:j + 1], keys[i][..., stop:, :]], dim=-2))
            new_v.append(torch.cat([values[i][..., :start, :], C2[j:j + 1], values[i][..., stop:, :]], dim=-2))
        idx_all.append(idx)
        errs.append(err * len(layers))
    return torch.cat(idx_all), new_k, new_v, torch.cat(beta_all), sum(errs) / len(keys)
