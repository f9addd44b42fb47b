"""The examples work as written: custom_policy.py (the subclass from the docs), recursive.py,
openai_orchestrator.py (against a loopback server), quickstart.py (imports, --help)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from rlm import RLM, Budgets
from rlm.data import read_essay
from tests.fakes import FakeWorker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUERY = "What new kind of visa does the author propose?"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_custom_policy_subclass_as_written():
    mod = load("custom_policy")
    worker = FakeWorker(lambda q, t: "a visa for startup founders" if "visa for startup founders" in t else "?")
    res = RLM(mod.GrepThenAsk(keyword="visa"), worker, budgets=Budgets(max_iterations=5)).run(
        QUERY, read_essay("foundervisa.txt"))
    assert res.stop_reason == "final" and res.answer == "a visa for startup founders"
    printed = next(e for e in res.events if e.type == "output").stdout
    assert "new class of visa for startup founders" in printed
    assert worker.calls[0][0].startswith(QUERY)


@pytest.mark.slow
def test_custom_policy_main_runs(capsys):
    assert load("custom_policy").main() == 0
    assert "Answer:" in capsys.readouterr().out


def test_recursive_example_builds_a_depth_two_tree(tmp_path):
    mod = load("recursive")
    log = tmp_path / "rec.jsonl"
    leaf = FakeWorker(lambda q, t: "a visa for founders" if "visa for startup founders" in t else "not in this chunk")
    res = mod.build(leaf, str(log)).run(QUERY, read_essay("foundervisa.txt"))
    assert res.stop_reason == "final" and res.answer
    assert res.graph_summary.depth == 2
    children = {e.run_id for e in res.nested_events if e.type == "run_start"}
    assert len(children) == 2 and res.worker_calls == 2
    assert {e.depth for e in res.nested_events} == {1}
    assert sum(1 for line in log.read_text().splitlines() if json.loads(line)["type"] == "run_start") == 3


def test_openai_orchestrator_example_against_loopback(tmp_path, capsys):
    from tests.test_agents_openai import Server, _ok

    mod = load("openai_orchestrator")
    server = Server()
    replies = iter([
        _ok("```repl\nprint(context[:40])\nnote = worker('What is the document about?')\n```"),
        _ok("Done.\nFINAL_VAR(note)"),
    ])

    # orchestrator requests get the scripted replies; worker requests (TextWorker over the API) get a fixed answer
    def respond():
        req = server.requests[-1]["body"]["messages"]
        if "REPL" in req[0]["content"] and "worker model assisting" not in req[0]["content"]:
            return _ok(next(replies)["choices"][0]["message"]["content"])
        return _ok("a visa proposal")

    class Script(list):
        def pop(self, i=0):
            return (200, respond(), {}, 0)

        def __bool__(self):
            return True

    server.script = Script()
    ctx = tmp_path / "doc.txt"
    ctx.write_text(read_essay("foundervisa.txt"))
    try:
        rc = mod.main(["--context", str(ctx), "--query", QUERY, "--worker", "api", "--base-url", server.url,
                       "--api-key", "k", "--model", "m", "--log", str(tmp_path / "o.jsonl")])
    finally:
        server.close()
    assert rc == 0
    out = capsys.readouterr().out
    assert "Answer: a visa proposal" in out and "Stop reason: final" in out
    worker_req = next(r for r in server.requests if "worker model assisting" in r["body"]["messages"][0]["content"])
    assert "print(context[:40])" in worker_req["body"]["messages"][0]["content"]   # trajectory pasted as text


def test_quickstart_imports_and_has_help(capsys):
    mod = load("quickstart")
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    assert "--worker" in capsys.readouterr().out
