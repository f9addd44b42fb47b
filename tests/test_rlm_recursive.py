"""Recursion: a worker that is itself an RLM run; nesting in the log and in the call graph; depth limit."""
from __future__ import annotations

from agents import ScriptedPolicy, Step
from rlm import RLM, Budgets, RLMWorker, read_log, replay
from tests.fakes import FakeWorker, fake_factory

ROOT_STEPS = [Step(code="a = worker('sub question')\nprint(a)"), "FINAL_VAR(a)"]
CHILD_STEPS = [Step(code="FINAL(worker(query) + ' via child')")]


def rlm(policy, worker, **kw):
    return RLM(policy, worker, sandbox_factory=fake_factory, sandbox_config=None, **kw)


def test_nested_run_answers_and_nests_in_log_and_graph(tmp_path):
    leaf = FakeWorker(name="leaf")
    child = rlm(ScriptedPolicy(CHILD_STEPS), leaf)
    log = tmp_path / "tree.jsonl"
    run = rlm(ScriptedPolicy(ROOT_STEPS), RLMWorker(child), budgets=Budgets(max_depth=1), log_path=str(log))
    res = run.run("q", "ctx")
    assert res.answer == "answer to: sub question via child"

    call = res.worker_events()[0]
    assert call.result.child_run and call.answer == res.answer
    nested_start = next(e for e in res.nested_events if e.type == "run_start")
    assert nested_start.parent_call == call.call_id and nested_start.parent_run == res.run_id
    assert nested_start.depth == 1 and nested_start.query == "sub question"

    # one log holds the tree; the child's events precede the parent's call event (it answered it)
    events = read_log(log)
    runs = {e.run_id for e in events}
    assert runs == {res.run_id, call.result.child_run}
    idx = {id(e): i for i, e in enumerate(events)}
    child_final = next(e for e in events if e.run_id == call.result.child_run and e.type == "final")
    parent_call = next(e for e in events if e.type == "worker_call" and e.run_id == res.run_id)
    assert idx[id(child_final)] < idx[id(parent_call)]
    assert replay(log).text == res.trajectory
    assert replay(log, call.result.child_run).text == "".join(
        __import__("rlm").render(e) for e in res.nested_events if e.run_id == call.result.child_run)

    # graph: root orchestrator -> child orchestrator -> leaf worker
    g = res.call_graph()
    root, kid = f"{res.run_id}/orchestrator", f"{call.result.child_run}/orchestrator"
    assert g.has_edge(root, kid) and g.has_edge(kid, f"{call.result.child_run}/worker")
    assert g.nodes[kid]["depth"] == 1
    assert res.graph_summary.depth == 2
    # usage: the child's agents under d1:
    assert set(res.usage) == {"orchestrator", "d1:orchestrator", "d1:worker:leaf"}
    assert res.usage["d1:worker:leaf"].calls == 1
    assert g.edges[root, kid]["input_tokens"] == res.usage["d1:worker:leaf"].input_tokens


def test_depth_limit_falls_back_to_the_leaf_worker():
    leaf = FakeWorker(name="leaf")
    child = rlm(ScriptedPolicy(CHILD_STEPS), leaf)
    res = rlm(ScriptedPolicy(ROOT_STEPS), RLMWorker(child), budgets=Budgets(max_depth=0)).run("q", "ctx")
    assert res.answer == "answer to: sub question"            # no child run: the leaf answered
    assert not res.nested_events
    assert res.graph_summary.depth == 1 and "worker:leaf" in res.usage
    assert leaf.calls and leaf.calls[0][1] == res.trajectory[: len(leaf.calls[0][1])]


def test_two_levels_deep():
    leaf = FakeWorker(name="leaf")
    grandchild = rlm(ScriptedPolicy([Step(code="FINAL(worker(query) + ' (d2)')")]), leaf)
    child = rlm(ScriptedPolicy([Step(code="FINAL(worker(query) + ' (d1)')")]), RLMWorker(grandchild))
    res = rlm(ScriptedPolicy(ROOT_STEPS), RLMWorker(child), budgets=Budgets(max_depth=2)).run("q", "ctx")
    assert res.answer == "answer to: sub question (d2) (d1)"
    assert res.graph_summary.depth == 3
    assert {e.depth for e in res.nested_events} == {1, 2}
    assert "d2:worker:leaf" in res.usage

    # the same tree with max_depth=1: the depth-1 run's worker answers with the grandchild's leaf
    res = rlm(ScriptedPolicy(ROOT_STEPS), RLMWorker(child), budgets=Budgets(max_depth=1)).run("q", "ctx")
    assert res.answer == "answer to: sub question (d1)"
    assert res.graph_summary.depth == 2


def test_rlm_worker_outside_a_run():
    child = rlm(ScriptedPolicy(CHILD_STEPS), FakeWorker())
    ans = RLMWorker(child).answer("standalone", "no trajectory")
    assert ans.text == "answer to: standalone via child" and ans.child_run


def test_worker_with_an_explicit_context():
    # nested: the child's context is the text given to worker(); leaf workers get it appended to the query
    child = rlm(ScriptedPolicy([Step(code="FINAL(str(len(context)) + ':' + query)")]), FakeWorker())
    steps = [Step(code="a = worker('count', 'abcdef')\nFINAL_VAR('a')")]
    res = rlm(ScriptedPolicy(steps), RLMWorker(child), budgets=Budgets(max_depth=1)).run("q", "ctx")
    assert res.answer == "6:count"
    res = rlm(ScriptedPolicy(steps), FakeWorker()).run("q", "ctx")
    assert res.answer == "answer to: count\n\nabcdef"
