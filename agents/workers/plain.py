"""PlainWorker: the query alone, no trajectory (the lower bound on what a worker knows).

Parameters: lm (local model; None loads the embedded default) or backend (`ChatBackend`);
max_new_tokens, temperature, stop; system (the system message).
Reports text_handoff_tokens as what the text handoff would have cost (trajectory + query), so runs
with different workers are comparable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agents.workers._local import LocalModelMixin
from agents.workers.base import Worker, WorkerAnswer
from agents.workers.prompt import PLAIN_SYSTEM


@dataclass
class PlainWorker(LocalModelMixin, Worker):
    lm: Any = None
    backend: Any = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    system: str = PLAIN_SYSTEM
    name: str = "plain"

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        t0 = time.monotonic()
        if self.backend is not None:
            msgs = [{"role": "system", "content": self.system}, {"role": "user", "content": query}]
            r = self.backend.complete(msgs, max_tokens=self.max_new_tokens)
            handoff = self.backend.count_tokens(trajectory) + r.input_tokens
            return WorkerAnswer(text=r.text.strip(), input_tokens=r.input_tokens, text_handoff_tokens=handoff,
                                output_tokens=r.output_tokens, latency_s=time.monotonic() - t0, worker=self.name)
        import briefing

        lm = self.model()
        prompt = self.prompts().plain_prompt(query)
        out = briefing.generate(briefing.plain_context(lm, prompt), self.gen_config())
        n_in = int(out.prompt_tokens or self.count(prompt))
        handoff = self.count(self.prompts().text_prompt(trajectory, query))
        return WorkerAnswer(text=out.text.strip(), input_tokens=n_in, text_handoff_tokens=handoff,
                            output_tokens=len(out.token_ids), latency_s=time.monotonic() - t0, worker=self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": getattr(self.lm, "name", None) or getattr(self.backend, "model", None)}
