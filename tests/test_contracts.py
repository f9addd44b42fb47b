"""Declared contracts between the layers: the REPL session protocol, the worker call context, stop reasons,
errors reported in the run log instead of dropped."""
from __future__ import annotations

import typing

import pytest

from agents import CallContext, ScriptedPolicy, Step, Worker, WorkerAnswer
from repl import CellResult, ReplSession, Sandbox
from rlm import RLM, STOP_REASONS, Budgets, RLMWorker, RunResult
from rlm.result import StopReason
from tests.fakes import FakeSandbox, FakeWorker, fake_factory


def test_sandbox_and_the_fake_implement_the_session_protocol():
    fake = FakeSandbox({"x": 1})
    assert isinstance(fake, ReplSession)
    res = fake.run("y = x + 1\ny")
    assert isinstance(res, CellResult) and res.value == "2" and res.ok
    assert fake.get("y") == 2 and fake.names() == {"y": "int"}
    with Sandbox(primitives={"x": 1}) as box:
        assert isinstance(box, ReplSession)
        real = box.run("y = x + 1\ny")
        assert isinstance(real, CellResult) and real.value == res.value and box.get("y") == fake.get("y")
    assert not isinstance(object(), ReplSession)


def test_the_contract_lives_in_its_own_module():
    """Issue 24, 6: ReplSession, SessionFactory, CellResult, SandboxConfig and SandboxError are
    repl.session's (pydantic only); repl.Sandbox implements them; `from repl import X` still works
    and `import repl` stays lazy."""
    import subprocess
    import sys

    import repl
    import repl.sandbox
    import repl.session

    for name in ("CellResult", "ReplSession", "SessionFactory", "SandboxConfig", "SandboxError"):
        assert getattr(repl, name) is getattr(repl.session, name)
    assert repl.sandbox.CellResult is repl.session.CellResult and repl.Sandbox is repl.sandbox.Sandbox
    assert issubclass(repl.Sandbox, object) and hasattr(repl.Sandbox, "run")
    code = ("import sys, repl; assert 'repl.sandbox' not in sys.modules and 'pydantic' not in sys.modules\n"
            "from repl.session import CellResult, ReplSession, SessionFactory\n"
            "assert 'repl.sandbox' not in sys.modules\n"
            "from repl import SandboxError; assert 'repl.sandbox' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_factory_must_return_a_session():
    with pytest.raises(TypeError, match="not a repl.ReplSession"):
        RLM(ScriptedPolicy(["FINAL(1)"]), FakeWorker(), sandbox_factory=lambda p, c: object()).run("q", "c")


def test_rlm_refuses_what_is_not_a_policy_or_a_worker():
    with pytest.raises(TypeError, match="policy must be an agents.OrchestratorPolicy"):
        RLM("FINAL(1)", FakeWorker())
    with pytest.raises(TypeError, match="worker must be an agents.Worker"):
        RLM(ScriptedPolicy(["FINAL(1)"]), lambda q, t: "yes")
    with pytest.raises(TypeError, match="rlm must be an rlm.RLM"):
        RLMWorker(FakeWorker())
    with pytest.raises(ValueError, match="context must be 'query', 'trajectory'"):
        RLMWorker(RLM(ScriptedPolicy(["FINAL(1)"]), FakeWorker()), context="everything")


def test_stop_reason_is_a_literal():
    assert STOP_REASONS == typing.get_args(StopReason) and "final" in STOP_REASONS
    with pytest.raises(ValueError):
        RunResult(run_id="r", query="q", stop_reason="bored")


class ContextWorker(Worker):
    """A user-written worker that takes `worker(query, text)` itself and reads the public call context."""

    name = "ctx"
    takes_context = True

    def __init__(self) -> None:
        self.calls: list[tuple[CallContext, object]] = []

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        return WorkerAnswer(text="plain answer", worker=self.name)

    def answer_call(self, query, trajectory, call, context=None):
        self.calls.append((call, context))
        return WorkerAnswer(text=f"{query} on {context} at depth {call.depth}", worker=self.name)


def test_worker_call_context_is_public():
    worker = ContextWorker()
    res = RLM(ScriptedPolicy([Step(code='a = worker("sum", [1, 2])\nb = worker("q")\nFINAL(a + " | " + b)')]), worker,
              sandbox_factory=fake_factory, budgets=Budgets(max_depth=3)).run("q", "ctx")
    assert res.answer == "sum on [1, 2] at depth 0 | q on None at depth 0"
    (first, ctx1), (second, ctx2) = worker.calls
    assert ctx1 == [1, 2] and ctx2 is None
    assert first.run_id == res.run_id and first.call_id == f"{res.run_id}.1" and second.call_id == f"{res.run_id}.2"
    assert first.max_depth == 3 and first.may_nest
    plain = FakeWorker()   # takes_context False: the runtime appends the text to the query
    RLM(ScriptedPolicy([Step(code='FINAL(worker("sum", "1 2"))')]), plain, sandbox_factory=fake_factory).run("q", "c")
    assert plain.calls[0][0] == "sum\n\n1 2"


def test_run_refuses_a_parent_it_did_not_make():
    rlm = RLM(ScriptedPolicy(["FINAL(1)"]), FakeWorker(), sandbox_factory=fake_factory)
    with pytest.raises(TypeError, match="parent must be the CallContext"):
        rlm.run("q", "c", parent=CallContext(run_id="r", call_id="r.1", depth=0, max_depth=1))


class BrokenPolicy(ScriptedPolicy):
    def describe(self):
        raise RuntimeError("describe exploded")

    def partial_answer(self, state):
        raise RuntimeError("partial exploded")


def test_errors_the_run_survives_are_reported_in_the_log(tmp_path):
    closing = []

    class BadClose(FakeSandbox):
        def close(self):
            closing.append(1)
            raise OSError("close exploded")

    res = RLM(BrokenPolicy(["x = 1"]), FakeWorker(), sandbox_factory=lambda p, c: BadClose(p, c),
              budgets=Budgets(max_iterations=1), log_path=str(tmp_path / "run.jsonl")).run("q", "c")
    notices = [e.text for e in res.events if e.type == "notice"]
    assert res.stop_reason == "max_iterations" and closing
    assert any("policy.describe() failed: RuntimeError: describe exploded" in n for n in notices)
    assert any("policy.partial_answer failed: RuntimeError: partial exploded" in n for n in notices)
    from rlm import read_log

    logged = [e.text for e in read_log(tmp_path / "run.jsonl") if e.type == "notice"]
    assert any("closing the sandbox failed: OSError: close exploded" in n for n in logged)


def test_llm_policy_needs_a_backend_when_built():
    from agents import LLMPolicy

    with pytest.raises(TypeError, match="missing 1 required positional argument: 'backend'"):
        LLMPolicy()
    with pytest.raises(TypeError, match="backend must be an agents.ChatBackend"):
        LLMPolicy(None)
    with pytest.raises(TypeError, match="backend must be an agents.ChatBackend"):
        LLMPolicy("http://localhost:8000")


def test_events_live_in_agents_and_render_themselves():
    import agents.events
    import rlm.events
    from agents.events import (CellOutput, CodeCell, EventBase, Final, Notice, OrchestratorMessage, RunStart,
                               WorkerCall, render)

    assert rlm.events is agents.events
    events = [RunStart(query="q", context_length=3), OrchestratorMessage(text="hi"), CodeCell(code="x = 1"),
              CellOutput(stdout="1\n", value="2", error="E: e"), WorkerCall(index=1, query="q", answer="a"),
              Notice(text="n"), Final(answer="f")]
    heads = ["Query: q", "[orchestrator]", "[code]", "[output]", "[worker call 1]", "[runtime]", "[final answer]"]
    for e, head in zip(events, heads, strict=True):
        assert type(e).render is not EventBase.render and e.render() == render(e) and e.render().startswith(head)
    assert CellOutput(stdout="1\n", value="2", error="E: e").text() == "1\nOut: 2\nError: E: e"


@pytest.mark.parametrize(("make", "match"), [
    (lambda: Budgets(max_iterations=0), "Budgets: max_iterations: input should be greater than or equal to 1"),
    (lambda: Budgets(max_wall_s=float("inf")), "Budgets: max_wall_s"),
    (lambda: Budgets(max_depth=-1), "Budgets: max_depth"),
    (lambda: __import__("agents").ChunkScanPolicy(chunk_chars=0),
     "ChunkScanPolicy: chunk_chars must be an integer >= 1"),
    (lambda: __import__("agents").ChunkScanPolicy(chunk_chars=10, overlap=10),
     "overlap must be smaller than chunk_chars"),
    (lambda: __import__("agents").ChunkScanPolicy(max_chunks=0), r"max_chunks must be an integer >= 1 \(or None\)"),
    (lambda: __import__("agents").OpenAIChatBackend(timeout_s=0),
     "OpenAIChatBackend: timeout_s must be a finite number > 0"),
    (lambda: __import__("agents").OpenAIChatBackend(max_retries=-1), "max_retries must be an integer >= 0"),
    (lambda: __import__("agents").LocalChatBackend(max_new_tokens=0), "LocalChatBackend: max_new_tokens must be"),
    (lambda: __import__("agents").LocalChatBackend(temperature=-1.0), "LocalChatBackend: temperature must be"),
    (lambda: __import__("agents").LLMPolicy(__import__("agents").LocalChatBackend(), max_output_chars=0),
     "LLMPolicy: max_output_chars must be an integer >= 1"),
])
def test_public_constructors_refuse_bad_values_in_one_line(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_importing_the_runtime_loads_no_torch_and_briefing_loads_lazily():
    """`import agents` and `import rlm` load no torch; `import briefing` loads its names when they are used."""
    import subprocess
    import sys

    code = ("import sys, agents, rlm, briefing; print('torch' in sys.modules); "
            "briefing.BriefingError; briefing.CompactionStats; print('torch' in sys.modules); "
            "briefing.TrajectoryCache; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]
