"""A garbage policy never crashes a run: errors go back to the policy, budgets end it with a reason.

Runs on the fake sandbox, and on the real `repl.Sandbox` when it is importable.
"""
from __future__ import annotations

import pytest

from agents import OrchestratorPolicy, ScriptedPolicy, Step
from rlm import RLM, Budgets
from tests.fakes import FakeWorker, fake_factory

GARBAGE = [
    "Let me think about the context first.",                      # no code, no FINAL
    "```repl\nfor x in\n```",                                     # syntax error
    Step(code="x = 1 / 0"),                                       # code raising
    "FINAL_VAR(never_defined)",                                   # FINAL_VAR of an undefined name (text)
    Step(code="FINAL_VAR('also_undefined')"),                     # ... and in code
    Step(code="print('spam ' * 200000)"),                         # huge output
    Step(code="while True:\n    pass"),                           # never-ending loop
    Step(code="worker_batch('not a list')"),                      # bad primitive use
    Step(code="partial = worker(12345)"),                         # non-str query, still a call
    Step(text="", code=[]),                                       # an empty step
]


def _real_factory():
    try:
        from repl import Sandbox, SandboxConfig
    except ImportError:
        return None
    return (lambda prims, config: Sandbox(primitives=prims, config=config)), SandboxConfig(timeout_s=1.5,
                                                                                           output_limit=4000)


SANDBOXES = ["fake"] + (["real"] if _real_factory() else [])


def _rlm(policy, kind, budgets, worker=None):
    if kind == "fake":
        from types import SimpleNamespace

        factory, config = fake_factory, SimpleNamespace(timeout_s=1.5, output_limit=4000)
    else:
        factory, config = _real_factory()
    return RLM(policy, worker or FakeWorker(), sandbox_config=config, sandbox_factory=factory, budgets=budgets)


@pytest.mark.parametrize("kind", SANDBOXES)
def test_garbage_policy_survives_and_budget_ends_it(kind):
    n = len(GARBAGE)
    res = _rlm(ScriptedPolicy(GARBAGE, repeat=True), kind, Budgets(max_iterations=n + 2)).run("q?", "some context")
    assert res.stop_reason == "max_iterations" and res.partial
    assert res.iterations == n + 2
    outs = [e for e in res.events if e.type == "output"]
    errors = " | ".join(o.error or "" for o in outs)
    assert "SyntaxError" in errors and "ZeroDivisionError" in errors
    assert any(o.limit == "timeout" for o in outs)
    huge = next(o for o in outs if "spam" in o.stdout)
    assert len(huge.stdout) < 20_000
    notices = [e.text for e in res.events if e.type == "notice"]
    assert any("never_defined" in t for t in notices) and any("also_undefined" in t for t in notices)
    assert any("No ```repl code block" in t for t in notices)
    assert any(c.query == "12345" for c in res.worker_events())
    assert res.answer == "answer to: 12345"            # the REPL variable `partial`? no: last worker answer
    assert len(res.trajectory) < 60_000


@pytest.mark.parametrize("kind", SANDBOXES)
def test_worker_budget_inside_a_loop_stops_the_run(kind):
    step = Step(code="answers = []\nwhile True:\n    answers.append(worker('again'))")
    res = _rlm(ScriptedPolicy([step], repeat=True), kind, Budgets(max_worker_calls=5)).run("q?", "ctx")
    assert res.stop_reason == "max_worker_calls" and res.worker_calls == 5
    assert res.iterations == 1


@pytest.mark.parametrize("kind", SANDBOXES)
def test_errors_reach_the_policy(kind):
    seen = []

    class Learner(OrchestratorPolicy):
        def step(self, state):
            outs = state.last_outputs()
            seen.append([o.error for o in outs])
            if state.iteration == 0:
                return Step(code="undefined_thing + 1")
            return Step(code="FINAL('recovered')")

    res = _rlm(Learner(), kind, Budgets()).run("q", "ctx")
    assert res.answer == "recovered"
    assert "NameError" in seen[1][0]


class _Exploding(OrchestratorPolicy):
    def step(self, state):
        if state.iteration == 2:
            raise RuntimeError("policy bug")
        return Step(code=f"answer = 'step {state.iteration}'")


@pytest.mark.parametrize("kind", SANDBOXES)
def test_policy_exception_ends_run_with_partial_answer(kind):
    res = _rlm(_Exploding(), kind, Budgets()).run("q", "ctx")
    assert res.stop_reason == "policy_error" and res.partial
    assert res.answer == "step 1"


@pytest.mark.parametrize("kind", SANDBOXES)
def test_policy_returning_nonsense_type(kind):
    class Nonsense(OrchestratorPolicy):
        def step(self, state):
            return 42

    res = _rlm(Nonsense(), kind, Budgets()).run("q", "ctx")
    assert res.stop_reason == "policy_error"


@pytest.mark.parametrize("kind", SANDBOXES)
def test_wall_budget_caps_a_long_cell(kind):
    import time

    t0 = time.monotonic()
    res = _rlm(ScriptedPolicy([Step(code="while True:\n    pass")]), kind, Budgets(max_wall_s=0.8)).run("q", "ctx")
    assert res.stop_reason == "max_wall_s"
    assert time.monotonic() - t0 < 1.4 + (3.0 if kind == "real" else 0.5)   # the cell did not run its 1.5 s
