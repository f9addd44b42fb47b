"""Local transformers chat backend: the model's chat template, decoded with `briefing.generate`.

    backend = LocalChatBackend(briefing.load_model())          # or LocalChatBackend() to load the default
    backend.complete([{"role": "user", "content": "Hi"}])

Parameters: lm (a `briefing.LoadedModel`; None loads the embedded default on first use, on `device` in `dtype`),
max_new_tokens, temperature, top_p, stop (stop strings), seed.
The whole conversation is re-encoded each call (`briefing.plain_context`), which is fine for the
short orchestrations this backend is meant for (tests, offline demos).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.backends.base import ChatBackend, ChatResponse
from briefing.options import check_int, check_number, check_type

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
    context_limit: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    name: str = "local"

    def __post_init__(self) -> None:
        check_int("LocalChatBackend", "max_new_tokens", self.max_new_tokens, low=1, error=ValueError)
        check_number("LocalChatBackend", "temperature", self.temperature, low=0, error=ValueError)
        check_int("LocalChatBackend", "context_limit", self.context_limit, low=1, none=True,
                  what="tokens the model may read, below its own window; None: its window", error=ValueError)
        if self.lm is not None:
            import briefing

            check_type("LocalChatBackend", "lm", self.lm, briefing.LoadedModel,
                       "a briefing.LoadedModel or None (the embedded default)")
        self.model = self.lm.name if self.lm is not None else "default"

    def _model(self) -> briefing.LoadedModel:
        if self.lm is None:
            import briefing

            self.lm = briefing.load_model(device=self.device, dtype=self.dtype)
            self.model = self.lm.name
        return self.lm

    @property
    def max_context(self) -> int | None:
        window = int(self._model().max_context)
        return min(window, self.context_limit) if self.context_limit else window

    def count_tokens(self, text: str) -> int:
        return int(self._model().count_tokens(text))

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        return self.count_tokens(self._model().chat_text(messages))

    def keep_last_tokens(self, text: str, tokens: int) -> str:
        lm = self._model()
        ids = lm.tokenizer.encode(text, add_special_tokens=False)
        return lm.tokenizer.decode(ids[len(ids) - tokens:]) if tokens > 0 else ""

    def describe(self) -> dict[str, str]:
        lm = self._model()
        return {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."),
                "prompt_format": lm.prompt_format}

    def context(self, messages: list[dict[str, str]]) -> briefing.CompactedCache:
        """The context a completion of `messages` decodes on: the chat template's text, prefilled from position 0."""
        import briefing

        lm = self._model()
        return briefing.plain_context(lm, lm.chat_text(messages))

    def complete(self, messages: list[dict[str, str]], **overrides: Any) -> ChatResponse:
        import briefing

        cfg = briefing.GenerationConfig(
            max_new_tokens=overrides.get("max_tokens", self.max_new_tokens),
            temperature=overrides.get("temperature", self.temperature),
            top_p=self.top_p, stop=list(overrides.get("stop", self.stop)), seed=overrides.get("seed", self.seed))
        t0 = time.monotonic()
        out = briefing.generate(self.context(messages), cfg)
        return ChatResponse(text=out.text, input_tokens=int(out.prompt_tokens),
                            output_tokens=len(out.token_ids), model=self.model,
                            finish_reason=out.finish_reason, latency_s=time.monotonic() - t0)
