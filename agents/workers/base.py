"""Worker interface: ``answer(query, trajectory) -> WorkerAnswer``.

`trajectory` is the orchestrator's trajectory rendered as append-only text (the rendering after
n+1 events starts with the rendering after n events), so a worker that keeps state across calls
(the briefed worker's KV cache) only has to process the new text.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel


class WorkerAnswer(BaseModel):
    """One worker call.

    input_tokens: tokens billed as input: prompt text tokens, plus retained KV positions for the
        briefed worker (for the text worker: the whole pasted trajectory + query).
    text_handoff_tokens: what pasting the trajectory as text before the query would have cost.
    kept / total: trajectory KV positions kept by compaction / present (briefed worker only).
    compaction: `briefing.CompactionStats` as a dict (briefed worker only).
    output_tokens: generated tokens. child_run: run id when the worker was a nested RLM run.
    folds: what each fold of the persistent cache during this call did (`briefing.FoldStats` as dicts: span,
        kept, time, guidance); prefilled_tokens: trajectory tokens forwarded by this call (the new text only);
        cache_positions / trajectory_tokens: positions the persistent cache holds / tokens of the whole trajectory
        (briefed worker only).
    """

    text: str
    input_tokens: int = 0
    text_handoff_tokens: int = 0
    kept: int | None = None
    total: int | None = None
    compaction: dict[str, Any] | None = None
    latency_s: float = 0.0
    output_tokens: int = 0
    worker: str = ""
    child_run: str | None = None
    folds: list[dict[str, Any]] | None = None
    prefilled_tokens: int | None = None
    cache_positions: int | None = None
    trajectory_tokens: int | None = None

    @property
    def kept_ratio(self) -> float | None:
        if self.kept is None or not self.total:
            return None
        return self.kept / self.total


class Worker(ABC):
    """A model the orchestrator can call from the REPL as ``worker(query)``."""

    name: str = "worker"

    @abstractmethod
    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
