"""Worker interface: ``answer(query, trajectory) -> WorkerAnswer``.

`trajectory` is the orchestrator's trajectory rendered as append-only text (the rendering after
n+1 events starts with the rendering after n events), so a worker that keeps state across calls
(the briefed worker's KV cache) only has to process the new text.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from agents.backends.base import ChatBackend


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
        (briefed worker only). recalled_tokens: tokens of trajectory text recalled into the prompt once
        the cache has folded (`agents.recall`; briefed worker only).
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
    recalled_tokens: int | None = None

    @property
    def kept_ratio(self) -> float | None:
        if self.kept is None or not self.total:
            return None
        return self.kept / self.total


@dataclass(frozen=True)
class CallContext:
    """Where a ``worker(...)`` call happens inside a run: passed by the runtime to `Worker.answer_call`.

    run_id / call_id: the calling run and this call (a nested run hangs under them in the log and call graph).
    depth: the calling run's depth (0 for the root). max_depth: the deepest depth a run may have.
    """

    run_id: str
    call_id: str
    depth: int
    max_depth: int

    @property
    def may_nest(self) -> bool:
        """Whether this call may start a run one level deeper."""
        return self.depth + 1 <= self.max_depth


class Worker(ABC):
    """A model the orchestrator can call from the REPL as ``worker(query)``.

    takes_context: ``worker(query, text)`` hands `text` to `answer_call` as its own context (a nested RLM
    run works on it); False (default): the runtime appends the text to the query.
    """

    name: str = "worker"
    takes_context: ClassVar[bool] = False

    @abstractmethod
    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        ...

    def answer_call(self, query: str, trajectory: str, call: CallContext, context: object = None) -> WorkerAnswer:
        """One ``worker(...)`` call inside a run (`call` says where). Default: `answer`, with `context` (only
        given when `takes_context`) appended to the query."""
        if context is not None:
            query = f"{query}\n\n{context}"
        return self.answer(query, trajectory)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def chat_backend(owner: str, backend: ChatBackend | None) -> ChatBackend:
    """`backend`, checked; None: a `LocalChatBackend` on the embedded default model (loaded on first use)."""
    if backend is None:
        from agents.backends.local import LocalChatBackend

        return LocalChatBackend(seed=0)
    if not isinstance(backend, ChatBackend):
        raise TypeError(f"{owner}: backend must be an agents.ChatBackend (LocalChatBackend(lm) for a local model, "
                        f"OpenAIChatBackend for an API) or None, got {type(backend).__name__}.")
    return backend


def check_generation(owner: str, max_new_tokens: object, temperature: object) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"{owner}: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"{owner}: temperature must be a finite number >= 0, got {temperature!r}.")


def generation_options(max_new_tokens: int, temperature: float, stop: list[str]) -> dict[str, Any]:
    """The `ChatBackend.complete` overrides of a worker's generation settings (no empty stop list sent)."""
    options: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature}
    if stop:
        options["stop"] = list(stop)
    return options

