"""Trajectory events (pydantic) and their append-only text rendering.

Every event carries the run it belongs to (`run_id`), its index in that run (`seq`), the run's
depth, and time. Nested runs (a worker that is itself an RLM run) have their own `run_id`; their
`run_start` names the parent run and call (`parent_run`, `parent_call`).

`render(event)` depends on the event alone, so the rendering of events 1..n is always a prefix of
the rendering of events 1..n+1: the briefed worker extends its KV cache with only the new text.
"""
from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter


class EventBase(BaseModel):
    run_id: str = ""
    seq: int = 0
    depth: int = 0
    t: float = 0.0                  # seconds since the run started
    ts: float = Field(default_factory=time.time)   # wall clock (epoch seconds)


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


class OrchestratorMessage(EventBase):
    type: Literal["message"] = "message"
    iteration: int = 0
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    time_s: float = 0.0


class CodeCell(EventBase):
    type: Literal["code"] = "code"
    iteration: int = 0
    cell: int = 0
    code: str = ""
    in_message: bool = False        # the code is a fenced block of the message text (not rendered twice)


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


class WorkerCall(EventBase):
    type: Literal["worker_call"] = "worker_call"
    call_id: str = ""
    iteration: int = 0
    index: int = 0                  # 1-based count of worker calls in this run
    query: str = ""
    answer: str | None = None
    error: str | None = None
    worker: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    text_handoff_tokens: int = 0
    kept: int | None = None
    total: int | None = None
    compaction: dict[str, Any] | None = None
    latency_s: float = 0.0
    child_run: str | None = None
    folds: list[dict[str, Any]] | None = None   # folds of the worker's persistent cache during this call
    prefilled_tokens: int | None = None         # trajectory tokens the worker forwarded for this call
    cache_positions: int | None = None          # positions its persistent cache holds after the call


class Notice(EventBase):
    type: Literal["notice"] = "notice"
    iteration: int = 0
    text: str = ""


class Final(EventBase):
    type: Literal["final"] = "final"
    answer: str | None = None
    stop_reason: str = "final"
    source: str = ""                # "FINAL" | "FINAL_VAR" | "text" | "partial"


Event = Annotated[Union[RunStart, OrchestratorMessage, CodeCell, CellOutput, WorkerCall, Notice, Final],
                  Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter = TypeAdapter(Event)


def parse_event(data: dict[str, Any]) -> Any:
    return EVENT_ADAPTER.validate_python(data)


# -- rendering (what a worker reads) ---------------------------------------------------------------

def _block(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def render(e: Any) -> str:
    """Text of one event in the trajectory. Depends on the event only."""
    t = e.type
    if t == "run_start":
        shape = f"a {e.context_type} of {e.context_length} characters"
        if e.context_type != "str" and e.context_lengths:
            shape += f" in {len(e.context_lengths)} items"
        return f"Query: {e.query}\nContext: {shape}, in the REPL as `context`.\n\n"
    if t == "message":
        return f"[orchestrator]\n{_block(e.text.strip() or '(no text)')}\n"
    if t == "code":
        return "" if e.in_message else f"[code]\n```python\n{_block(e.code)}```\n\n"
    if t == "output":
        parts = []
        if e.stdout:
            parts.append(_block(e.stdout))
        if e.value is not None:
            parts.append(f"Out: {_block(e.value)}")
        if e.error:
            parts.append(f"Error: {_block(e.error)}")
        body = "".join(parts) or "(no output)\n"
        return f"[output]\n{body}\n"
    if t == "worker_call":
        answer = e.answer if e.answer is not None else f"(failed: {e.error})"
        return f"[worker call {e.index}]\nQuery: {_block(e.query.strip())}Answer: {_block(answer.strip())}\n"
    if t == "notice":
        return f"[runtime]\n{_block(e.text)}\n"
    if t == "final":
        return f"[final answer]\n{_block(str(e.answer))}\n"
    return ""
