"""The RLM loop with a fake worker (no model): FINAL paths, budgets, log replay, events, call graph."""
from __future__ import annotations

import json

import pytest

from agents import ChunkScanPolicy, OrchestratorPolicy, ScriptedPolicy, Step
from rlm import RLM, Budgets, Trajectory, read_log, replay
from rlm.events import render
from rlm.parsing import find_code_blocks, find_final
from tests.fakes import FakeSandbox, FakeWorker, fake_factory

DOC = ("The lighthouse keeper was named Ada. " * 12 + "The vault code is 4721. " + "Gulls circled the rocks. " * 12)


def make(policy, worker=None, **kw):
    kw.setdefault("sandbox_factory", fake_factory)
    kw.setdefault("sandbox_config", None)
    return RLM(policy, worker or FakeWorker(), **kw)


# -- parsing --------------------------------------------------------------------------------------

def test_find_code_blocks_accepts_repl_and_python_fences_only():
    text = "a\n```repl\nx = 1\n```\nb\n```python\nprint(x)\n```\n```bash\nls\n```\n```\nplain\n```"
    assert find_code_blocks(text) == ["x = 1", "print(x)"]


@pytest.mark.parametrize("text,expected", [
    ("done\nFINAL(42)", ("FINAL", "42")),
    ("FINAL(f(g(1)) + 2)", ("FINAL", "f(g(1)) + 2")),
    ('FINAL("Blue")', ("FINAL", "Blue")),
    ("  FINAL_VAR(answer)", ("FINAL_VAR", "answer")),
    ("FINAL_VAR('answer')\nFINAL(3)", ("FINAL_VAR", "answer")),
    ("the FINAL(3) is not at a line start", None),
    ("```repl\nFINAL(1)\n```", None),
    ("no final here", None),
    ("FINAL(unbalanced (", ("FINAL", "unbalanced (")),
])
def test_find_final(text, expected):
    assert find_final(text) == expected


# -- the loop -------------------------------------------------------------------------------------

def test_chunk_scan_with_fake_worker_answers_and_log_replays(tmp_path):
    log = tmp_path / "run.jsonl"
    worker = FakeWorker(lambda q, t: "yes" if "yes or no" in q else ("4721" if "4721" in t else "nothing"))
    res = make(ChunkScanPolicy(chunk_chars=300), worker, log_path=str(log)).run("What is the vault code?", DOC)
    assert res.stop_reason == "final" and not res.partial
    assert res.answer == "4721"
    assert res.worker_calls == len(res.worker_events()) == 3 + 2   # 3 chunks, answer, verify
    # the log replays into the same trajectory, event for event
    events = read_log(log)
    assert [e.model_dump(exclude={"ts"}) for e in events] == [e.model_dump(exclude={"ts"}) for e in res.events]
    assert replay(log).text == res.trajectory
    # each worker call saw the trajectory rendered up to the call
    for (q, seen), ev in zip(worker.calls, res.worker_events(), strict=True):
        assert res.trajectory.startswith(seen)
        assert ev.query == q


def test_rendering_is_append_only_and_depends_on_events_only():
    res = make(ChunkScanPolicy(chunk_chars=200)).run("q?", DOC)
    traj = Trajectory.from_events(res.events)
    texts = [traj.text_upto(n) for n in range(len(res.events) + 1)]
    assert all(texts[n + 1].startswith(texts[n]) for n in range(len(texts) - 1))
    assert texts[-1] == res.trajectory == "".join(render(e) for e in res.events)


def test_events_are_flushed_to_the_log_as_they_happen(tmp_path):
    log = tmp_path / "live.jsonl"
    seen_lines = []

    def on_event(e):
        seen_lines.append(len(log.read_text().splitlines()))

    res = make(ChunkScanPolicy(chunk_chars=300), log_path=str(log), on_event=on_event).run("q?", DOC)
    # when the k-th event is announced, the log already holds k lines
    assert seen_lines == list(range(1, len(res.events) + 1))
    first = json.loads(log.read_text().splitlines()[0])
    assert first["type"] == "run_start" and first["query"] == "q?"


@pytest.mark.parametrize("final_step,expected", [
    (Step(code="FINAL('in code')"), "in code"),
    (Step(code="x = 6 * 7\nFINAL_VAR('x')"), "42"),
    (Step(code="x = [3, 4]\nFINAL_VAR(x)"), "[3, 4]"),     # not a str: the value itself
    ("Here it is.\nFINAL(in text)", "in text"),
    ("```python\ny = [1, 2]\n```\nFINAL_VAR(y)", "[1, 2]"),  # code runs first, then the text FINAL_VAR
])
def test_final_paths(final_step, expected):
    res = make(ScriptedPolicy([final_step])).run("q", "ctx")
    assert res.stop_reason == "final" and res.answer == expected
    assert res.events[-1].type == "final" and res.events[-1].answer == expected


