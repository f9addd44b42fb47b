"""The RLM runtime: an orchestrator policy drives a sandboxed REPL that holds the context and a worker.

    from rlm import RLM, Budgets
    from agents import ChunkScanPolicy, BriefedWorker
    result = RLM(ChunkScanPolicy(), BriefedWorker(), budgets=Budgets(max_iterations=12)).run(query, context)
    print(result.answer, result.stop_reason)

The REPL (a `repl.Sandbox`) holds `context`, `query`, `worker(query)` (or `worker(query, text)`:
a nested RLM worker runs on `text`, other workers get it appended to the query),
`worker_batch(queries)`, `FINAL(value)` and `FINAL_VAR(name)`. Each policy step is recorded, its code cells run in order and
their outputs recorded; worker calls are recorded as they happen (the worker reads the trajectory
rendered so far). The run ends on FINAL (in code, or at the start of a line of the step's text
outside code), or when a budget, the policy or the sandbox ends it: then `answer` is a partial answer
(the policy's `partial_answer`, else a REPL variable `final_answer` / `answer` / `result`, else the
last worker answer, else the tail of the last output) and `stop_reason` says why.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from agents.policy import OrchestratorPolicy, RunState, Step, as_step
from agents.workers.base import Worker
from rlm.events import CellOutput, CodeCell, Final, Notice, OrchestratorMessage, RunStart, WorkerCall
from rlm.graph import CallGraph
from rlm.parsing import find_final
from rlm.result import AgentUsage, Budgets, RunResult
from rlm.trajectory import JsonlLog, Trajectory

PRIMITIVES = ("context", "query", "worker", "worker_batch", "FINAL", "FINAL_VAR")
PARTIAL_NAMES = ("final_answer", "answer", "result")


class BudgetExhausted(RuntimeError):
    """Raised into the cell when a worker call would exceed a budget; the run then stops."""


class WorkerError(RuntimeError):
    """Raised into the cell when the worker failed."""


def default_sandbox_config() -> Any:
    from repl import SandboxConfig

    # Time spent inside primitives (worker calls) does not count against the cell timeout.
    return SandboxConfig(timeout_s=30.0)


def default_sandbox_factory(primitives: dict[str, Any], config: Any) -> Any:
    from repl import Sandbox

    return Sandbox(primitives=primitives, config=config)


class RLM:
    """A recursive language model run: `policy` orchestrates, `worker` answers `worker(...)` calls.

    sandbox_config: `repl.SandboxConfig` (default: 30 s per cell, time in worker calls excluded).
        With a wall-time budget, each cell's timeout is also capped by the time left.
    budgets: `Budgets`.
    log_path: JSONL file every event is appended to (and flushed) as it happens.
    on_event: callback for every event of the run tree (progress display).
    sandbox_factory: `(primitives, config) -> sandbox` (default `repl.Sandbox`).
    """

    def __init__(self, policy: OrchestratorPolicy, worker: Worker, sandbox_config: Any = None,
                 budgets: Budgets | None = None, log_path: str | None = None,
                 on_event: Callable[[Any], None] | None = None,
                 sandbox_factory: Callable[[dict[str, Any], Any], Any] | None = None) -> None:
        self.policy, self.worker = policy, worker
        self.sandbox_config, self.budgets = sandbox_config, budgets or Budgets()
        self.log_path, self.on_event = log_path, on_event
        self.sandbox_factory = sandbox_factory or default_sandbox_factory

    def run(self, query: str, context: Any) -> RunResult:
        return self._run(query, context, link=None)

    def _run(self, query: str, context: Any, link: "Link | None") -> RunResult:
        with _Run(self, query, context, link) as run:
            while not run.done and not run.out_of_budget():
                step = run.next_step()                      # records the message; None: run over
                if step is None:
                    break
                for i, code in enumerate(step.cells()):
                    run.execute(code, i, in_message=step.code_in_text)
                    if run.done:
                        break
                run.after_step(step)                        # FINAL in the text; hint when nothing ran
                run.iteration += 1
            return run.finish()


@dataclass
class Link:
    """Passed to a nested worker run: where it hangs in the parent's log and call graph."""

    parent: "_Run"
    call_id: str
    depth: int                    # the parent's depth
    max_depth: int                # deepest depth a run may have
    child_results: list[RunResult] = field(default_factory=list)


