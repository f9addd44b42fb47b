"""The RLM runtime: an orchestrator policy drives a sandboxed REPL that holds the context and a worker.

    from rlm import RLM, Budgets
    from agents import ChunkScanPolicy, BriefedWorker
    result = RLM(ChunkScanPolicy(), BriefedWorker(), budgets=Budgets(max_iterations=12)).run(query, context)
    print(result.answer, result.stop_reason)

The REPL (a `repl.Sandbox`) holds `context`, `query`, `worker(query)` (or `worker(query, text)`:
a nested RLM worker runs on `text`, other workers get it appended to the query),
`worker_batch(queries)` (up to `Budgets.max_concurrent_subcalls` calls at a time, the answers in query order, a failed
query's error in its place: `_Batch`), the same under the reference RLM's names (`llm_query`, `llm_query_batched`;
`rlm_query`, `rlm_query_batched`), `FINAL(value)` and `FINAL_VAR(name)`. Each policy step is recorded, its code
cells run in order and their outputs recorded; worker calls are recorded as they happen (the worker reads the trajectory
rendered so far). The run ends on FINAL (in code, or at the start of a line of the step's text
outside code), or when a budget, the policy or the sandbox ends it: then `answer` is a partial answer
(the policy's `partial_answer`, else a REPL variable `final_answer` / `answer` / `result`, else the
last worker answer, else the tail of the last output) and `stop_reason` says why.
`await RLM(...).arun(query, context)` is the same run for asyncio code: it never blocks the event loop.
"""
from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from agents.backends.base import BackendError, request_deadline
from agents.policy import OrchestratorPolicy, RunState, Step, as_step
from agents.workers.base import WORKER_ERROR_PREFIX, CallContext, Worker, WorkerAnswer
from repl.session import ReplSession, SessionFactory
from agents.events import CellOutput, CodeCell, Event, Final, Notice, OrchestratorMessage, RunStart, WorkerCall
from rlm.failures import explain
from rlm.graph import CallGraph
from rlm.parsing import find_final
from rlm.result import AgentUsage, Budgets, RunResult, StopReason
from rlm.trajectory import JsonlLog, Trajectory

if TYPE_CHECKING:  # pydantic models of the sandbox, imported with it
    from repl import SandboxConfig

PRIMITIVES = ("context", "query", "worker", "worker_batch", "llm_query", "llm_query_batched", "rlm_query",
              "rlm_query_batched", "FINAL", "FINAL_VAR")
PARTIAL_NAMES = ("final_answer", "answer", "result")


class BudgetExhausted(RuntimeError):
    """Raised into the cell when a worker call would exceed a budget; the run then stops."""


class WorkerError(RuntimeError):
    """Raised into the cell when the worker failed."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (KeyboardInterrupt): `result` is its RunResult (stop_reason "interrupted",
    the answer so far), whose `final` event is in the log."""

    def __init__(self, result: RunResult) -> None:
        super().__init__("interrupted")
        self.result = result


def default_sandbox_config() -> SandboxConfig:
    from repl import SandboxConfig

    # Time spent inside primitives (worker calls) does not count against the cell timeout.
    return SandboxConfig(timeout_s=30.0)


def default_sandbox_factory(primitives: dict[str, Any], config: SandboxConfig | None) -> ReplSession:
    from repl import Sandbox

    return Sandbox(primitives=primitives, config=config)


