"""PlainWorker: the query alone, no trajectory (the lower bound on what a worker knows).

Parameters: backend (a `ChatBackend`; None: the embedded default model); max_new_tokens, temperature, stop;
system (the system message). Reports text_handoff_tokens as what the text handoff would have cost (the
`TextWorker` prompt of the same trajectory and query), so runs with different workers are comparable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agents.backends.base import ChatBackend
from agents.workers.base import Worker, WorkerAnswer, chat_backend, check_generation, generation_options, local_backend
from agents.workers.local import Briefing
from agents.workers.prompt import PLAIN_SYSTEM, TRAJECTORY_HEADER


@dataclass
class PlainWorker(Worker):
    backend: ChatBackend | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    system: str = PLAIN_SYSTEM
    device: str = "auto"   # where the embedded default runs when no backend is given
    dtype: str = "auto"
    name: str = "plain"

    def __post_init__(self) -> None:
        self.backend = chat_backend("PlainWorker", self.backend, self.device, self.dtype)
        check_generation("PlainWorker", self.max_new_tokens, self.temperature)

    def messages(self, query: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": query}]

    def handoff(self, query: str, trajectory: str) -> int:
        """What pasting the trajectory before the query would have cost."""
        return self.backend.count_prompt([{"role": "system", "content": TRAJECTORY_HEADER + trajectory},
                                          {"role": "user", "content": query}])

    def brief(self, query: str, trajectory: str) -> Briefing:
        """The context a local model answers on: the query alone (needs a `LocalChatBackend`)."""
        ctx = local_backend("PlainWorker", self.backend).context(self.messages(query))
        return Briefing(context=ctx, query=query, input_tokens=len(ctx.prompt_ids),
                        text_handoff_tokens=self.handoff(query, trajectory), chars=len(trajectory))

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        t0 = time.monotonic()
        r = self.backend.complete(self.messages(query), **generation_options(self.max_new_tokens, self.temperature,
                                                                              self.stop))
        handoff = self.handoff(query, trajectory)
        return WorkerAnswer(text=r.text.strip(), input_tokens=r.input_tokens, text_handoff_tokens=handoff,
                            output_tokens=r.output_tokens, latency_s=time.monotonic() - t0, worker=self.name)

    def describe(self) -> dict[str, Any]:
        local = self.backend.describe() if hasattr(self.backend, "describe") else {}
        return {"name": self.name, "backend": self.backend.name, "model": self.backend.model, **local}
