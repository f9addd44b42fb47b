"""TextWorker: the baseline handoff, the whole trajectory pasted as text before the query.

Parameters: lm (local `briefing.LoadedModel`; None loads the embedded default) or backend (a
`ChatBackend`, e.g. an OpenAI-compatible API; then the trajectory goes in the system message);
max_new_tokens, temperature, stop; header (text introducing the trajectory).
Every call bills the full trajectory: input_tokens == text_handoff_tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agents.workers._local import LocalModelMixin
from agents.workers.base import Worker, WorkerAnswer
from agents.workers.prompt import TRAJECTORY_HEADER


@dataclass
class TextWorker(LocalModelMixin, Worker):
    lm: Any = None
    backend: Any = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    header: str = TRAJECTORY_HEADER
    name: str = "text"

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        t0 = time.monotonic()
        if self.backend is not None:
            msgs = [{"role": "system", "content": self.header + trajectory}, {"role": "user", "content": query}]
            r = self.backend.complete(msgs, max_tokens=self.max_new_tokens)
            return WorkerAnswer(text=r.text.strip(), input_tokens=r.input_tokens, text_handoff_tokens=r.input_tokens,
                                output_tokens=r.output_tokens, latency_s=time.monotonic() - t0, worker=self.name)
        import briefing

        lm = self.model()
        fixed = self.count(self.prompts().cache_text("")) + self.count(self.prompts().call_prompt(query))
        trajectory = self.fit_trajectory(trajectory, reserve=fixed + self.max_new_tokens + 24)
        prompt = self.prompts().text_prompt(trajectory, query)
        out = briefing.generate(briefing.plain_context(lm, prompt), self.gen_config())
        n_in = int(out.prompt_tokens or self.count(prompt))
        return WorkerAnswer(text=out.text.strip(), input_tokens=n_in, text_handoff_tokens=n_in,
                            output_tokens=len(out.token_ids), latency_s=time.monotonic() - t0, worker=self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": getattr(self.lm, "name", None) or getattr(self.backend, "model", None),
                "max_new_tokens": self.max_new_tokens}