class RLM:
    """A recursive language model run: `policy` orchestrates, `worker` answers `worker(...)` calls.

    sandbox_config: `repl.SandboxConfig` (default: 30 s per cell, time in worker calls excluded).
        With a wall-time budget, each cell's timeout is also capped by the time left.
    budgets: `Budgets`.
    log_path: JSONL file every event is appended to (and flushed) as it happens.
    on_event: callback for every event of the run tree (progress display).
    sandbox_factory: `(primitives, config) -> repl.ReplSession` (default `repl.Sandbox`).
    """

    def __init__(self, policy: OrchestratorPolicy, worker: Worker, sandbox_config: SandboxConfig | None = None,
                 budgets: Budgets | None = None, log_path: str | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 sandbox_factory: SessionFactory | None = None) -> None:
        if not isinstance(policy, OrchestratorPolicy):
            raise TypeError(f"RLM: policy must be an agents.OrchestratorPolicy, got {type(policy).__name__}.")
        if not isinstance(worker, Worker):
            raise TypeError(f"RLM: worker must be an agents.Worker, got {type(worker).__name__}.")
        self.policy, self.worker = policy, worker
        self.sandbox_config, self.budgets = sandbox_config, budgets or Budgets()
        self.log_path, self.on_event = log_path, on_event
        self.sandbox_factory = sandbox_factory or default_sandbox_factory

    def run(self, query: str, context: Any, *, parent: CallContext | None = None) -> RunResult:
        """Run to the end. `parent`: the `CallContext` a worker received in `Worker.answer_call`, to run as a
        nested run of that call (its events, usage and call graph go to the parent run)."""
        return self._run(query, context, parent, None, "RLM.run")

    async def arun(self, query: str, context: Any, *, parent: CallContext | None = None) -> RunResult:
        """`run` for asyncio code: the run goes on in a thread (`asyncio.to_thread`), so the event loop never
        blocks on a step or a worker call, and `asyncio.gather` runs several at once (the loop's default executor
        bounds how many). Give each concurrent run its own `RLM` and policy; a worker may serve several only if it is
        `thread_safe`. Cancelling the awaiting task stops the run at its next step or worker call (stop_reason
        "interrupted", its `final` event in the log)."""
        import asyncio

        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self._run, query, context, parent, cancel, "RLM.arun")
        except asyncio.CancelledError:
            cancel.set()
            raise

    def _run(self, query: str, context: Any, parent: CallContext | None, cancel: threading.Event | None,
             caller: str) -> RunResult:
        if parent is not None and not isinstance(parent, Link):
            raise TypeError(f"{caller}: parent must be the CallContext the runtime passed to Worker.answer_call.")
        with _Run(self, query, context, parent, cancel) as run:
            try:
                reason = self.loop(run)
            except KeyboardInterrupt:   # Ctrl-C: the stop record and the answer so far, then the interrupt
                raise RunInterrupted(run.finish("interrupted")) from None
            return run.finish(reason)

    @staticmethod
    def loop(run: _Run) -> StopReason:
        """Steps until something ends the run; returns why."""
        while True:
            reason = run.budget_spent()
            if reason is not None:
                return reason
            step = run.next_step()                          # records the message; a StopReason: run over
            if not isinstance(step, Step):
                return step
            for i, code in enumerate(step.cells()):
                reason = run.execute(code, i, in_message=step.code_in_text)
                if reason is not None:
                    break
            if reason is None:
                reason = run.after_step(step)               # FINAL in the text; hint when nothing ran
            run.iteration += 1
            if reason is not None:
                return reason


@dataclass(frozen=True)
class Link(CallContext):
    """The runtime's `CallContext`: also where a nested run hangs in the parent's log and call graph."""

    parent: _Run | None = None
    child_results: list[RunResult] = field(default_factory=list)
    index: int = 0                                      # the call's 1-based number in the run