class _Run:
    """State of one run and the helpers of the loop in `RLM._run`."""

    def __init__(self, rlm: RLM, query: str, context: Any, link: Link | None) -> None:
        self.rlm, self.policy, self.worker, self.budgets = rlm, rlm.policy, rlm.worker, rlm.budgets
        self.query, self.context, self.link = query, context, link
        self.run_id = uuid.uuid4().hex[:10]
        self.depth = link.depth + 1 if link else 0
        self.max_depth = min(link.max_depth, self.depth + self.budgets.max_depth) if link else self.budgets.max_depth
        self.prefix = f"d{self.depth}:" if self.depth else ""
        self.iteration = self.worker_calls = 0
        self.final: tuple[str, str] | None = None           # (answer, source)
        self.stop_reason: str | None = None
        self.pending_var: str | None = None
        self.usage: dict[str, AgentUsage] = {}
        self.nested_events: list[Any] = []
        self.t0 = time.monotonic()
        self.graph = link.parent.graph if link else CallGraph()
        self.own_log = JsonlLog(rlm.log_path) if (rlm.log_path and not link) else None
        sinks = list(link.parent.traj.sinks) if link else [s for s in (self.own_log and self.own_log.write, rlm.on_event) if s]
        self.traj = Trajectory(self.run_id, self.depth, sinks)
        self.node = self.graph.add_agent(self.run_id, "orchestrator", getattr(self.policy, "name", "policy"), self.depth)
        self.sandbox: Any = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "_Run":
        kind, total, lengths = describe_context(self.context)
        self.policy.reset()
        self.traj.append(RunStart(
            query=self.query, context_type=kind, context_length=total, context_lengths=lengths[:1000],
            policy={"name": getattr(self.policy, "name", type(self.policy).__name__), **_safe(self.policy.describe)},
            worker={"name": getattr(self.worker, "name", type(self.worker).__name__), **_safe(self.worker.describe)},
            budgets=self.budgets.model_dump(), parent_run=self.link.parent.run_id if self.link else None,
            parent_call=self.link.call_id if self.link else None))
        config = self.rlm.sandbox_config
        if config is None and self.rlm.sandbox_factory is default_sandbox_factory:
            config = default_sandbox_config()
        self.sandbox = self.rlm.sandbox_factory(self.primitives(), config)
        return self

    def __exit__(self, *exc: Any) -> None:
        for closer in (getattr(self.sandbox, "close", None), self.own_log and self.own_log.close):
            if closer:
                try:
                    closer()
                except Exception:
                    pass

    def primitives(self) -> dict[str, Any]:
        return {"context": self.context, "query": self.query, "worker": self.call_worker,
                "worker_batch": self.call_worker_batch, "FINAL": self.set_final, "FINAL_VAR": self.set_final_var}

    @property
    def done(self) -> bool:
        return self.final is not None or self.stop_reason is not None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def tokens_used(self) -> int:
        return sum(u.input_tokens + u.output_tokens for u in self.usage.values())

    def out_of_budget(self) -> bool:
        b = self.budgets
        if b.max_iterations is not None and self.iteration >= b.max_iterations:
            self.stop_reason = "max_iterations"
        elif b.max_tokens is not None and self.tokens_used() >= b.max_tokens:
            self.stop_reason = "max_tokens"
        elif b.max_wall_s is not None and self.elapsed() >= b.max_wall_s:
            self.stop_reason = "max_wall_s"
        return self.stop_reason is not None

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
        except Exception:
            return {}

    def next_step(self) -> Step | None:
        t0 = time.monotonic()
        try:
            step = as_step(self.policy.step(self.state()))
        except Exception as e:
            self.traj.append(Notice(iteration=self.iteration, text=f"policy error: {type(e).__name__}: {e}"))
            self.stop_reason = "policy_error"
            return None
        took = time.monotonic() - t0
        if step is None:
            step = Step(stop=True)
        self.agent("orchestrator").add(1, step.input_tokens, step.output_tokens, time_s=took)
        if step.text or step.cells() or not step.stop:
            self.traj.append(OrchestratorMessage(iteration=self.iteration, text=step.text, input_tokens=step.input_tokens,
                                                 output_tokens=step.output_tokens, time_s=round(took, 6)))
        if step.stop:
            self.stop_reason = "policy_stopped"
            return None
        return step

    def execute(self, code: str, cell: int, in_message: bool) -> None:
        self.traj.append(CodeCell(iteration=self.iteration, cell=cell, code=code, in_message=in_message))
        try:
            res = self.sandbox.run(code, **self.cell_timeout())
            out = CellOutput(iteration=self.iteration, cell=cell, stdout=res.stdout or "", value=res.value,
                             error=res.error, error_type=res.error_type, limit=res.limit,
                             duration_s=round(float(res.duration_s or 0.0), 6))
        except Exception as e:   # the sandbox itself failed: nothing more can run
            out = CellOutput(iteration=self.iteration, cell=cell, error=f"SandboxError: {type(e).__name__}: {e}",
                             error_type="SandboxError")
            self.stop_reason = self.stop_reason or "sandbox_error"
        self.traj.append(out)
        self.resolve_final_var()
        if not self.done and self.budgets.max_wall_s is not None and self.elapsed() >= self.budgets.max_wall_s:
            self.stop_reason = "max_wall_s"

    def cell_timeout(self) -> dict[str, float]:
        """A cell may not outlast the wall-time budget: cap its timeout by the time left."""
        if self.budgets.max_wall_s is None:
            return {}
        return {"timeout_s": max(0.05, self.budgets.max_wall_s - self.elapsed())}

    def after_step(self, step: Step) -> None:
        if self.done:
            return
        found = find_final(step.text)
        if found and found[0] == "FINAL_VAR":
            self.pending_var = found[1]
            self.resolve_final_var()
        elif found:
            self.final = (found[1], "text")
        elif not step.cells():
            self.traj.append(Notice(iteration=self.iteration, text="No ```repl code block and no FINAL(...) in this step."))

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
        except Exception:
            names = ", ".join(sorted(self.variables())) or "none yet"
            self.traj.append(Notice(iteration=self.iteration, text=(
                f"FINAL_VAR({name!r}): no variable named {name!r} in the REPL (variables: {names}). "
                "Assign it in a cell first; the run goes on.")))

    def worker_refusal(self) -> str | None:
        b = self.budgets
        if b.max_worker_calls is not None and self.worker_calls >= b.max_worker_calls:
            return "max_worker_calls"
        if b.max_tokens is not None and self.tokens_used() >= b.max_tokens:
            return "max_tokens"
        if b.max_wall_s is not None and self.elapsed() >= b.max_wall_s:
            return "max_wall_s"
        return None

    def call_worker_batch(self, queries: Any) -> list[str]:
        if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
            raise TypeError("worker_batch expects a list of strings")
        return [self.call_worker(q) for q in queries]

    def call_worker(self, query: Any, context: Any = None) -> str:
        """`worker(query)`, or `worker(query, context)`: a nested RLM worker runs on `context`; any
        other worker gets the context text appended to the query."""
        query = query if isinstance(query, str) else to_text(query)
        nested = getattr(self.worker, "answer_nested", None)
        if context is not None and nested is None:
            query, context = f"{query}\n\n{to_text(context)}", None
        reason = self.worker_refusal()
        if reason:
            self.stop_reason = self.stop_reason or reason
            raise BudgetExhausted(f"worker call refused: the {reason} budget is spent")
        self.worker_calls += 1
        call_id = f"{self.run_id}.{self.worker_calls}"
        link = Link(self, call_id, self.depth, self.max_depth)
        t0 = time.monotonic()
        try:
            ans = (nested(query, self.traj.text, link, context) if nested
                   else self.worker.answer(query, self.traj.text))
        except Exception as e:
            self.traj.append(WorkerCall(call_id=call_id, iteration=self.iteration, index=self.worker_calls, query=query,
                                        error=f"{type(e).__name__}: {e}", worker=getattr(self.worker, "name", ""),
                                        latency_s=round(time.monotonic() - t0, 6)))
            raise WorkerError(f"worker call failed: {type(e).__name__}: {e}") from None
        self.record_call(call_id, query, ans, link)
        return ans.text

    def record_call(self, call_id: str, query: str, ans: Any, link: Link) -> None:
        self.traj.append(WorkerCall(
            call_id=call_id, iteration=self.iteration, index=self.worker_calls, query=query, answer=ans.text,
            worker=ans.worker or getattr(self.worker, "name", ""), input_tokens=ans.input_tokens,
            output_tokens=ans.output_tokens, text_handoff_tokens=ans.text_handoff_tokens, kept=ans.kept,
            total=ans.total, compaction=ans.compaction, latency_s=round(ans.latency_s, 6), child_run=ans.child_run,
            folds=ans.folds, prefilled_tokens=ans.prefilled_tokens, cache_positions=ans.cache_positions))
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
            name = ans.worker or getattr(self.worker, "name", "worker")
            self.agent("worker", name).add(1, ans.input_tokens, ans.output_tokens, ans.text_handoff_tokens, ans.latency_s)
            target = self.graph.add_agent(self.run_id, "worker", name, self.depth)
            self.graph.add_call(self.node, target, call_id, ans.input_tokens, ans.output_tokens,
                                ans.text_handoff_tokens, ans.latency_s)

    # -- the end ------------------------------------------------------------------------------
    def partial_answer(self) -> str | None:
        try:
            guess = self.policy.partial_answer(self.state())
            if guess:
                return to_text(guess)
        except Exception:
            pass
        names = self.variables()
        for name in PARTIAL_NAMES:
            if name in names:
                try:
                    return to_text(self.sandbox.get(name))
                except Exception:
                    pass
        for e in reversed(self.traj.events):
            if e.type == "worker_call" and e.answer:
                return e.answer
            if e.type == "output" and e.stdout.strip():
                return e.stdout.strip()[-2000:]
        return None

    def finish(self) -> RunResult:
        if self.final is not None:
            answer, source, reason = self.final[0], self.final[1], "final"
        else:
            answer, source, reason = self.partial_answer(), "partial", self.stop_reason or "policy_stopped"
        self.traj.append(Final(answer=answer, stop_reason=reason, source=source))
        result = RunResult(
            run_id=self.run_id, query=self.query, answer=answer, stop_reason=reason, partial=reason != "final",
            iterations=self.iteration, worker_calls=self.worker_calls, wall_s=round(self.elapsed(), 3),
            trajectory=self.traj.text, events=self.traj.events, nested_events=self.nested_events, usage=self.usage,
            graph=self.graph.to_dict(), graph_summary=self.graph.summary(),
            log_path=str(self.rlm.log_path) if self.rlm.log_path and not self.link else None)
        if self.link:
            self.link.child_results.append(result)
        return result


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


def to_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _safe(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {k: v for k, v in (fn() or {}).items() if k != "name"}
    except Exception:
        return {}
