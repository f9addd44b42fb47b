"""README.md as a newcomer reads it: its Python blocks run as written, it stays short, and every relative link in
it and in docs/*.md reaches a file (and, for a Markdown file, a heading)."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from rlm import RLM, Budgets
from rlm.data import read_essay
from tests.fakes import FakeWorker

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 300
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path = README) -> list[str]:
    """The ```python fenced blocks of a Markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


def run_block(code: str) -> dict:
    """Run a README block as a script would (its own module, so dataclasses find it) and return its namespace."""
    sys.modules["readme_snippet"] = types.ModuleType("readme_snippet")
    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def examples() -> list[str]:
    """The two example blocks (an RLM run, the briefing layer alone); the policy block has its own tests."""
    return [b for b in python_blocks() if "class GrepThenAsk" not in b]


def test_readme_has_the_two_python_examples():
    blocks = examples()
    assert len(blocks) == 2, "tests/test_readme.py runs the README's two Python blocks: update it with the README"
    assert "RLM(" in blocks[0] and "cache.compact(" in blocks[1]


def test_readme_examples_run_as_written_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    """Both blocks, unchanged, with `briefing.load_model()` answering a tiny random-weight model (no real weights:
    the fast check that the code itself is right). Every token of the tiny model ends a generation, so each call
    runs the whole pipeline (prefill, folds, compaction, decoding) without 64 random tokens."""
    import briefing
    from tests.tiny import tiny_model

    lm = tiny_model("llama-gqa", max_positions=4096)  # room for BriefedWorker's reserve of 512 and a fold
    lm.model.generation_config.eos_token_id = list(range(len(lm.tokenizer)))
    monkeypatch.setattr(briefing, "load_model", lambda *args, **kwargs: lm)
    monkeypatch.chdir(tmp_path)
    rlm_run, briefing_alone = examples()
    result = run_block(rlm_run)["result"]
    assert result.stop_reason and result.worker_calls >= 1
    assert (tmp_path / "runs" / "essay.jsonl").is_file()
    ns = run_block(briefing_alone)
    assert ns["ctx"].stats.original_length > ns["ctx"].stats.kept > 0
    assert "positions kept" in capsys.readouterr().out


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path, monkeypatch):
    """Both blocks as a user runs them: the embedded model, and the answers the README's questions ask for."""
    monkeypatch.chdir(tmp_path)
    rlm_run, briefing_alone = examples()
    result = run_block(rlm_run)["result"]
    assert result.stop_reason == "final" and "visa" in result.answer.lower(), result.answer
    out = run_block(briefing_alone)["out"]
    assert "4417" in out.text, out.text


def test_readme_is_at_most_300_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move detail into docs/ (design, benchmarks, ...)"


# -- links ----------------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^(`{3,})[^`\n]*\n.*?^\1`*[ \t]*$", re.S | re.M)  # a fence's info string has no backtick
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code spans (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def test_slug_follows_github():
    assert slug("End to end: task families") == "end-to-end-task-families"
    assert slug("Briefing engine: `make bench`") == "briefing-engine-make-bench"
    assert slug("`rlm bench`") == "rlm-bench"
    assert slug("Running as a non-root host") == "running-as-a-non-root-host"


def test_fences_are_code_but_inline_backticks_are_not():
    text = "# A\n```python\n# not a heading\n```\n```` ```repl ```` runs\n## B\n"
    assert "not a heading" not in FENCE.sub("", text) and "## B" in FENCE.sub("", text)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links of `path` to a missing file or heading (paths shown relative to `root`)."""
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:: not checked offline
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(root) if dest.is_relative_to(root) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(root)})")
    return broken


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_files_and_headings(path):
    assert not broken_links(path), f"{path.relative_to(ROOT)}: broken links {broken_links(path)}"


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Sub part\n\n[ok](b.md#other) [self](#sub-part) [gone](c.md)\n"
                                   "[bad anchor](b.md#nope) `[code](x.md)` [web](https://example.org)\n")
    (tmp_path / "b.md").write_text("# Other\n")
    assert broken_links(tmp_path / "a.md", tmp_path) == ["c.md (no file c.md)", "b.md#nope (no heading #nope in b.md)"]


def readme_policy_snippet() -> str:
    section = README.read_text().split("### Your own orchestrator policy", 1)[1]
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

    section = README.read_text().split("## The CLI at a glance", 1)[1]
    code = re.search(r'ESSAY=\$\(\.venv/bin/python -c "(.*?)"\)', section).group(1)
    path = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(path).is_file() and Path(path).parent.name == "pg_essays" and "visa" in Path(path).read_text()
    assert '--context "$ESSAY"' in section and "essay.txt" not in README.read_text()
