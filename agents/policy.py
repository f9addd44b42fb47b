"""Orchestrator policies: the one class users subclass.

A policy maps the state of a run (the query, a description of the context, the events so far,
the REPL's variables) to the next step: some text, possibly with Python code. The runtime
(`rlm.RLM`) runs the code in the sandbox, appends what happened to the trajectory and asks again,
until the code (or the text) calls ``FINAL(value)`` / ``FINAL_VAR(name)`` or a budget ends the run.

    from agents import OrchestratorPolicy, Step

    class AskOnce(OrchestratorPolicy):
        def step(self, state):
            if state.iteration == 0:
                return Step(code=f"answer = worker({state.query!r})\\nprint(answer)")
            return Step(code="FINAL_VAR('answer')")

`agents` knows nothing of `rlm`: the events are declared here, in `agents.events` (pydantic models the
runtime writes; ``e.type`` is one of ``run_start``, ``message``, ``code``, ``output``, ``worker_call``,
``notice``, ``final``, and each renders itself with ``e.render()``).
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

from pydantic import BaseModel, Field

from agents.events import CellOutput, Event, WorkerCall

# ```repl and ```python fences (```py too) hold code; any other fence is just text.
FENCE_RE = re.compile(r"```(?:repl|python|py)[ \t]*\r?\n(.*?)```", re.DOTALL)


def find_code_blocks(text: str) -> list[str]:
    """Code inside ```repl / ```python fences, in order (empty blocks dropped)."""
    return [m.group(1).strip("\n") for m in FENCE_RE.finditer(text or "") if m.group(1).strip()]


class Step(BaseModel):
    """One orchestrator step.

    text: what the orchestrator says (for an LLM, its whole response). Fenced ```repl / ```python
        blocks in it are run as cells when `code` is None; ``FINAL(...)`` / ``FINAL_VAR(name)`` at
        the start of a line outside code are honoured (compatibility with RLM prompts).
    code: explicit cells (one string or a list); when given, fences in `text` are not run.
    input_tokens / output_tokens: what producing this step cost the orchestrator (LLM policies).
    stop: the policy gives up; the run ends with stop_reason "policy_stopped" and a partial answer.
    """

    text: str = ""
    code: str | list[str] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    stop: bool = False

    def cells(self) -> list[str]:
        if self.code is None:
            return find_code_blocks(self.text)
        cells = [self.code] if isinstance(self.code, str) else list(self.code)
        return [c for c in cells if c and c.strip()]

    @property
    def code_in_text(self) -> bool:
        return self.code is None


class RunState(BaseModel):
    """What a policy sees. Built fresh by the runtime before every step."""

    model_config = {"arbitrary_types_allowed": True}

    query: str
    context_type: str = "str"
    context_length: int = 0                     # characters (or items for lists/dicts)
    context_lengths: list[int] = Field(default_factory=list)
    iteration: int = 0                          # 0-based index of the step being asked for
    depth: int = 0                              # 0 for the root run, 1 for a nested run, ...
    events: list[Event] = Field(default_factory=list)   # this run's events so far
    variables: dict[str, str] = Field(default_factory=dict)  # REPL names -> short type/repr
    worker_calls: int = 0
    tokens_used: int = 0
    elapsed_s: float = 0.0
    budgets: dict[str, Any] = Field(default_factory=dict)
    getter: Callable[[str], Any] | None = Field(default=None, exclude=True, repr=False)

    def get(self, name: str, default: Any = None) -> Any:
        """Value of a REPL variable (plain data), or `default` when it is not defined."""
        if self.getter is None:
            return default
        try:
            return self.getter(name)
        except Exception:
            return default

    def last(self, type_: str) -> Event | None:
        """The most recent event of a type ("output", "worker_call", ...), or None."""
        for e in reversed(self.events):
            if e.type == type_:
                return e
        return None

    def last_outputs(self) -> list[CellOutput]:
        """Cell outputs of the previous step."""
        prev = self.iteration - 1
        return [e for e in self.events if isinstance(e, CellOutput) and e.iteration == prev]

    def worker_answers(self) -> list[str]:
        return [e.answer for e in self.events if isinstance(e, WorkerCall) and e.answer is not None]


class OrchestratorPolicy(ABC):
    """Base class of orchestrator policies: implement `step`.

    `step(state) -> Step | str`: a str is taken as the orchestrator's text (fenced code in it runs).
    Optional hooks: `reset()` (called when a run starts), `partial_answer(state)` (what to return
    when a budget ends the run; default: the runtime's guess, see `rlm.RLM`).
    """

    name: str = "policy"

    @abstractmethod
    def step(self, state: RunState) -> Step | str:
        ...

    def reset(self) -> None:
        return None

    def partial_answer(self, state: RunState) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        """The policy's plain settings (str, number, bool, None fields of a dataclass policy)."""
        from dataclasses import fields, is_dataclass

        if not is_dataclass(self):
            return {}
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool, type(None)))}


def as_step(out: Step | str | Sequence[str] | None) -> Step | None:
    """Normalise what a policy returned."""
    if out is None or isinstance(out, Step):
        return out
    if isinstance(out, str):
        return Step(text=out)
    raise TypeError(f"policy.step must return Step or str, got {type(out).__name__}")
