"""BriefedWorker: latent briefing, the trajectory handed over as a compacted KV cache.

Idea: "Latent Briefing" (share the orchestrator's state with workers at the representation level)
on top of Attention Matching KV compaction (Zweiger et al., "Fast KV Compaction via Attention
Matching"), with task-guided queries: the worker prompt of the current call decides which
trajectory positions are kept (see `briefing` and docs/DESIGN).

Per call:
1. `cache.sync(head + header + trajectory)`: a persistent `briefing.TrajectoryCache` prefills only
   the text added since the previous call (the trajectory rendering is append-only); past its budget the
   cache folds in place (`briefing.FoldPolicy`), so no call re-prefills text already in the cache and no
   trajectory text is dropped: a trajectory of any length is served in bounded memory;
2. `cache.compact(prompt, selector)`: with the default `AttentionMatching(tau=1.0)`, scores positions with the
   prompt's queries, keeps those above median + tau * MAD, fits beta and values; the full cache is not touched;
3. `briefing.generate` on the compacted cache.

Parameters:
    lm: `briefing.LoadedModel` (None loads the embedded SmolLM2-135M on first use)
    selector: the `briefing.Selector` that compacts the trajectory per call (None: the default
        `briefing.AttentionMatching(tau=1.0)`), e.g. `briefing.AttentionMatching(ratio=0.2)`, `briefing.KeepAll()`
    max_new_tokens (>= 1), temperature (>= 0), stop: generation
    max_caches: trajectories kept warm at once, >= 1 (a new run starts a new cache; the oldest is dropped)
    fold: `briefing.FoldPolicy` of the persistent cache (None: the default policy, mix guidance)
    cache_budget: positions the persistent cache keeps (None: the model's window minus `reserve`)
    reserve: positions left for the call prompt and generation (prompt + max_new_tokens must fit)
    recall_tokens: once the cache has folded, at most this many tokens (fewer where the reserve leaves less room
        after the prompt and max_new_tokens) of BM25 top chunks (`agents.recall.recall_folded`) of the
        trajectory text go before the query, the best chunk last (0: no recall). The folds choose what to keep
        before the question is known; recall lets a call reach a fact they compacted away, and brings a fact of
        the unfolded tail next to the question (README, "Unbounded trajectories").
Billed input tokens per call: kept positions + prompt tokens. `text_handoff_tokens`: tokens of the
same text pasted whole (what `TextWorker` bills).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.recall import recall_folded, recall_query
from agents.workers._local import LocalModelMixin
from agents.workers.base import Worker, WorkerAnswer, check_generation
from agents.workers.prompt import TRAJECTORY_HEADER

if TYPE_CHECKING:  # briefing imports torch: only at run time, lazily
    import briefing


@dataclass
class BriefedWorker(LocalModelMixin, Worker):
    lm: briefing.LoadedModel | None = None
    selector: briefing.Selector | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    header: str = TRAJECTORY_HEADER
    max_caches: int = 2
    fold: briefing.FoldPolicy | None = None
    cache_budget: int | None = None
    reserve: int = 512
    recall_tokens: int = 256
    name: str = "briefed"
    _caches: list[briefing.TrajectoryCache] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.lm is not None or self.selector is not None:
            import briefing

            if self.lm is not None and not isinstance(self.lm, briefing.LoadedModel):
                raise ValueError(f"BriefedWorker: lm must be a briefing.LoadedModel or None (the embedded default), "
                                 f"got {type(self.lm).__name__}.")
            if self.selector is not None and not isinstance(self.selector, briefing.Selector):
                raise ValueError(f"BriefedWorker: selector must be a briefing.Selector (e.g. briefing.AttentionMatching("
                                 f"tau=1.0)) or None for that default, got {type(self.selector).__name__}.")
        check_generation("BriefedWorker", self.max_new_tokens, self.temperature)
        if isinstance(self.max_caches, bool) or not isinstance(self.max_caches, int) or self.max_caches < 1:
            raise ValueError(f"BriefedWorker: max_caches must be an integer >= 1, got {self.max_caches!r}.")
        if isinstance(self.reserve, bool) or not isinstance(self.reserve, int) or self.reserve < 1:
            raise ValueError(f"BriefedWorker: reserve must be an integer >= 1 (positions for the call), got {self.reserve!r}.")
        if isinstance(self.recall_tokens, bool) or not isinstance(self.recall_tokens, int) or self.recall_tokens < 0:
            raise ValueError(f"BriefedWorker: recall_tokens must be an integer >= 0 (0: no recall), got {self.recall_tokens!r}.")
        if self.fold is not None:
            import briefing

            if not isinstance(self.fold, briefing.FoldPolicy):
                raise ValueError(f"BriefedWorker: fold must be a briefing.FoldPolicy or None for the default, "
                                 f"got {type(self.fold).__name__}.")

    def make_selector(self) -> briefing.Selector:
        if self.selector is not None:
            return self.selector
        import briefing

        return briefing.AttentionMatching(tau=1.0)

    def cache_for(self, text: str) -> briefing.TrajectoryCache:
        """The warm cache whose text is the longest prefix of `text` (or a new one), synced to it."""
        cache = self.cache_for_call(text)
        cache.sync(text)
        return cache

    def cache_for_call(self, text: str) -> Any:
        """The warm cache whose text is the longest prefix of `text` (or a new one), not yet synced."""
        import briefing

        best = max((c for c in self._caches if text.startswith(c.text)), key=lambda c: len(c.text), default=None)
        if best is None:
            fold = self.fold if self.fold is not None else briefing.FoldPolicy()
            best = briefing.TrajectoryCache(self.model(), budget=self.cache_budget, reserve=self.reserve, fold=fold)
            self._caches.append(best)
            del self._caches[: max(0, len(self._caches) - self.max_caches)]
        else:   # most recently used last
            self._caches.remove(best)
            self._caches.append(best)
        return best

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        import briefing

        t0 = time.monotonic()
        prompts = self.prompts()
        n_prompt = n_query = self.count(prompts.call_prompt(query))
        if n_prompt + self.max_new_tokens > self.reserve:
            raise briefing.BriefingError(
                f"The worker prompt ({n_prompt} tokens) plus max_new_tokens ({self.max_new_tokens}) exceed the cache "
                f"reserve ({self.reserve} positions). Shorten the query or raise BriefedWorker(reserve=...).")
        cache = self.cache_for_call(prompts.cache_text(trajectory))
        folds_before, prefilled_before = len(cache.folds), cache.prefilled_tokens
        cache.sync(prompts.cache_text(trajectory))
        # recall fills what the reserve leaves after the prompt with its recall header, and generation (8 tokens of
        # slack: a re-tokenised concatenation may differ from the sum of its parts by a few tokens)
        room = self.reserve - self.max_new_tokens - self.count(prompts.call_prompt(recall_query(query, "."))) - 8
        recalled = recall_folded(cache, query, min(self.recall_tokens, room))
        prompt = prompts.call_prompt(recall_query(query, recalled))
        n_prompt = self.count(prompt)
        # the question guides the compaction, not the recalled text before it (the fit grows with queries squared)
        ctx = cache.compact(prompt, selector=self.make_selector(), query_tokens=n_query if recalled else None)
        out = briefing.generate(ctx, self.gen_config())
        stats = ctx.stats
        return WorkerAnswer(
            text=out.text.strip(), input_tokens=int(stats.kept) + n_prompt,
            text_handoff_tokens=int(cache.tokens) + n_query, kept=int(stats.kept), total=int(stats.original_length),
            compaction=stats.model_dump(mode="json"), output_tokens=len(out.token_ids),
            latency_s=time.monotonic() - t0, worker=self.name,
            folds=[f.model_dump(mode="json") for f in cache.folds[folds_before:]],
            prefilled_tokens=cache.prefilled_tokens - prefilled_before, cache_positions=cache.length,
            trajectory_tokens=cache.tokens, recalled_tokens=self.count(recalled) if recalled else 0)

    def reset(self) -> None:
        self._caches.clear()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": getattr(self.lm, "name", None),
                "selector": repr(self.selector) if self.selector is not None else "AttentionMatching(tau=1.0)",
                "fold_guidance": self.fold.guidance.name if self.fold is not None else "mix",
                "cache_budget": self.cache_budget, "reserve": self.reserve, "recall_tokens": self.recall_tokens}
