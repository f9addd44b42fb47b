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
from agents.workers.base import Worker, WorkerAnswer, chat_backend, check_generation, generation_options
from agents.workers.prompt import PLAIN_SYSTEM, TRAJECTORY_HEADER


@dataclass
class PlainWorker(Worker):
    backend: ChatBackend | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    system: str = PLAIN_SYSTEM
    name: str = "plain"

    def __post_init__(self) -> None:
        self.backend = chat_backend("PlainWorker", self.backend)
        check_generation("PlainWorker", self.max_new_tokens, self.temperature)

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        t0 = time.monotonic()
        msgs = [{"role": "system", "content": self.system}, {"role": "user", "content": query}]
        r = self.backend.complete(msgs, **generation_options(self.max_new_tokens, self.temperature, self.stop))
        handoff = self.backend.count_prompt([{"role": "system", "content": TRAJECTORY_HEADER + trajectory},
                                             {"role": "user", "content": query}])
        return WorkerAnswer(text=r.text.strip(), input_tokens=r.input_tokens, text_handoff_tokens=handoff,
                            output_tokens=r.output_tokens, latency_s=time.monotonic() - t0, worker=self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend.name, "model": self.backend.model}
