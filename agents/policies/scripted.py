"""ScriptedPolicy: replays a fixed list of steps (tests, demos, replays of recorded runs).

Parameters:
    steps: the steps, each a `Step` or a str (orchestrator text; fenced ```repl code in it runs)
    repeat: when the list is exhausted, start over (a never-ending policy, to test budgets)
When the list is exhausted and `repeat` is False, the policy stops (stop_reason "policy_stopped").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from agents.policy import OrchestratorPolicy, RunState, Step


@dataclass
class ScriptedPolicy(OrchestratorPolicy):
    steps: list[Step | str] = field(default_factory=list)
    repeat: bool = False
    name: str = "scripted"

    def step(self, state: RunState) -> Step | str:
        if not self.steps:
            return Step(stop=True)
        i = state.iteration
        if i >= len(self.steps):
            if not self.repeat:
                return Step(text="(script exhausted)", stop=True)
            i %= len(self.steps)
        return self.steps[i]
