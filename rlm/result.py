"""Budgets and the result of a run."""
from __future__ import annotations

import statistics
from typing import Any, Literal, get_args

import networkx as nx
from pydantic import BaseModel, Field, ValidationError

from agents.events import Event, WorkerCall
from rlm.graph import GraphSummary, from_dict

StopReason = Literal["final", "max_iterations", "max_worker_calls", "max_tokens", "max_wall_s", "policy_stopped",
                     "policy_error", "sandbox_error", "worker_error", "interrupted"]
STOP_REASONS: tuple[StopReason, ...] = get_args(StopReason)


class Budgets(BaseModel):
    """Limits of one run. None = unlimited.

    max_iterations: policy steps. max_worker_calls: worker calls (a `worker_batch` of n counts n).
    max_tokens: all tokens billed in the run (orchestrator input + output, worker input + output,
        nested runs included). max_wall_s: seconds of wall time (checked between cells and at each
        worker call; a cell on its own is bounded by the sandbox timeout).
    max_depth: how deep worker runs may nest below this run (an `RLMWorker` beyond it answers with
        its leaf worker instead of starting a run).
    max_concurrent_subcalls: worker calls of one `worker_batch` in flight at once (a pool of threads; a worker that
        is not `thread_safe` gets one at a time, one that overrides `answer_batch` the whole batch in one call).
    """

    max_iterations: int | None = Field(20, ge=1)
    max_worker_calls: int | None = Field(64, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_wall_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_depth: int = Field(2, ge=0)
    max_concurrent_subcalls: int = Field(4, ge=1)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:   # one line naming the budget and its range
            err = e.errors()[0]
            name = ".".join(str(x) for x in err["loc"])
            field = type(self).model_fields.get(str(err["loc"][0])) if err["loc"] else None
            unlimited = " (None: unlimited)" if field is not None and type(None) in get_args(field.annotation) else ""
            raise ValueError(f"Budgets: {name}: {err['msg'][0].lower()}{err['msg'][1:]}{unlimited}, "
                             f"got {err.get('input')!r}.") from None


class AgentUsage(BaseModel):
    agent: str
    role: str
    depth: int = 0
    calls: int = 0                     # steps for an orchestrator, answered calls for a worker
    input_tokens: int = 0
    output_tokens: int = 0
    text_handoff_tokens: int = 0       # workers: what pasting the trajectory as text would have cost
    time_s: float = 0.0

    def add(self, calls: int = 1, input_tokens: int = 0, output_tokens: int = 0, text_handoff_tokens: int = 0,
            time_s: float = 0.0) -> None:
        self.calls += calls
        self.input_tokens += int(input_tokens)
        self.output_tokens += int(output_tokens)
        self.text_handoff_tokens += int(text_handoff_tokens)
        self.time_s = round(self.time_s + time_s, 6)


class RunResult(BaseModel):
    """What `RLM.run` returns.

    answer: the FINAL value; when a budget or an error ended the run, a partial answer (or None) with
    `partial` True and the reason in `stop_reason` (one of STOP_REASONS).
    error / hint: when the run ended without a final answer, what failed and why (one line), and what to do
    (the `final` event of the log carries the same; see `rlm.failures`).
    events: this run's trajectory events (nested runs' events are in `nested_events` and in the log).
    usage: per agent ("orchestrator", "worker:<name>", prefixed "d1:" ... for nested runs).
    graph: node-link dict of the call graph (`call_graph()` gives the networkx DiGraph back).
    """

    run_id: str
    query: str
    answer: str | None = None
    stop_reason: StopReason = "final"
    partial: bool = False
    error: str | None = None
    hint: str | None = None
    iterations: int = 0
    worker_calls: int = 0
    wall_s: float = 0.0
    trajectory: str = ""
    events: list[Event] = Field(default_factory=list)
    nested_events: list[Event] = Field(default_factory=list)
    usage: dict[str, AgentUsage] = Field(default_factory=dict)
    graph: dict[str, Any] = Field(default_factory=dict)
    graph_summary: GraphSummary = Field(default_factory=GraphSummary)
    log_path: str | None = None

    def call_graph(self) -> nx.DiGraph:
        return from_dict(self.graph)

    @property
    def total_tokens(self) -> int:
        return sum(u.input_tokens + u.output_tokens for u in self.usage.values())

    def worker_events(self, nested: bool = False) -> list[WorkerCall]:
        evs = list(self.events) + (list(self.nested_events) if nested else [])
        return [e for e in evs if e.type == "worker_call"]

    def kept_ratios(self) -> list[float]:
        return [r for e in self.worker_events() if e.result is not None and (r := e.result.kept_ratio) is not None]

    def median_kept_ratio(self) -> float | None:
        r = self.kept_ratios()
        return statistics.median(r) if r else None

    def usage_table(self) -> str:
        rows = [("agent", "calls", "input tok", "output tok", "text-handoff tok", "time s")]
        for u in self.usage.values():
            rows.append((u.agent, str(u.calls), str(u.input_tokens), str(u.output_tokens),
                         str(u.text_handoff_tokens) if u.role == "worker" else "-", f"{u.time_s:.1f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
