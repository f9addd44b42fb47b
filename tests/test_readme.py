"""The policy subclass shown in README.md works as written."""
from __future__ import annotations

import re
from pathlib import Path

from rlm import RLM, Budgets
from rlm.data import read_essay
from tests.fakes import FakeWorker

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


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
    assert worker.calls and worker.calls[0][0].endswith("Answer from the sentences printed above, in a few words.")


def test_readme_policy_is_the_example_policy():
    """The README shows `examples/custom_policy.py`'s GrepThenAsk, character for character."""
    import ast

    example = (ROOT / "examples" / "custom_policy.py").read_text()
    node = next(n for n in ast.parse(example).body if isinstance(n, ast.ClassDef) and n.name == "GrepThenAsk")
    source = "@dataclass\n" + ast.get_source_segment(example, node)
    assert source in readme_policy_snippet()


def test_readme_essay_command_prints_a_shipped_file():
    """The README's `ESSAY=$(python -c ...)` line names a file that ships, and `rlm run` takes it."""
    import subprocess
    import sys

    section = README.read_text().split("## Running an RLM", 1)[1]
    code = re.search(r'ESSAY=\$\(\.venv/bin/python -c "(.*?)"\)', section).group(1)
    path = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(path).is_file() and Path(path).parent.name == "pg_essays" and "visa" in Path(path).read_text()
    assert '--context "$ESSAY"' in section and "essay.txt" not in README.read_text()