class _Run:
    """State of one run and the helpers of `RLM.loop`."""

    def __init__(self, rlm: RLM, query: str, context: Any, link: Link | None,
                 cancel: threading.Event | None = None) -> None:
        self.rlm, self.policy, self.worker, self.budgets = rlm, rlm.policy, rlm.worker, rlm.budgets
        self.query, self.context, self.link = query, context, link
        self.run_id = uuid.uuid4().hex[:10]
        self.depth = link.depth + 1 if link else 0
        self.max_depth = min(link.max_depth, self.depth + self.budgets.max_depth) if link else self.budgets.max_depth
        self.prefix = f"d{self.depth}:" if self.depth else ""
        self.iteration = self.worker_calls = 0
        self.final: tuple[str, str] | None = None           # (answer, source)
        self.refused: StopReason | None = None              # a worker call inside a cell was refused: why
        self.cause: BaseException | None = None             # the error behind a stop, and whose it was
        self.cause_role = "orchestrator"
        self.cut_off = False                                # that error came from the wall-time budget
        self.interrupted = False                            # Ctrl-C inside a worker call
        self.cancel = cancel                                # set: the task awaiting RLM.arun was cancelled
        self.lock = threading.RLock()                       # counters, usage and events of concurrent worker calls
        self.call_cost: int | None = None                   # the largest tokens of one worker call answered so far
        self.told_no_nesting = False
        self.pending_var: str | None = None
        self.usage: dict[str, AgentUsage] = {}
        self.nested_events: list[Event] = []
        self.t0 = time.monotonic()
        self.graph = link.parent.graph if link else CallGraph()
        self.own_log = JsonlLog(rlm.log_path) if (rlm.log_path and not link) else None
        sinks = list(link.parent.traj.sinks) if link else [s for s in (self.own_log and self.own_log.write,
                                                                         rlm.on_event) if s]
        self.traj = Trajectory(self.run_id, self.depth, sinks)
        self.node = self.graph.add_agent(self.run_id, "orchestrator", self.policy.name, self.depth)
        self.sandbox: ReplSession | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "_Run":
        kind, total, lengths = describe_context(self.context)
        self.policy.reset()
        self.traj.append(RunStart(
            query=self.query, context_type=kind, context_length=total, context_lengths=lengths[:1000],
            policy={"name": self.policy.name, **self.described("policy", self.policy.describe)},
            worker={"name": self.worker.name, **self.described("worker", self.worker.describe)},
            budgets=self.budgets.model_dump(), parent_run=self.link.parent.run_id if self.link else None,
            parent_call=self.link.call_id if self.link else None))
        config = self.rlm.sandbox_config
        if config is None and self.rlm.sandbox_factory is default_sandbox_factory:
            config = default_sandbox_config()
        sandbox = self.rlm.sandbox_factory(self.primitives(), config)
        if not isinstance(sandbox, ReplSession):
            raise TypeError(f"sandbox_factory returned a {type(sandbox).__name__}, which is not a repl.ReplSession "
                            "(run, get, names, close).")
        self.sandbox = sandbox
        return self

    def __exit__(self, *exc: object) -> None:
        for what, closer in (("sandbox", self.sandbox and self.sandbox.close),
                             ("log", self.own_log and self.own_log.close)):
            if not closer:
                continue
            try:
                closer()
            except Exception as e:   # the run is over: report it where the run's events go, then carry on
                self.report(f"closing the {what} failed: {type(e).__name__}: {e}")

    def report(self, text: str) -> None:
        """An error the run survives: a `notice` event in the trajectory and the log."""
        try:
            self.traj.append(Notice(iteration=self.iteration, text=text))
        except Exception as e:   # the log itself is broken (closed file, full disk): the caller's stderr
            import sys

            print(f"rlm: {text} (and writing the notice failed: {type(e).__name__}: {e})", file=sys.stderr)

    def described(self, what: str, describe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return {k: v for k, v in (describe() or {}).items() if k != "name"}
        except Exception as e:
            self.report(f"{what}.describe() failed: {type(e).__name__}: {e}")
            return {}

    def primitives(self) -> dict[str, Any]:
        """What cells see. `llm_query` / `llm_query_batched` (the reference RLM's and dspy.RLM's names) are
        `worker` / `worker_batch`; `rlm_query` / `rlm_query_batched` are the reference RLM's nested runs."""
        call, batch = self.call_worker, self.call_worker_batch
        return {"context": self.context, "query": self.query, "worker": call, "worker_batch": batch,
                "llm_query": call, "llm_query_batched": batch, "rlm_query": self.call_rlm_query,
                "rlm_query_batched": self.call_rlm_query_batch, "FINAL": self.set_final,
                "FINAL_VAR": self.set_final_var}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def deadline(self) -> float | None:
        """When the wall-time budget runs out (`time.monotonic()`), for requests in flight; None: no budget."""
        return None if self.budgets.max_wall_s is None else self.t0 + self.budgets.max_wall_s

    def wall_spent(self) -> bool:
        return self.budgets.max_wall_s is not None and self.elapsed() >= self.budgets.max_wall_s

    def tokens_used(self) -> int:
        return sum(u.input_tokens + u.output_tokens for u in self.usage.values())

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def budget_spent(self) -> StopReason | None:
        """Checked before each step."""
        b = self.budgets
        if self.cancelled():
            return "interrupted"
        if b.max_iterations is not None and self.iteration >= b.max_iterations:
            return "max_iterations"
        if b.max_tokens is not None and self.tokens_used() >= b.max_tokens:
            return "max_tokens"
        if b.max_wall_s is not None and self.elapsed() >= b.max_wall_s:
            return "max_wall_s"
        return None

    def agent(self, role: str, name: str | None = None) -> AgentUsage:
        key = self.prefix + (role if name is None else f"{role}:{name}")
        if key not in self.usage:
            self.usage[key] = AgentUsage(agent=key, role=role, depth=self.depth)
        return self.usage[key]

    # -- steps and cells ----------------------------------------------------------------------
    def state(self) -> RunState:
        kind, total, lengths = describe_context(self.context)
        return RunState(query=self.query, context_type=kind, context_length=total, context_lengths=lengths,
                        iteration=self.iteration, depth=self.depth, events=list(self.traj.events),
                        variables=self.variables(), worker_calls=self.worker_calls, tokens_used=self.tokens_used(),
                        elapsed_s=self.elapsed(), budgets=self.budgets.model_dump(), getter=self.sandbox.get)

    def variables(self) -> dict[str, str]:
        try:
            return {k: str(v) for k, v in dict(self.sandbox.names()).items() if k not in PRIMITIVES}
        except Exception as e:
            self.report(f"listing the REPL variables failed: {type(e).__name__}: {e}")
            return {}

    def next_step(self) -> Step | StopReason:
        t0 = time.monotonic()
        try:
            with request_deadline(self.deadline()):
                step = as_step(self.policy.step(self.state()))
        except Exception as e:
            self.report(f"policy error: {type(e).__name__}: {e}")
            self.cause, self.cause_role, self.cut_off = e, "orchestrator", self.wall_spent()
            return "max_wall_s" if self.cut_off else "policy_error"
        took = time.monotonic() - t0
        if step is None:
            step = Step(stop=True)
        self.agent("orchestrator").add(1, step.input_tokens, step.output_tokens, time_s=took)
        if step.text or step.cells() or not step.stop:
            self.traj.append(OrchestratorMessage(iteration=self.iteration, text=step.text,
                                                 input_tokens=step.input_tokens, output_tokens=step.output_tokens,
                                                 time_s=round(took, 6)))
        if step.stop:
            return "policy_stopped"
        return step

    def execute(self, code: str, cell: int, in_message: bool) -> StopReason | None:
        """Run one cell; returns why the run ends after it, if it does."""
        self.traj.append(CodeCell(iteration=self.iteration, cell=cell, code=code, in_message=in_message))
        sandbox_failed = False
        try:
            res = self.sandbox.run(code, **self.cell_timeout())
            if self.interrupted:   # Ctrl-C in a worker call that the sandbox turned into the cell's error
                raise KeyboardInterrupt
            out = CellOutput(iteration=self.iteration, cell=cell, stdout=res.stdout or "", value=res.value,
                             error=res.error, error_type=res.error_type, limit=res.limit,
                             duration_s=round(float(res.duration_s or 0.0), 6))
        except Exception as e:   # the sandbox itself failed: nothing more can run
            out = CellOutput(iteration=self.iteration, cell=cell, error=f"SandboxError: {type(e).__name__}: {e}",
                             error_type="SandboxError")
            sandbox_failed = True
            self.cause, self.cause_role, self.cut_off = e, "sandbox", False
        self.traj.append(out)
        self.resolve_final_var()
        if self.final is not None:
            return "final"
        if self.refused is not None:
            return self.refused
        if sandbox_failed:
            return "sandbox_error"
        if self.budgets.max_wall_s is not None and self.elapsed() >= self.budgets.max_wall_s:
            return "max_wall_s"
        return None

    def cell_timeout(self) -> dict[str, float]:
        """A cell may not outlast the wall-time budget: cap its timeout by the time left."""
        if self.budgets.max_wall_s is None:
            return {}
        return {"timeout_s": max(0.05, self.budgets.max_wall_s - self.elapsed())}

    def after_step(self, step: Step) -> StopReason | None:
        found = find_final(step.text)
        if found and found[0] == "FINAL_VAR":
            self.pending_var = found[1]
            self.resolve_final_var()
        elif found:
            self.final = (found[1], "text")
        elif not step.cells():
            self.traj.append(Notice(iteration=self.iteration,
                                    text="No ```repl code block and no FINAL(...) in this step."))
        return "final" if self.final is not None else None

    # -- primitives (called from cells) -------------------------------------------------------
    def set_final(self, value: Any = None) -> str:
        self.final = (to_text(value), "FINAL")
        return self.final[0]

    def set_final_var(self, name: Any = None) -> str:
        if isinstance(name, str) and name.strip().isidentifier():
            self.pending_var = name.strip()      # looked up once the cell is over
            return f"FINAL_VAR({self.pending_var!r})"
        self.final = (to_text(name), "FINAL_VAR")   # given the value itself: take it
        return self.final[0]

    def resolve_final_var(self) -> None:
        name, self.pending_var = self.pending_var, None
        if name is None or self.final is not None:
            return
        try:
            self.final = (to_text(self.sandbox.get(name)), "FINAL_VAR")
        except KeyError:
            names = ", ".join(sorted(self.variables())) or "none yet"
            self.traj.append(Notice(iteration=self.iteration, text=(
                f"FINAL_VAR({name!r}): no variable named {name!r} in the REPL (variables: {names}). "
                "Assign it in a cell first; the run goes on.")))
        except Exception as e:
            self.report(f"FINAL_VAR({name!r}): reading it failed: {type(e).__name__}: {e}; the run goes on.")

    # -- worker calls (primitives) --------------------------------------------------------------
    def worker_refusal(self) -> StopReason | None:
        b = self.budgets
        if self.cancelled():
            return "interrupted"
        if b.max_worker_calls is not None and self.worker_calls >= b.max_worker_calls:
            return "max_worker_calls"
        if b.max_tokens is not None and self.tokens_used() >= b.max_tokens:
            return "max_tokens"
        if b.max_wall_s is not None and self.elapsed() >= b.max_wall_s:
            return "max_wall_s"
        return None

    def call_refusal(self, in_flight: int = 0) -> StopReason | Literal["wait"] | None:
        """Whether one more worker call may start now, with `in_flight` calls of the same batch still running: None
        (yes), a StopReason (no: that budget is spent) or "wait" (not before a call in flight has answered).

        max_tokens under concurrency: each call in flight counts at the largest cost (input + output tokens) of the
        worker calls answered so far in this run, and one more starts only while the tokens used plus those counts
        stay under the budget; before any call has answered, one call at a time. Calls that cost what that largest
        call did thus start exactly as far as calls made one after another would: the budget is overshot by at most
        one call's cost, as a single `worker()` call can (a call that costs more than any before it, by the
        difference too)."""
        reason = self.worker_refusal()
        if reason is not None or not in_flight or self.budgets.max_tokens is None:
            return reason
        with self.lock:
            cost = self.call_cost
            if cost is None or self.tokens_used() + in_flight * cost >= self.budgets.max_tokens:
                return "wait"
        return None

    def refuse_if_spent(self) -> None:
        """Nothing can start (a budget is spent): BudgetExhausted into the cell; the run ends after it."""
        reason = self.worker_refusal()
        if reason:
            self.refused = self.refused or reason
            raise BudgetExhausted(f"worker call refused: {refusal_text(reason)}")

    def start_call(self) -> Link:
        """Count one worker call and name it."""
        with self.lock:
            self.worker_calls += 1
            return Link(run_id=self.run_id, call_id=f"{self.run_id}.{self.worker_calls}", depth=self.depth,
                        max_depth=self.max_depth, parent=self, index=self.worker_calls)

    def answer_one(self, link: Link, query: str, trajectory: str, context: Any = None) -> WorkerAnswer:
        """One `Worker.answer_call`, its requests bounded by the wall-time budget (in any thread)."""
        with request_deadline(self.deadline()):
            return self.worker.answer_call(query, trajectory, link, context)

    def stop_for(self, e: BaseException) -> None:
        """A worker call failed with `e`: the cause of the stop, if the run stops for it (cut off by the wall-time
        budget; a server that failed after its retries, which the next call would too)."""
        self.cause, self.cause_role, self.cut_off = e, "worker", self.wall_spent()
        if self.cut_off:
            self.refused = self.refused or "max_wall_s"
        elif isinstance(e, BackendError):
            self.refused = self.refused or "worker_error"

    def call_worker(self, query: Any, context: Any = None) -> str:
        """`worker(query)`, or `worker(query, context)`: a nested RLM worker runs on `context`; any
        other worker gets the context text appended to the query."""
        query = query if isinstance(query, str) else to_text(query)
        if context is not None and not self.worker.takes_context:
            query, context = f"{query}\n\n{to_text(context)}", None
        self.refuse_if_spent()
        link = self.start_call()
        t0 = time.monotonic()
        try:
            ans = self.answer_one(link, query, self.traj.text, context)
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        except Exception as e:
            self.record_call(link, query, error=e, took=time.monotonic() - t0)
            self.stop_for(e)
            raise WorkerError(f"worker call failed: {type(e).__name__}: {e}") from None
        self.record_call(link, query, ans)
        return ans.text

    def call_worker_batch(self, queries: Any) -> list[str]:
        """`worker_batch(queries)`: the answers in query order. A query that failed, or that a budget left unasked,
        gives `WORKER_ERROR_PREFIX` + why in its place, and the rest stand (see `_Batch`)."""
        if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
            raise TypeError("worker_batch expects a list of strings")
        if not queries:
            return []
        self.refuse_if_spent()                      # nothing can start: refused as worker() is
        return _Batch(self, [q if isinstance(q, str) else to_text(q) for q in queries]).answers()

    def call_rlm_query(self, query: Any, context: Any = None) -> str:
        """`rlm_query(prompt)`, the reference RLM's nested run: `worker(prompt)` (a nested run when the worker is
        an `RLMWorker`; any other worker answers it directly, as the reference falls back to `llm_query`)."""
        self.note_no_nesting("rlm_query")
        return self.call_worker(query, context)

    def call_rlm_query_batch(self, queries: Any) -> list[str]:
        """`rlm_query_batched(prompts)`: `worker_batch(prompts)`, as `rlm_query` is `worker`."""
        self.note_no_nesting("rlm_query_batched")
        return self.call_worker_batch(queries)

    def note_no_nesting(self, name: str) -> None:
        if not self.worker.takes_context and not self.told_no_nesting:
            self.told_no_nesting = True
            self.traj.append(Notice(iteration=self.iteration, text=(
                f"{name}: the worker ({self.worker.name}) does not start nested runs (rlm.RLMWorker does), so it "
                "answers directly, as worker() does.")))

    def record_call(self, link: Link, query: str, ans: WorkerAnswer | None = None,
                    error: BaseException | None = None, took: float = 0.0) -> None:
        """The call's `worker_call` event (its answer, or its error), usage and call-graph edge."""
        with self.lock:
            if ans is None:
                self.traj.append(WorkerCall(call_id=link.call_id, iteration=self.iteration, index=link.index,
                                            query=query, error=f"{type(error).__name__}: {error} (after {took:.2f}s)",
                                            worker=self.worker.name))
                return
            ans = ans.model_copy(update={"worker": ans.worker or self.worker.name,
                                         "latency_s": round(ans.latency_s, 6)})
            call_id = link.call_id
            self.traj.append(WorkerCall(call_id=call_id, iteration=self.iteration, index=link.index, query=query,
                                        worker=ans.worker, result=ans))
            cost = ans.input_tokens + ans.output_tokens
            self.call_cost = cost if self.call_cost is None else max(self.call_cost, cost)
            for child in link.child_results:           # a nested run answered: adopt its usage and events
                for key, u in child.usage.items():
                    mine = self.usage.setdefault(key, AgentUsage(agent=key, role=u.role, depth=u.depth))
                    mine.add(u.calls, u.input_tokens, u.output_tokens, u.text_handoff_tokens, u.time_s)
                self.nested_events.extend(list(child.events) + list(child.nested_events))
                self.graph.add_call(self.node, self.graph.node(child.run_id, "orchestrator"), call_id,
                                    sum(u.input_tokens for u in child.usage.values()),
                                    sum(u.output_tokens for u in child.usage.values()),
                                    sum(u.text_handoff_tokens for u in child.usage.values()), ans.latency_s)
            if not link.child_results:
                name = ans.worker
                self.agent("worker", name).add(1, ans.input_tokens, ans.output_tokens, ans.text_handoff_tokens,
                                               ans.latency_s)
                target = self.graph.add_agent(self.run_id, "worker", name, self.depth)
                self.graph.add_call(self.node, target, call_id, ans.input_tokens, ans.output_tokens,
                                    ans.text_handoff_tokens, ans.latency_s)

    # -- the end ------------------------------------------------------------------------------
    def partial_answer(self) -> str | None:
        try:
            guess = self.policy.partial_answer(self.state())
            if guess:
                return to_text(guess)
        except Exception as e:
            self.report(f"policy.partial_answer failed: {type(e).__name__}: {e}; the runtime guesses instead")
        names = self.variables()
        for name in PARTIAL_NAMES:
            if name in names:
                try:
                    return to_text(self.sandbox.get(name))
                except Exception as e:
                    self.report(f"reading the REPL variable {name!r} for a partial answer failed: "
                                f"{type(e).__name__}: {e}")
        for e in reversed(self.traj.events):
            if e.type == "worker_call" and e.answer:
                return e.answer
            if e.type == "output" and e.stdout.strip():
                return e.stdout.strip()[-2000:]
        return None

    def last_words(self) -> str | None:
        """The policy's last message (why it stopped, for policy_stopped)."""
        for e in reversed(self.traj.events):
            if e.type == "message":
                return e.text or None
        return None

    def finish(self, reason: StopReason) -> RunResult:
        if self.final is not None:
            answer, source, reason = self.final[0], self.final[1], "final"
        else:
            answer, source = self.partial_answer(), "partial"
        cause = self.cause if reason != "max_wall_s" or self.cut_off else None
        error, hint = explain(reason, cause, self.cause_role, self.budgets, self.last_words())
        if reason == "interrupted" and self.cancelled():
            error = "cancelled (the task awaiting RLM.arun) before a final answer"
        self.traj.append(Final(answer=answer, stop_reason=reason, source=source, error=error, hint=hint))
        result = RunResult(
            run_id=self.run_id, query=self.query, answer=answer, stop_reason=reason, partial=reason != "final",
            error=error, hint=hint,
            iterations=self.iteration, worker_calls=self.worker_calls, wall_s=round(self.elapsed(), 3),
            trajectory=self.traj.text, events=self.traj.events, nested_events=self.nested_events, usage=self.usage,
            graph=self.graph.to_dict(), graph_summary=self.graph.summary(),
            log_path=str(self.rlm.log_path) if self.rlm.log_path and not self.link else None)
        if self.link:
            self.link.child_results.append(result)
        return result


class _Batch:
    """One `worker_batch(queries)`: which queries start when, who answers them, the results in query order.

    Every query reads the trajectory as it was before the batch. Who answers:
    - a worker that overrides `Worker.answer_batch` (shared work across a batch): the admitted queries in one call;
    - a `thread_safe` worker: `answer_call` per query on a pool of `Budgets.max_concurrent_subcalls` threads;
    - any other worker: `answer_call` per query, one after another, in the calling thread.
    Each query's `worker_call` event is written when it answers or fails. A query that failed gives
    `WORKER_ERROR_PREFIX` + its error in its place, and the rest stand. Budgets: a query starts only while
    `_Run.call_refusal` allows (max_worker_calls counts the calls started; max_tokens counts the calls in flight
    at the largest cost seen so far); once a budget is spent, the queries not started give
    `WORKER_ERROR_PREFIX` + "not run: ..." and the run ends after the cell, as after a refused `worker()` call.
    When no query of the batch answered, or the wall-time budget cut it off, the last failure ends the run as a
    failed `worker()` call does (a server that failed after its retries: worker_error).
    """

    def __init__(self, run: _Run, queries: list[str]) -> None:
        self.run, self.queries = run, queries
        self.trajectory = run.traj.text
        self.results: list[str] = [""] * len(queries)
        self.pending = deque(range(len(queries)))
        self.failures: list[Exception] = []
        self.answered = 0

    def answers(self) -> list[str]:
        worker, size = self.run.worker, self.run.budgets.max_concurrent_subcalls
        if type(worker).answer_batch is not Worker.answer_batch:
            self.in_shared_calls()
        elif worker.thread_safe and size > 1 and len(self.queries) > 1:
            self.in_pool(size)
        else:
            self.one_by_one()
        if self.failures and (not self.answered or self.run.wall_spent()):
            self.run.stop_for(self.failures[-1])
        return self.results

    def next_call(self, in_flight: int) -> tuple[int, Link] | None:
        """The next query to start, with `in_flight` calls of the batch still running; None: none now (wait for
        one in flight to answer; or the batch is done, or a budget is spent and the queries left are refused)."""
        if not self.pending:
            return None
        reason = self.run.call_refusal(in_flight)
        if reason == "wait":
            return None
        if reason is not None:
            self.refuse(reason)
            return None
        i = self.pending.popleft()
        return i, self.run.start_call()

    def refuse(self, reason: StopReason) -> None:
        left, run = list(self.pending), self.run
        self.pending.clear()
        for i in left:
            self.results[i] = f"{WORKER_ERROR_PREFIX}not run: {refusal_text(reason)}"
        run.refused = run.refused or reason
        run.traj.append(Notice(iteration=run.iteration, text=(
            f"worker_batch: {len(left)} of {len(self.queries)} queries not run: {refusal_text(reason)}; "
            "the run ends after this cell.")))

    def settle(self, i: int, link: Link, outcome: object, took: float) -> None:
        query = self.queries[i]
        if isinstance(outcome, WorkerAnswer):
            self.run.record_call(link, query, outcome)
            self.results[i] = outcome.text
            self.answered += 1
            return
        if not isinstance(outcome, Exception):
            outcome = TypeError(f"{type(self.run.worker).__name__} gave a {type(outcome).__name__}, not a "
                                "WorkerAnswer or an exception")
        self.run.record_call(link, query, error=outcome, took=took)
        self.failures.append(outcome)
        self.results[i] = f"{WORKER_ERROR_PREFIX}{type(outcome).__name__}: {outcome}"

    def one_by_one(self) -> None:
        while (started := self.next_call(0)) is not None:
            i, link = started
            t0 = time.monotonic()
            try:
                outcome: object = self.run.answer_one(link, self.queries[i], self.trajectory)
            except KeyboardInterrupt:
                self.run.interrupted = True
                raise
            except Exception as e:   # this query's failure: in its place, the rest go on
                outcome = e
            self.settle(i, link, outcome, time.monotonic() - t0)

    def in_pool(self, size: int) -> None:
        run = self.run
        pool = ThreadPoolExecutor(max_workers=min(size, len(self.queries)),
                                  thread_name_prefix=f"worker_batch-{run.run_id}")
        running: dict[Future, tuple[int, Link, float]] = {}
        try:
            while True:
                while len(running) < size and (started := self.next_call(len(running))) is not None:
                    i, link = started
                    call = contextvars.copy_context().run   # the caller's request deadline, in the thread
                    future = pool.submit(call, run.answer_one, link, self.queries[i], self.trajectory)
                    running[future] = (i, link, time.monotonic())
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f][0]):
                    i, link, t0 = running.pop(future)
                    error = future.exception()
                    if error is not None and not isinstance(error, Exception):
                        raise error
                    self.settle(i, link, future.result() if error is None else error, time.monotonic() - t0)
        except BaseException as e:   # Ctrl-C while waiting: nothing more starts; calls in flight are abandoned
            run.interrupted = run.interrupted or isinstance(e, KeyboardInterrupt)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def in_shared_calls(self) -> None:
        """The admitted queries in one `answer_batch` call (while max_tokens has no call cost to go by yet, the
        first query alone), again until every query answered or a budget is spent."""
        run, worker = self.run, self.run.worker
        while True:
            chunk: list[tuple[int, Link]] = []
            while (started := self.next_call(len(chunk))) is not None:
                chunk.append(started)
            if not chunk:
                return
            t0 = time.monotonic()
            try:
                with request_deadline(run.deadline()):
                    outcomes = list(worker.answer_batch([self.queries[i] for i, _ in chunk], self.trajectory))
                if len(outcomes) != len(chunk):
                    raise TypeError(f"{type(worker).__name__}.answer_batch returned {len(outcomes)} results for "
                                    f"{len(chunk)} queries")
            except KeyboardInterrupt:
                run.interrupted = True
                raise
            except Exception as e:   # the whole call failed: every query of it
                outcomes = [e] * len(chunk)
            for (i, link), outcome in zip(chunk, outcomes):
                self.settle(i, link, outcome, time.monotonic() - t0)


def refusal_text(reason: StopReason) -> str:
    return "the run was cancelled" if reason == "interrupted" else f"the {reason} budget is spent"


def describe_context(context: Any) -> tuple[str, int, list[int]]:
    if isinstance(context, str):
        return "str", len(context), [len(context)]
    if isinstance(context, dict):
        lengths = [len(to_text(v)) for v in context.values()]
        return "dict", sum(lengths), lengths
    if isinstance(context, (list, tuple)):
        lengths = [len(to_text(v)) for v in context]
        return "list", sum(lengths), lengths
    text = to_text(context)
    return type(context).__name__, len(text), [len(text)]


def to_text(value: object) -> str:
    return value if isinstance(value, str) else str(value)
