"""Trajectory events (pydantic), each rendering itself as append-only text.

The lowest layer that reads them is `agents` (policies read a run's events); the runtime (`rlm`) writes
them. `rlm.events` is the same module.

Every event carries the run it belongs to (`run_id`), its index in that run (`seq`), the run's
depth, and time. Nested runs (a worker that is itself an RLM run) have their own `run_id`; their
`run_start` names the parent run and call (`parent_run`, `parent_call`).

`event.render()` depends on the event alone, so the rendering of events 1..n is always a prefix of
the rendering of events 1..n+1: the briefed worker extends its KV cache with only the new text.
"""
from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, model_validator

from agents.workers.base import WorkerAnswer


def _block(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


class EventBase(BaseModel):
    run_id: str = ""
    seq: int = 0
    depth: int = 0
    t: float = 0.0                  # seconds since the run started
    ts: float = Field(default_factory=time.time)   # wall clock (epoch seconds)

    def render(self) -> str:
        """Text of this event in the trajectory (what a worker reads). Depends on the event only."""
        raise NotImplementedError(f"{type(self).__name__} must implement render()")


class RunStart(EventBase):
    type: Literal["run_start"] = "run_start"
    query: str
    context_type: str = "str"
    context_length: int = 0
    context_lengths: list[int] = Field(default_factory=list)
    policy: dict[str, Any] = Field(default_factory=dict)
    worker: dict[str, Any] = Field(default_factory=dict)
    budgets: dict[str, Any] = Field(default_factory=dict)
    parent_run: str | None = None
    parent_call: str | None = None

    def render(self) -> str:
        shape = f"a {self.context_type} of {self.context_length} characters"
        if self.context_type != "str" and self.context_lengths:
            shape += f" in {len(self.context_lengths)} items"
        return f"Query: {self.query}\nContext: {shape}, in the REPL as `context`.\n\n"


class OrchestratorMessage(EventBase):
    type: Literal["message"] = "message"
    iteration: int = 0
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    time_s: float = 0.0

    def render(self) -> str:
        return f"[orchestrator]\n{_block(self.text.strip() or '(no text)')}\n"


class CodeCell(EventBase):
    type: Literal["code"] = "code"
    iteration: int = 0
    cell: int = 0
    code: str = ""
    in_message: bool = False        # the code is a fenced block of the message text (not rendered twice)

    def render(self) -> str:
        return "" if self.in_message else f"[code]\n```python\n{_block(self.code)}```\n\n"


class CellOutput(EventBase):
    type: Literal["output"] = "output"
    iteration: int = 0
    cell: int = 0
    stdout: str = ""
    value: str | None = None
    error: str | None = None
    error_type: str | None = None
    limit: str | None = None
    duration_s: float = 0.0

    def text(self) -> str:
        """stdout, value and error as a notebook shows them ("" when the cell printed nothing)."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.value is not None:
            parts.append(f"Out: {self.value}")
        if self.error:
            parts.append(f"Error: {self.error}")
        return "\n".join(parts)

    def render(self) -> str:
        parts = []
        if self.stdout:
            parts.append(_block(self.stdout))
        if self.value is not None:
            parts.append(f"Out: {_block(self.value)}")
        if self.error:
            parts.append(f"Error: {_block(self.error)}")
        body = "".join(parts) or "(no output)\n"
        return f"[output]\n{body}\n"


LEGACY_CALL_FIELDS = ("input_tokens", "output_tokens", "text_handoff_tokens", "latency_s", "child_run")
LEGACY_BRIEFING_FIELDS = ("kept", "total", "compaction", "folds", "prefilled_tokens", "cache_positions",
                          "trajectory_tokens", "recalled_tokens")


class WorkerCall(EventBase):
    """A `worker(...)` call: the query, and the worker's own record of the call (`result`, a WorkerAnswer), or the
    error it raised. `worker` names the worker that was called."""

    type: Literal["worker_call"] = "worker_call"
    call_id: str = ""
    iteration: int = 0
    index: int = 0                  # 1-based count of worker calls in this run
    query: str = ""
    worker: str = ""
    result: WorkerAnswer | None = None
    error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """Logs written before the record was embedded had its fields flat on the event: read them too."""
        if not isinstance(data, dict) or "result" in data or "answer" not in data:
            return data
        data = dict(data)
        text = data.pop("answer")
        flat = {k: data.pop(k) for k in LEGACY_CALL_FIELDS if k in data}
        briefed = {k: data.pop(k) for k in LEGACY_BRIEFING_FIELDS if k in data}
        if text is None:
            return data
        if briefed.get("kept") is not None and briefed.get("compaction"):
            flat["briefing"] = {k: v for k, v in briefed.items() if v is not None}
        data["result"] = {"text": text, "worker": data.get("worker", ""), **flat}
        return data

    @property
    def answer(self) -> str | None:
        return self.result.text if self.result is not None else None

    def render(self) -> str:
        answer = self.answer if self.answer is not None else f"(failed: {self.error})"
        return f"[worker call {self.index}]\nQuery: {_block(self.query.strip())}Answer: {_block(answer.strip())}\n"


class Notice(EventBase):
    type: Literal["notice"] = "notice"
    iteration: int = 0
    text: str = ""

    def render(self) -> str:
        return f"[runtime]\n{_block(self.text)}\n"


class Final(EventBase):
    type: Literal["final"] = "final"
    answer: str | None = None
    stop_reason: str = "final"
    source: str = ""                # "FINAL" | "FINAL_VAR" | "text" | "partial"
    error: str | None = None        # no final answer: what failed and why (one line; rlm.failures)
    hint: str | None = None         # and what to do about it

    def render(self) -> str:
        return f"[final answer]\n{_block(str(self.answer))}\n"


Event = Annotated[Union[RunStart, OrchestratorMessage, CodeCell, CellOutput, WorkerCall, Notice, Final],
                  Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter = TypeAdapter(Event)


def parse_event(data: dict[str, Any]) -> Event:
    return EVENT_ADAPTER.validate_python(data)


def render(e: Event) -> str:
    """Text of one event in the trajectory: `e.render()`."""
    return e.render()
