"""Local transformers chat backend: the model's chat template, decoded with `briefing.generate`.

    backend = LocalChatBackend(briefing.load_model())          # or LocalChatBackend() to load the default
    backend.complete([{"role": "user", "content": "Hi"}])

Parameters: lm (a `briefing.LoadedModel`; None loads the embedded default on first use),
max_new_tokens, temperature, top_p, stop (stop strings), seed.
The whole conversation is re-encoded each call (`briefing.plain_context`), which is fine for the
short orchestrations this backend is meant for (tests, offline demos).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.backends.base import ChatBackend, ChatResponse

if TYPE_CHECKING:  # briefing imports torch: only at run time, lazily
    import briefing


@dataclass
class LocalChatBackend(ChatBackend):
    lm: briefing.LoadedModel | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    name: str = "local"

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"LocalChatBackend: max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature < float("inf"):
            raise ValueError(f"LocalChatBackend: temperature must be a finite number >= 0, got {self.temperature!r}.")
        if self.lm is not None:
            import briefing

            if not isinstance(self.lm, briefing.LoadedModel):
                raise TypeError(f"LocalChatBackend: lm must be a briefing.LoadedModel or None (the embedded default), "
                                f"got {type(self.lm).__name__}.")
        self.model = self.lm.name if self.lm is not None else "default"

    def _model(self) -> briefing.LoadedModel:
        if self.lm is None:
            import briefing

            self.lm = briefing.load_model()
            self.model = self.lm.name
        return self.lm

    @property
    def max_context(self) -> int | None:
        return int(self._model().max_context)

    def count_tokens(self, text: str) -> int:
        return int(self._model().count_tokens(text))

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        return self.count_tokens(self._model().chat_text(messages))

    def keep_last_tokens(self, text: str, tokens: int) -> str:
        lm = self._model()
        ids = lm.tokenizer.encode(text, add_special_tokens=False)
        return lm.tokenizer.decode(ids[len(ids) - tokens:]) if tokens > 0 else ""

    def complete(self, messages: list[dict[str, str]], **overrides: Any) -> ChatResponse:
        import briefing

        lm = self._model()
        prompt = lm.chat_text(messages)
        cfg = briefing.GenerationConfig(
            max_new_tokens=overrides.get("max_tokens", self.max_new_tokens),
            temperature=overrides.get("temperature", self.temperature),
            top_p=self.top_p, stop=list(overrides.get("stop", self.stop)), seed=overrides.get("seed", self.seed))
        t0 = time.monotonic()
        out = briefing.generate(briefing.plain_context(lm, prompt), cfg)
        return ChatResponse(text=out.text, input_tokens=int(out.prompt_tokens or lm.count_tokens(prompt)),
                            output_tokens=len(out.token_ids), model=self.model,
                            finish_reason=out.finish_reason, latency_s=time.monotonic() - t0)
