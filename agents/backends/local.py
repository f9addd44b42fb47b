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
from typing import Any

from agents.backends.base import ChatBackend, ChatResponse


def apply_chat_template(lm: Any, messages: list[dict[str, str]]) -> str:
    tok = getattr(lm, "tokenizer", None)
    if tok is not None and getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # no template: a plain transcript
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nassistant:"


@dataclass
class LocalChatBackend(ChatBackend):
    lm: Any = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    name: str = "local"

    def __post_init__(self) -> None:
        self.model = getattr(self.lm, "name", "") if self.lm is not None else "default"

    def _model(self) -> Any:
        if self.lm is None:
            import briefing

            self.lm = briefing.load_model()
            self.model = getattr(self.lm, "name", "default")
        return self.lm

    def count_tokens(self, text: str) -> int:
        return int(self._model().count_tokens(text))

    def complete(self, messages: list[dict[str, str]], **overrides: Any) -> ChatResponse:
        import briefing

        lm = self._model()
        prompt = apply_chat_template(lm, messages)
        cfg = briefing.GenerationConfig(
            max_new_tokens=overrides.get("max_tokens", self.max_new_tokens),
            temperature=overrides.get("temperature", self.temperature),
            top_p=self.top_p, stop=list(overrides.get("stop", self.stop)), seed=self.seed)
        t0 = time.monotonic()
        out = briefing.generate(briefing.plain_context(lm, prompt), cfg)
        return ChatResponse(text=out.text, input_tokens=int(out.prompt_tokens or lm.count_tokens(prompt)),
                            output_tokens=len(out.token_ids), model=self.model,
                            finish_reason=out.finish_reason, latency_s=time.monotonic() - t0)
