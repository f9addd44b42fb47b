"""The policy subclass shown in README.md works as written."""
from __future__ import annotations

import re
from pathlib import Path

from rlm import RLM, Budgets
from rlm.data import read_essay
from tests.fakes import FakeWorker

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_policy_snippet() -> str:
    section = README.read_text().split("### Writing your own orchestrator policy", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_policy_subclass_runs_as_written():
    namespace: dict = {"__name__": "readme_snippet"}
    import sys
    import types

    sys.modules["readme_snippet"] = types.ModuleType("readme_snippet")  # dataclasses look their module up
    exec(compile(readme_policy_snippet(), "README.md", "exec"), namespace)
    worker = FakeWorker(lambda q, t: "a visa for founders" if "visa for startup founders" in t else "?")
    result = RLM(namespace["GrepThenAsk"](), worker, budgets=Budgets(max_iterations=5)).run(
        "What new kind of visa does the author propose?", read_essay("foundervisa.txt"))
    assert result.stop_reason == "final" and result.answer == "a visa for founders"
    assert worker.calls and worker.calls[0][0].endswith("Answer from the sentences above.")
