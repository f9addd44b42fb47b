"""Shared bits of the local-model workers: lazy model loading, generation settings."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # briefing imports torch: only at run time, lazily
    import briefing

from agents.workers.prompt import WorkerPrompt


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
