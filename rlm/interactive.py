"""`rlm repl`: the worker of an interactive session is briefed on what the person saw.

Each cell the person runs and its output go into a `Trajectory` as the same events `rlm run` records
(`CodeCell`, `CellOutput`, `WorkerCall`), rendered by the same code, so ``worker(query)`` reads the
session so far, exactly as the orchestrator's worker reads a run. The context is in the REPL as `context`;
the worker sees what of it a cell printed, as in a run. ``%trajectory`` shows the text.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.events import CellOutput, CodeCell, RunStart, WorkerCall
from rlm.runtime import describe_context
from rlm.trajectory import Trajectory

if TYPE_CHECKING:
    from agents import Worker
    from repl.console import ConsoleHooks
    from repl.sandbox import CellResult

SESSION_QUERY = "(interactive session: the cells run so far and their outputs)"


class ConsoleTrajectory:
    """The trajectory of one console session and the `worker` / `worker_batch` primitives that read it."""

    def __init__(self, worker: Worker, context: Any = None) -> None:
        self.worker, self.context = worker, context
        self.traj = Trajectory("console")
        kind, total, lengths = describe_context("" if context is None else context)
        self.traj.append(RunStart(query=SESSION_QUERY, context_type=kind, context_length=total,
                                  context_lengths=lengths[:1000], worker={"name": worker.name}))
        self.cells = self.calls = 0

    @property
    def text(self) -> str:
        return self.traj.text

    # -- the console's hooks ------------------------------------------------------------------
    def before_cell(self, code: str) -> None:
        self.traj.append(CodeCell(iteration=self.cells, cell=0, code=code))

    def after_cell(self, code: str, res: CellResult | None) -> None:
        if res is None:
            out = CellOutput(iteration=self.cells, error="KeyboardInterrupt: the cell was stopped",
                             error_type="KeyboardInterrupt")
        else:
            out = CellOutput(iteration=self.cells, stdout=res.stdout or "", value=res.value, error=res.error,
                             error_type=res.error_type, limit=res.limit, duration_s=round(float(res.duration_s), 6))
        self.traj.append(out)
        self.cells += 1

    def hooks(self) -> ConsoleHooks:
        from repl.console import ConsoleHooks

        return ConsoleHooks(before_cell=self.before_cell, after_cell=self.after_cell, commands={
            "trajectory": ("the trajectory the worker reads: your cells, their outputs, the worker calls",
                           lambda: self.text)})

    # -- the primitives -----------------------------------------------------------------------
    def ask(self, query: Any) -> str:
        q = query if isinstance(query, str) else str(query)
        self.calls += 1
        try:
            ans = self.worker.answer(q, self.traj.text)
        except Exception as e:
            self.traj.append(WorkerCall(call_id=f"console.{self.calls}", iteration=self.cells, index=self.calls,
                                        query=q, error=f"{type(e).__name__}: {e}", worker=self.worker.name))
            raise
        name = ans.worker or self.worker.name
        self.traj.append(WorkerCall(call_id=f"console.{self.calls}", iteration=self.cells, index=self.calls, query=q,
                                    worker=name, result=ans.model_copy(update={"worker": name})))
        return ans.text

    def ask_batch(self, queries: Any) -> list[str]:
        if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
            raise TypeError("worker_batch expects a list of strings")
        return [self.ask(q) for q in queries]

    def primitives(self) -> dict[str, Any]:
        prims: dict[str, Any] = {"worker": self.ask, "worker_batch": self.ask_batch}
        if self.context is not None:
            prims["context"] = self.context
        return prims
