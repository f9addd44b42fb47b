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
"""
from __future__ import annotations

import time
from typing import Any, Callable

from agents.workers.base import Worker, WorkerAnswer


class RLMWorker(Worker):
    def __init__(self, rlm: Any, context: str | Callable[[str, str], Any] = "query", name: str = "rlm") -> None:
        self.rlm, self.context, self.name = rlm, context, name

    def child_context(self, query: str, trajectory: str) -> Any:
        if callable(self.context):
            return self.context(query, trajectory)
        return trajectory if self.context == "trajectory" else query

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        return self._answer(query, trajectory, None)

    def answer_nested(self, query: str, trajectory: str, link: Any, context: Any = None) -> WorkerAnswer:
        if link.depth + 1 > link.max_depth:       # too deep: the leaf worker answers directly
            q = query if context is None else f"{query}\n\n{context}"
            ans = self.rlm.worker.answer(q, trajectory)
            return ans.model_copy(update={"worker": ans.worker or getattr(self.rlm.worker, "name", "worker")})
        return self._answer(query, trajectory, link, context)

    def _answer(self, query: str, trajectory: str, link: Any, context: Any = None) -> WorkerAnswer:
        t0 = time.monotonic()
        ctx = context if context is not None else self.child_context(query, trajectory)
        res = self.rlm._run(query, ctx, link=link)
        usage = res.usage.values()
        return WorkerAnswer(text=res.answer or "", input_tokens=sum(u.input_tokens for u in usage),
                            output_tokens=sum(u.output_tokens for u in usage),
                            text_handoff_tokens=sum(u.text_handoff_tokens for u in usage),
                            latency_s=time.monotonic() - t0, worker=self.name, child_run=res.run_id)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "child_policy": getattr(self.rlm.policy, "name", None),
                "child_worker": getattr(self.rlm.worker, "name", None),
                "context": self.context if isinstance(self.context, str) else "custom"}
