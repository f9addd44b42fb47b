"""A custom orchestrator policy: subclass `OrchestratorPolicy` and map the run state to the next step.

    .venv/bin/python examples/custom_policy.py

`GrepThenAsk` finds the sentences of the context that mention a keyword (plain Python in the REPL),
prints them (so they enter the trajectory the worker reads), asks the worker the question about
"the sentences above", and returns the worker's answer with FINAL_VAR.
"""
from __future__ import annotations

from dataclasses import dataclass

from agents import OrchestratorPolicy, RunState, Step


@dataclass
class GrepThenAsk(OrchestratorPolicy):
    """Grep the context for `keyword`, show the hits, ask the worker about them.

    keyword: what to look for (case-insensitive); max_hits: sentences printed at most.
    """

    keyword: str = "visa"
    max_hits: int = 8
    name: str = "grep-then-ask"

    def step(self, state: RunState) -> Step:
        if state.iteration == 0:
            return Step(text=f"Looking for sentences that mention {self.keyword!r}.", code=(
                f"hits = [s.strip() for s in context.split('.') if {self.keyword.lower()!r} in s.lower()]\n"
                f"print('. '.join(hits[:{self.max_hits}]) or 'no hits')"))
        if "answer" not in state.variables:
            question = f"{state.query} Answer from the sentences printed above, in a few words."
            return Step(text="Asking the worker about those sentences.", code=f"answer = worker({question!r})")
        return Step(text="The worker answered.\nFINAL_VAR(answer)")


def main() -> int:
    import briefing
    from agents import BriefedWorker
    from rlm import RLM, Budgets
    from rlm.data import read_essay

    rlm = RLM(GrepThenAsk(keyword="visa"), BriefedWorker(briefing.load_model()), budgets=Budgets(max_iterations=5))
    result = rlm.run("What new kind of visa does the author propose?", read_essay("foundervisa.txt"))
    print("Answer:", result.answer, f"({result.stop_reason})")
    print(result.usage_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
