"""Recursion, depth 2: the root orchestrator hands each section of an essay to a worker that is
itself an RLM run (chunk-scan over its section), whose own worker is a briefed SmolLM2.

    .venv/bin/python examples/recursive.py [--log runs/recursive.jsonl]

Call graph: root orchestrator -> section orchestrators (depth 1) -> briefed worker (depth 2).
All runs write into one log; `rlm view` shows the section runs nested under the root's calls.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from agents import ChunkScanPolicy, OrchestratorPolicy, RunState, Step
from rlm import RLM, Budgets, RLMWorker


@dataclass
class SectionFanOut(OrchestratorPolicy):
    """Split the context into `sections` parts, ask a worker about each (`worker(query, section)`),
    keep the first answer that is not a refusal."""

    sections: int = 2
    name: str = "section-fan-out"

    def step(self, state: RunState) -> Step:
        if state.iteration == 0:
            return Step(text=f"Splitting the context into {self.sections} sections, one worker run each.", code=(
                f"size = len(context) // {self.sections} + 1\n"
                "sections = [context[i:i + size] for i in range(0, len(context), size)]\n"
                "notes = [worker(query, s) for s in sections]\n"
                "print(notes)"))
        return Step(text="Keeping the first informative section answer.", code=(
            "useful = [n for n in notes if n and 'not in this' not in n.lower()]\n"
            "FINAL(useful[0] if useful else notes[0])"))


def build(leaf_worker, log_path: str | None = None) -> RLM:
    section_rlm = RLM(ChunkScanPolicy(chunk_chars=600, verify=False), leaf_worker, budgets=Budgets(max_iterations=8))
    return RLM(SectionFanOut(), RLMWorker(section_rlm, name="section-rlm"), budgets=Budgets(max_depth=1),
               log_path=log_path)


def main(argv: list[str] | None = None) -> int:
    import briefing
    from agents import BriefedWorker
    from rlm.data import read_essay

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--essay", default="foundervisa.txt")
    ap.add_argument("--query", default="What new kind of visa does the author propose?")
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)

    result = build(BriefedWorker(briefing.load_model(), max_new_tokens=48), args.log).run(args.query,
                                                                                          read_essay(args.essay))
    print("Answer:", result.answer, f"({result.stop_reason})")
    print(result.usage_table())
    print("\n".join(result.graph_summary.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
