"""BriefedWorker: latent briefing, the trajectory handed over as a compacted KV cache.

Idea: "Latent Briefing" (share the orchestrator's state with workers at the representation level)
on top of Attention Matching KV compaction (Zweiger et al., "Fast KV Compaction via Attention
Matching"), with task-guided queries: the worker prompt of the current call decides which
trajectory positions are kept (see `briefing` and docs/DESIGN).

Per call:
1. `cache.sync(head + header + trajectory)`: a persistent `briefing.TrajectoryCache` prefills only
   the text added since the previous call (the trajectory rendering is append-only);
2. `cache.compact(prompt, selector)`: with the default `AttentionMatching(tau=1.0)`, scores positions with the
   prompt's queries, keeps those above median + tau * MAD, fits beta and values; the full cache is not touched;
3. `briefing.generate` on the compacted cache.

Parameters:
    lm: `briefing.LoadedModel` (None loads the embedded SmolLM2-135M on first use)
    selector: the `briefing.Selector` that compacts the trajectory per call (None: the default
        `briefing.AttentionMatching(tau=1.0)`), e.g. `briefing.AttentionMatching(ratio=0.2)`, `briefing.KeepAll()`
    max_new_tokens (>= 1), temperature (>= 0), stop: generation
    max_caches: trajectories kept warm at once, >= 1 (a new run starts a new cache; the oldest is dropped)
Billed input tokens per call: kept positions + prompt tokens. `text_handoff_tokens`: tokens of the
same text pasted whole (what `TextWorker` bills).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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

    def make_selector(self) -> briefing.Selector:
        if self.selector is not None:
            return self.selector
        import briefing

        return briefing.AttentionMatching(tau=1.0)

    def cache_for(self, text: str) -> briefing.TrajectoryCache:
        """The warm cache whose text is the longest prefix of `text` (or a new one), synced to it."""
        import briefing

        best = max((c for c in self._caches if text.startswith(c.text)), key=lambda c: len(c.text), default=None)
        if best is None:
            best = briefing.TrajectoryCache(self.model())
            self._caches.append(best)
            del self._caches[: max(0, len(self._caches) - self.max_caches)]
        else:   # most recently used last
            self._caches.remove(best)
            self._caches.append(best)
        best.sync(text)
        return best

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        import briefing

        t0 = time.monotonic()
        prompts = self.prompts()
        prompt = prompts.call_prompt(query)
        n_prompt = self.count(prompt)
        text = prompts.cache_text(trajectory)
        reserve = n_prompt + self.max_new_tokens + 8
        if self.count(text) + reserve > int(getattr(self.model(), "max_context", 0) or 1 << 30):
            # past the model's window: drop the oldest trajectory text (the cache is rebuilt each call then)
            head = self.count(prompts.cache_text(""))
            text = prompts.cache_text(self.fit_trajectory(trajectory, reserve + head + 16))
        cache = self.cache_for(text)
        ctx = cache.compact(prompt, selector=self.make_selector())
        out = briefing.generate(ctx, self.gen_config())
        stats = ctx.stats
        return WorkerAnswer(
            text=out.text.strip(), input_tokens=int(stats.kept) + n_prompt,
            text_handoff_tokens=int(cache.length) + n_prompt, kept=int(stats.kept), total=int(stats.original_length),
            compaction=stats.model_dump(mode="json"), output_tokens=len(out.token_ids),
            latency_s=time.monotonic() - t0, worker=self.name)

    def reset(self) -> None:
        self._caches.clear()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": getattr(self.lm, "name", None),
                "selector": repr(self.selector) if self.selector is not None else "AttentionMatching(tau=1.0)"}
