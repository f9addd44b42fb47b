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

    def fit_trajectory(self, trajectory: str, reserve: int) -> str:
        """Drop the oldest part of the trajectory when the text would not fit the model's window."""
        lm = self.model()
        limit = int(getattr(lm, "max_context", 0) or 0)
        if not limit or self.count(trajectory) + reserve <= limit:
            return trajectory
        ids = lm.tokenizer.encode(trajectory, add_special_tokens=False)
        keep = max(0, limit - reserve)
        return "[... earlier trajectory cut ...]\n" + lm.tokenizer.decode(ids[len(ids) - keep:])
