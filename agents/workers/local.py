"""What the local-model workers share: lazy model loading, generation settings, and `Briefing`, the public handle
on one call's context (what the worker answers on), which `brief()` returns.

`answer()` is `brief()` then `Briefing.generate()`; replays and benchmarks use the handle instead of the workers'
internals: score candidate answers (`loglikelihood`), inspect what the call kept or recalled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agents.recall import Recalled
from agents.workers.base import BriefingStats
from agents.workers.prompt import WorkerPrompt

if TYPE_CHECKING:  # briefing imports torch: only at run time, lazily
    import briefing


@dataclass
class Briefing:
    """One call's context. context: the `briefing.CompactedCache` the worker answers on (the call prompt already
    forwarded). input_tokens: what the call bills as input; text_handoff_tokens: what pasting the trajectory as text
    would have cost. stats: what a briefed worker's cache did (None for a text or plain worker). recalled: what a
    recall brought back (its ranges index the trajectory's characters)."""

    context: briefing.CompactedCache
    query: str
    input_tokens: int
    text_handoff_tokens: int
    stats: BriefingStats | None = None
    recalled: Recalled = field(default_factory=Recalled)

    def generate(self, config: briefing.GenerationConfig | None = None) -> briefing.GenerationResult:
        """Decode the answer (the context stays reusable)."""
        import briefing

        return briefing.generate(self.context, config)

    def loglikelihood(self, options: str | list[str]) -> float | list[float]:
        """Summed log-probability of each continuation (one string: one float)."""
        import briefing

        if isinstance(options, str):
            return briefing.loglikelihood(self.context, options)
        return [briefing.loglikelihood(self.context, o) for o in options]


class LocalModelMixin:
    lm: briefing.LoadedModel | None
    header: str
    max_new_tokens: int
    temperature: float
    stop: list[str]

    def model(self) -> briefing.LoadedModel:
        if self.lm is None:
            import briefing

            self.lm = briefing.load_model()
        return self.lm

    def prompts(self) -> WorkerPrompt:
        cached = getattr(self, "_prompts", None)
        if cached is None:
            cached = WorkerPrompt.for_model(self.model(), **self._prompt_overrides())
            self._prompts = cached
        return cached

    def _prompt_overrides(self) -> dict[str, str]:
        return {"header": self.header} if self.header else {}

    def gen_config(self) -> briefing.GenerationConfig:
        import briefing

        return briefing.GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                         top_p=1.0, stop=list(self.stop), seed=0)

    def count(self, text: str) -> int:
        return int(self.model().count_tokens(text))
