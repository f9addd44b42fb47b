"""TextWorker: the baseline handoff, the whole trajectory pasted as text before the query.

Parameters: backend (a `ChatBackend`: `LocalChatBackend(lm)` for a local model, `OpenAIChatBackend` for an
API; None: the embedded default model); max_new_tokens, temperature, stop; header (text introducing the
trajectory). The trajectory goes in the system message after the header, the query is the user message:
on a local model exactly the text the briefed worker keeps as KV (`WorkerPrompt.text_prompt`).
Where the backend knows its window (`max_context`), the oldest trajectory text is cut to fit.
Every call bills the full trajectory: input_tokens == text_handoff_tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agents.backends.base import ChatBackend
from agents.workers.base import Worker, WorkerAnswer, chat_backend, check_generation, generation_options, local_backend
from agents.workers.local import Briefing
from agents.workers.prompt import TRAJECTORY_HEADER

CUT_MARK = "[... earlier trajectory cut ...]\n"


@dataclass
class TextWorker(Worker):
    backend: ChatBackend | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    header: str = TRAJECTORY_HEADER
    device: str = "auto"   # where the embedded default runs when no backend is given
    dtype: str = "auto"
    name: str = "text"

    def __post_init__(self) -> None:
        self.backend = chat_backend("TextWorker", self.backend, self.device, self.dtype)
        check_generation("TextWorker", self.max_new_tokens, self.temperature)

    def messages(self, trajectory: str, query: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.header + trajectory}, {"role": "user", "content": query}]

    def fit(self, trajectory: str, query: str) -> str:
        """Drop the oldest trajectory text when the prompt would not fit the backend's window."""
        limit = self.backend.max_context
        if not limit:
            return trajectory
        reserve = self.backend.count_prompt(self.messages("", query)) + self.max_new_tokens + 24
        if self.backend.count_tokens(trajectory) + reserve <= limit:
            return trajectory
        keep = max(0, limit - reserve - self.backend.count_tokens(CUT_MARK))
        return CUT_MARK + self.backend.keep_last_tokens(trajectory, keep)

    def brief(self, query: str, trajectory: str) -> Briefing:
        """The context a local model answers on (the cut trajectory pasted before the query); needs a
        `LocalChatBackend`, since only a local model's context can be held and scored."""
        pasted = self.fit(trajectory, query)
        ctx = local_backend("TextWorker", self.backend).context(self.messages(pasted, query))
        n, kept = len(ctx.prompt_ids), len(pasted.removeprefix(CUT_MARK))
        return Briefing(context=ctx, query=query, input_tokens=n, text_handoff_tokens=n,
                        pasted=[(len(trajectory) - kept, len(trajectory))] if kept else [],
                        chars=len(trajectory))

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        t0 = time.monotonic()
        msgs = self.messages(self.fit(trajectory, query), query)
        r = self.backend.complete(msgs, **generation_options(self.max_new_tokens, self.temperature, self.stop))
        return WorkerAnswer(text=r.text.strip(), input_tokens=r.input_tokens, text_handoff_tokens=r.input_tokens,
                            output_tokens=r.output_tokens, latency_s=time.monotonic() - t0, worker=self.name)

    def describe(self) -> dict[str, Any]:
        local = self.backend.describe() if hasattr(self.backend, "describe") else {}
        return {"name": self.name, "backend": self.backend.name, "model": self.backend.model,
                "max_new_tokens": self.max_new_tokens, **local}
