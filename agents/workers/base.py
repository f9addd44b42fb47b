"""Worker interface: ``answer(query, trajectory) -> WorkerAnswer``.

`trajectory` is the orchestrator's trajectory rendered as append-only text (the rendering after
n+1 events starts with the rendering after n events), so a worker that keeps state across calls
(the briefed worker's KV cache) only has to process the new text.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from agents.backends.base import ChatBackend
from briefing.options import check_int, check_number
from briefing.stats import CompactionStats, FoldStats

# What `worker_batch(queries)` gives in place of the answer to a query that failed (a plain str, which crosses the
# sandbox boundary): this prefix, then the error ("[worker error] BackendError: HTTP 500 from ..."), so a cell tells
# failures apart with `answer.startswith("[worker error]")`; the run's `worker_call` events carry the same error.
WORKER_ERROR_PREFIX = "[worker error] "


class BriefingStats(BaseModel):
    """What a briefed worker's cache did for one call.

    kept / total: trajectory positions kept by the call's compaction / held by the cache. compaction: its figures.
    folds: what each fold of the persistent cache during this call did. prefilled_tokens: trajectory tokens forwarded
    by this call (the new text only). cache_positions / trajectory_tokens: positions the cache holds / tokens of the
    whole trajectory. recalled_tokens: trajectory tokens recalled once the cache has folded (as text in the prompt,
    or as re-attached keys and values). recalled: the character ranges [start, stop) of the trajectory recalled, in
    the order they sit before the question; recall: how (`Recalled.how`: "bm25", "latent:attach", ...).
    recall_s: the recall's own time (finding and fetching); lookup_s: the part of it spent on the latent lookup (the
    question's forward over the cache and the blocks' ranking; 0: none was made); archive_bytes: bytes of the cache's
    archive (keys and values its folds compacted away, kept for latent recall; 0 without one). pinned: the character
    ranges of the trajectory's unfolded tail that the call's compaction kept whole in every head (`LatentRecall.pin`).
    """

    kept: int
    total: int
    compaction: CompactionStats
    folds: list[FoldStats] = Field(default_factory=list)
    prefilled_tokens: int = 0
    cache_positions: int = 0
    trajectory_tokens: int = 0
    recalled_tokens: int = 0
    recalled: list[tuple[int, int]] = Field(default_factory=list)
    recall: str = ""
    recall_s: float = 0.0
    lookup_s: float = 0.0
    archive_bytes: int = 0
    pinned: list[tuple[int, int]] = Field(default_factory=list)

    @property
    def kept_ratio(self) -> float | None:
        return self.kept / self.total if self.total else None


class WorkerAnswer(BaseModel):
    """One worker call: the record a worker returns, the runtime logs and the `worker_call` event embeds.

    input_tokens: tokens billed as input: prompt text tokens, plus retained KV positions for the briefed worker
        (for the text worker: the whole pasted trajectory + query).
    text_handoff_tokens: what pasting the trajectory as text before the query would have cost.
    output_tokens: generated tokens. child_run: run id when the worker was a nested RLM run.
    briefing: what the briefed worker's cache did (None for the other workers).
    """

    text: str
    worker: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    text_handoff_tokens: int = 0
    latency_s: float = 0.0
    child_run: str | None = None
    briefing: BriefingStats | None = None

    @property
    def kept_ratio(self) -> float | None:
        return self.briefing.kept_ratio if self.briefing is not None else None


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
    thread_safe: `answer_call` may run in several threads at once (True, default: `worker_batch` runs up to
    `Budgets.max_concurrent_subcalls` calls at a time); False: the runtime makes one call at a time (a worker with
    state it does not lock: a KV cache, a nested run's policy).
    """

    name: str = "worker"
    takes_context: ClassVar[bool] = False
    thread_safe: ClassVar[bool] = True

    @abstractmethod
    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        ...

    def answer_call(self, query: str, trajectory: str, call: CallContext, context: object = None) -> WorkerAnswer:
        """One ``worker(...)`` call inside a run (`call` says where). Default: `answer`, with `context` (only
        given when `takes_context`) appended to the query."""
        if context is not None:
            query = f"{query}\n\n{context}"
        return self.answer(query, trajectory)

    def answer_batch(self, queries: list[str], trajectory: str) -> list[WorkerAnswer | Exception]:
        """Several queries on the same trajectory, answers in query order; a query that failed gives its exception
        in its place and the rest stand. Default: one `answer` after another; a worker that can share work across
        the batch (the briefed worker: one scoring forward, one batched fit and decode) overrides it."""
        out: list[WorkerAnswer | Exception] = []
        for query in queries:
            try:
                out.append(self.answer(query, trajectory))
            except Exception as e:   # this query's failure, reported in its place
                out.append(e)
        return out

    async def aanswer(self, query: str, trajectory: str) -> WorkerAnswer:
        """`answer` without blocking the event loop (default: in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self.answer, query, trajectory)

    async def aanswer_batch(self, queries: list[str], trajectory: str) -> list[WorkerAnswer | Exception]:
        """`answer_batch` without blocking the event loop (default: in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self.answer_batch, queries, trajectory)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def chat_backend(owner: str, backend: ChatBackend | None, device: str = "auto", dtype: str = "auto") -> ChatBackend:
    """`backend`, checked; None: a `LocalChatBackend` on the embedded default model (loaded on first use, on `device`
    in `dtype`)."""
    if backend is None:
        from agents.backends.local import LocalChatBackend

        return LocalChatBackend(seed=0, device=device, dtype=dtype)
    if not isinstance(backend, ChatBackend):
        raise TypeError(f"{owner}: backend must be an agents.ChatBackend (LocalChatBackend(lm) for a local model, "
                        f"OpenAIChatBackend for an API) or None, got {type(backend).__name__}.")
    return backend


def local_backend(owner: str, backend: ChatBackend) -> Any:
    """`backend` if it runs a local model (a `LocalChatBackend`), else a clear error: a context can only be held
    and scored where the weights are."""
    from agents.backends.local import LocalChatBackend

    if not isinstance(backend, LocalChatBackend):
        raise TypeError(f"{owner}.brief needs a LocalChatBackend (a local model's context), got "
                        f"{type(backend).__name__}; use answer() with an HTTP backend.")
    return backend


def check_generation(owner: str, max_new_tokens: object, temperature: object) -> None:
    check_int(owner, "max_new_tokens", max_new_tokens, low=1, error=ValueError)
    check_number(owner, "temperature", temperature, low=0, error=ValueError)


def generation_options(max_new_tokens: int, temperature: float, stop: list[str]) -> dict[str, Any]:
    """The `ChatBackend.complete` overrides of a worker's generation settings (no empty stop list sent)."""
    options: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature}
    if stop:
        options["stop"] = list(stop)
    return options

