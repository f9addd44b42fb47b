"""RLMWorker: a worker that is itself an RLM run (recursion).

    leaf = BriefedWorker(lm)
    child = RLM(ChunkScanPolicy(chunk_chars=400), leaf, budgets=Budgets(max_iterations=8))
    root = RLM(MyPolicy(), RLMWorker(child), budgets=Budgets(max_depth=1))

Each `worker(query)` of the parent starts a child run whose query is `query` and whose context is
chosen by `context` ("query": the query text itself, as sub-calls in the RLM reference do;
"trajectory": the parent's trajectory text; or a function (query, trajectory) -> context).
`worker(query, text)` in the parent's REPL gives the child `text` as its context instead.
The child's events go into the parent's log (its `run_start` names the parent run and call), its
agents into the parent's call graph (an edge from the parent orchestrator to the child orchestrator),
its usage into the parent's usage under "d<depth>:" keys.
Depth: a run at depth d may start children while d + 1 <= the root's `Budgets.max_depth` (and the
parent's own); past it, the child RLM's leaf worker answers the query directly.
Called outside a run (`answer`), it runs the child as a root run of its own.
`rlm_query(prompt)` in the parent's REPL (the reference RLM's name) is `worker(prompt)`; `worker_batch` and
`rlm_query_batched` start the child runs one after another (the child RLM's policy and worker serve one run at a
time: `thread_safe` is False).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from agents.workers.base import CallContext, Worker, WorkerAnswer

if TYPE_CHECKING:
    from rlm.runtime import RLM


class RLMWorker(Worker):
    takes_context: ClassVar[bool] = True
    thread_safe: ClassVar[bool] = False   # the child RLM's policy and worker serve one run at a time

    def __init__(self, rlm: RLM, context: str | Callable[[str, str], Any] = "query", name: str = "rlm") -> None:
        from rlm.runtime import RLM

        if not isinstance(rlm, RLM):
            raise TypeError(f"RLMWorker: rlm must be an rlm.RLM (the child run), got {type(rlm).__name__}.")
        if not callable(context) and context not in ("query", "trajectory"):
            raise ValueError(f"RLMWorker: context must be 'query', 'trajectory' or a function (query, trajectory) -> "
                             f"context, got {context!r}.")
        self.rlm, self.context, self.name = rlm, context, name

    def child_context(self, query: str, trajectory: str) -> Any:
        if callable(self.context):
            return self.context(query, trajectory)
        return trajectory if self.context == "trajectory" else query

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        return self._answer(query, trajectory, None)

    def answer_call(self, query: str, trajectory: str, call: CallContext, context: object = None) -> WorkerAnswer:
        if not call.may_nest:       # too deep: the leaf worker answers directly
            leaf = self.rlm.worker
            q = query if context is None else f"{query}\n\n{context}"
            ans = leaf.answer(q, trajectory)
            return ans.model_copy(update={"worker": ans.worker or leaf.name})
        return self._answer(query, trajectory, call, context)

    def _answer(self, query: str, trajectory: str, call: CallContext | None, context: object = None) -> WorkerAnswer:
        t0 = time.monotonic()
        ctx = context if context is not None else self.child_context(query, trajectory)
        res = self.rlm.run(query, ctx, parent=call)
        usage = res.usage.values()
        return WorkerAnswer(text=res.answer or "", input_tokens=sum(u.input_tokens for u in usage),
                            output_tokens=sum(u.output_tokens for u in usage),
                            text_handoff_tokens=sum(u.text_handoff_tokens for u in usage),
                            latency_s=time.monotonic() - t0, worker=self.name, child_run=res.run_id)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "child_policy": self.rlm.policy.name, "child_worker": self.rlm.worker.name,
                "context": self.context if isinstance(self.context, str) else "custom"}