def test_code_fences_in_text_run_in_order_and_are_not_rendered_twice():
    text = "First:\n```repl\na = 1\n```\nthen\n```python\nprint(a + 1)\n```"
    res = make(ScriptedPolicy([text, "FINAL(ok)"])).run("q", "ctx")
    outs = [e for e in res.events if e.type == "output"]
    assert [o.stdout for o in outs] == ["", "2\n"]
    assert res.trajectory.count("print(a + 1)") == 1


def test_worker_batch_and_worker_errors_go_back_to_the_cell():
    def fn(q, t):
        if q == "boom":
            raise RuntimeError("model fell over")
        return q.upper()

    steps = [Step(code="r = worker_batch(['a', 'b'])\nprint(r)"),
             Step(code="worker('boom')"),
             Step(code="FINAL_VAR('r')")]
    res = make(ScriptedPolicy(steps), FakeWorker(fn)).run("q", "ctx")
    outs = [e for e in res.events if e.type == "output"]
    assert outs[0].stdout.strip() == "['A', 'B']"
    assert "model fell over" in outs[1].error
    calls = res.worker_events()
    assert [c.answer for c in calls[:2]] == ["A", "B"] and calls[2].error
    assert res.answer == "['A', 'B']"


def test_context_and_query_are_in_the_repl():
    res = make(ScriptedPolicy([Step(code="FINAL(f'{len(context)}:{query}')")])).run("hello", ["ab", "cde"])
    assert res.answer == "2:hello"
    start = res.events[0]
    assert start.context_type == "list" and start.context_lengths == [2, 3]


class _Echo(OrchestratorPolicy):
    name = "echo"

    def step(self, state):
        if state.iteration == 0:
            return Step(code="notes = worker('first')")
        assert state.variables and "notes" in state.variables
        assert state.get("notes") == "answer to: first"
        assert state.last("worker_call").answer == "answer to: first"
        return Step(code="FINAL(notes + '!')")


def test_policy_sees_state_variables_and_events():
    res = make(_Echo()).run("q", "ctx")
    assert res.answer == "answer to: first!"


def test_usage_and_call_graph():
    res = make(ChunkScanPolicy(chunk_chars=300)).run("q?", DOC)
    w = res.usage["worker:fake"]
    assert w.calls == res.worker_calls
    assert w.input_tokens == sum(e.result.input_tokens for e in res.worker_events())
    assert w.text_handoff_tokens > w.input_tokens
    g = res.call_graph()
    orch, work = f"{res.run_id}/orchestrator", f"{res.run_id}/worker"
    assert g.edges[orch, work]["calls"] == res.worker_calls
    assert res.graph_summary.depth == 1 and res.graph_summary.calls == res.worker_calls
    assert res.graph_summary.calls_per_agent == {work: res.worker_calls}
    assert "orchestrator" in res.usage_table() and res.median_kept_ratio() is not None


# -- budgets --------------------------------------------------------------------------------------

def test_max_iterations_gives_partial_answer():
    res = make(ChunkScanPolicy(chunk_chars=100), budgets=Budgets(max_iterations=3)).run("q?", DOC)
    assert res.stop_reason == "max_iterations" and res.partial
    assert res.iterations == 3
    assert res.answer  # the notes so far (policy.partial_answer)
    assert res.events[-1].type == "final" and res.events[-1].source == "partial"


def test_max_worker_calls_refuses_the_call_and_stops():
    res = make(ChunkScanPolicy(chunk_chars=100), budgets=Budgets(max_worker_calls=2)).run("q?", DOC)
    assert res.stop_reason == "max_worker_calls" and res.partial
    assert res.worker_calls == 2
    refused = [e for e in res.events if e.type == "output" and e.error and "budget" in e.error]
    assert len(refused) == 1


def test_max_tokens_budget():
    res = make(ChunkScanPolicy(chunk_chars=100), budgets=Budgets(max_tokens=60)).run("q?", DOC)
    assert res.stop_reason == "max_tokens" and res.partial


def test_max_wall_budget():
    steps = [Step(code="import time\ntime.sleep(0.3)")]
    res = make(ScriptedPolicy(steps, repeat=True), budgets=Budgets(max_wall_s=0.5)).run("q", "ctx")
    assert res.stop_reason == "max_wall_s" and res.partial
    assert res.wall_s < 5


def test_policy_stop_and_policy_error():
    res = make(ScriptedPolicy([Step(code="answer = 'half'")])).run("q", "ctx")
    assert res.stop_reason == "policy_stopped" and res.answer == "half"

    class Broken(OrchestratorPolicy):
        def step(self, state):
            raise ValueError("cannot think")

    res = make(Broken()).run("q", "ctx")
    assert res.stop_reason == "policy_error" and res.answer is None
    assert any(e.type == "notice" and "cannot think" in e.text for e in res.events)


def test_sandbox_is_closed_after_the_run():
    made = []

    def factory(prims, config):
        made.append(FakeSandbox(prims, config))
        return made[-1]

    make(ScriptedPolicy(["FINAL(1)"]), sandbox_factory=factory).run("q", "c")
    assert made and made[0].closed
