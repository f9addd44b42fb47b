"""Where a fold's queries come from: the guidance a cache remembers, and the strategies that draw from it.

A fold chooses what to keep before the question that will need it is asked, so it is guided by queries the cache
has kept: the worker prompts asked on this trajectory so far (task guidance) and a sample of the trajectory's own
prefill queries (span guidance: the repeat-prefill queries of adamzweiger/compaction and KVzip, without a second
prefill). `GuidanceMemory` holds both, unrotated (at position 0), so that a fold rotates them to its own position.
It changes only through explicit calls: a prefill captures span queries (`capture`), a worker hands a call's
queries over (`TrajectoryCache.remember(ctx)`), a fold trims what it drew from (`after_fold`).

Strategies, one small dataclass each:
- `TaskGuidance`: the worker prompts already asked (the last `max_prompts` prompts' tokens, sampled);
- `SpanGuidance`: query-agnostic, the sampled prefill queries: of the trajectory read so far (scope "read": the
  memory kept at earlier folds and every `capture_stride`-th token read since, most of it in the protected recent
  window), or only of the tokens being folded (scope "span");
- `MixGuidance`: `task_share` of the query tokens from the task, the rest from the span.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from briefing import kv
from briefing.options import check_choice, check_number

SCOPES = ("read", "span")


def sample_tokens(q: torch.Tensor | None, n: int, gen: torch.Generator) -> torch.Tensor | None:
    """At most n query tokens of q [L, KVH, g, N, d], drawn uniformly without replacement (order kept)."""
    if q is None or n <= 0 or q.shape[3] == 0:
        return None
    if q.shape[3] <= n:
        return q
    pick = torch.randperm(q.shape[3], generator=gen, device="cpu")[:n].sort().values.to(q.device)   # [n]
    return q[:, :, :, pick]                                                                 # [L, KVH, g, n, d]


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
        check_choice("SpanGuidance", "scope", self.scope, SCOPES,
                     what="whose prefill queries guide a fold: the text read so far, or the folded span's own")

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
        check_number("MixGuidance", "task_share", self.task_share, low=0, high=1, what="the share of task queries")

    def pick(self, task, span, limit, gen):
        q_task = sample_tokens(task, round(limit * self.task_share), gen)
        n_task = 0 if q_task is None else q_task.shape[3]
        q_span = sample_tokens(span, limit - n_task, gen)
        parts = [q for q in (q_task, q_span) if q is not None]
        if not parts:
            return None, self.name
        n_span = 0 if q_span is None else q_span.shape[3]
        return torch.cat(parts, dim=3), f"{self.name} ({n_task} task + {n_span} span tokens)"


GUIDANCE = {"task": TaskGuidance, "span": SpanGuidance, "mix": MixGuidance}


@dataclass
class GuidanceMemory:
    """The queries a cache keeps for fold guidance, unrotated (at RoPE position 0).

    task [L, KVH, g, n, d]: the last `max_prompts` worker prompts' query tokens. span [L, KVH, g, N, d]: the queries of
    every `capture_stride`-th prefilled token (`span_tokens`: their token indices), trimmed to a sample at each fold.
    `generator` draws every sample, so a copy draws what the original would draw next.
    """

    capture_stride: int
    max_prompts: int
    seed: int = 0
    task: torch.Tensor | None = None
    span: torch.Tensor | None = None
    span_tokens: list[int] = field(default_factory=list)
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)

    def rows(self, first: int, n: int, device: torch.device) -> torch.Tensor | None:
        """Which of the tokens first..first+n-1 a prefill captures ([s] indices into the chunk), or None."""
        rows = [i for i in range(n) if (first + i) % self.capture_stride == 0]
        return torch.tensor(rows, dtype=torch.long, device=device) if rows else None

    def capture(self, queries: torch.Tensor, rows: torch.Tensor, first: int, position: int,
                inv_freq: torch.Tensor) -> None:
        """Keep a prefill's captured queries [L, KVH, g, s, d] (rows of the chunk whose first token is token `first`
        at RoPE `position`)."""
        q = kv.rotate(queries, -(rows + position).to(torch.float64), inv_freq)       # [L, KVH, g, s, d] unrotated
        self.span = q if self.span is None else torch.cat([self.span, q], dim=3)
        self.span_tokens.extend(int(first + r) for r in rows.tolist())

    def add_prompt(self, queries: torch.Tensor, position: int, group: int, inv_freq: torch.Tensor) -> None:
        """Keep a worker prompt's queries [L, KVH, g * n, d] (its tokens at RoPE `position` onward) as task guidance
        (the last `max_prompts` prompts' worth of query tokens at most)."""
        L, H, m, d = queries.shape
        n = m // group
        q = queries.reshape(L, H, group, n, d)                                       # [L, KVH, g, n, d]
        q = kv.rotate(q, -torch.arange(position, position + n, dtype=torch.float64, device=q.device), inv_freq)
        self.task = q if self.task is None else torch.cat([self.task, q], dim=3)
        cap = self.max_prompts * max(1, n)
        if self.task.shape[3] > cap:
            self.task = self.task[:, :, :, -cap:]

    def crop(self, keep_tokens: int) -> None:
        """Forget the span queries of tokens at or past `keep_tokens` (the text was cropped at a token seam)."""
        keep = [j for j, tok in enumerate(self.span_tokens) if tok < keep_tokens]
        if len(keep) < len(self.span_tokens) and self.span is not None:
            self.span = self.span[:, :, :, torch.tensor(keep, dtype=torch.long, device=self.span.device)]
            self.span_tokens = [self.span_tokens[j] for j in keep]

    def inside(self, recent_from: int) -> list[int]:
        """Indices of the span queries of tokens before `recent_from` (the span being folded)."""
        return [j for j, tok in enumerate(self.span_tokens) if tok < recent_from]

    def pick(self, guidance: Guidance, limit: int, recent_from: int) -> tuple[torch.Tensor | None, str]:
        """What `guidance` draws for a fold whose recent window starts at token `recent_from`."""
        span = self.span
        if guidance.span_only:  # only queries of tokens being folded
            inside = self.inside(recent_from)
            span = self.span[:, :, :, self._index(inside)] if span is not None and inside else None
        return guidance.pick(self.task, span, limit, self.generator)

    def after_fold(self, limit: int, span_only: bool, recent_from: int) -> None:
        """Keep a uniform sample of `limit` span queries as the memory of the folded content (span only: and every
        query of the recent window, which later folds will fold)."""
        if self.span is None or self.span.shape[3] <= limit:
            return
        if span_only:
            folded = self.inside(recent_from)
            recent = [j for j, tok in enumerate(self.span_tokens) if tok >= recent_from]
            if len(folded) > limit:
                order = torch.randperm(len(folded), generator=self.generator, device="cpu")[:limit]
                folded = [folded[int(i)] for i in order]
            keep = sorted(folded + recent)
        else:
            order = torch.randperm(self.span.shape[3], generator=self.generator, device="cpu")[:limit]
            keep = order.sort().values.tolist()
        self.span = self.span[:, :, :, self._index(keep)]
        self.span_tokens = [self.span_tokens[j] for j in keep]

    def _index(self, rows: list[int]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.span.device)

    def clone(self) -> GuidanceMemory:
        other = GuidanceMemory(self.capture_stride, self.max_prompts, self.seed, self.task, self.span,
                               list(self.span_tokens))
        other.generator.set_state(self.generator.get_state())
        return other
