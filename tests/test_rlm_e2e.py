"""End to end: the real embedded model as briefed worker, the real sandbox, a scripted policy."""
from __future__ import annotations

import pytest

from agents import BriefedWorker, ChunkScanPolicy, LocalChatBackend, ScriptedPolicy, Step, TextWorker
from rlm import RLM, Budgets, read_log, replay

DOC = ("Harbor notes. The ferry to the island leaves at noon every day. The meeting was moved to Paris. "
       "Bring the red folder. In Rome, the meeting room is the Falcon Room. "
       "In Paris, the meeting room is the Heron Room. In Oslo, the meeting room is the Walrus Room. "
       "The tide was low in the morning.")

# The orchestrator reads the document, asks the worker where the meeting is, and acts on that answer:
# the final answer depends on what the worker said (a wrong city gives a wrong room).
STEPS = [
    Step(text="Reading the document.", code="print(context)"),
    Step(text="Asking the worker where the meeting is.",
         code="city = worker('Which city was the meeting moved to, according to the text above? Reply with the city "
              "only.')"),
    Step(text="Looking up the room of that city.", code=[
        "import re\nfound = re.findall(r'Paris|Rome|Oslo', city)\nprint(found)",
        "rooms = {'Paris': 'Heron Room', 'Rome': 'Falcon Room', 'Oslo': 'Walrus Room'}\n"
        "check = worker('Reply yes or no: was the meeting moved to ' + found[0] + '?')\n"
        "answer = rooms[found[0]]",
    ]),
    "The worker's city gives the room.\nFINAL_VAR(answer)",
]


@pytest.mark.slow
def test_briefed_worker_run_end_to_end(lm, tmp_path):
    log = tmp_path / "e2e.jsonl"
    worker = BriefedWorker(lm=lm, max_new_tokens=16)
    res = RLM(ScriptedPolicy(STEPS), worker, budgets=Budgets(max_iterations=8), log_path=str(log)).run(
        "Which room is the meeting in?", DOC)
    assert res.stop_reason == "final", res.trajectory
    assert res.answer == "Heron Room"
    first, second = res.worker_events()
    assert "Paris" in first.answer
    assert second.query.endswith("moved to Paris?")           # built from the earlier worker answer
    # the briefed worker billed kept positions + prompt, less than the text handoff
    for call in (first, second):
        b = call.result.briefing
        assert b is not None and 0 < b.kept < b.total
        assert call.result.input_tokens < call.result.text_handoff_tokens
        assert b.compaction.kept == b.kept
    assert second.result.briefing.total > first.result.briefing.total
    # one persistent cache, extended (not rebuilt) between the calls
    assert len(worker._caches) == 1 and worker._caches[0].text.endswith(replay(log).text_upto(second.seq))
    # the log replays into the same trajectory
    assert replay(log).text == res.trajectory
    assert [e.type for e in read_log(log)] == [e.type for e in res.events]
    assert res.usage["worker:briefed"].input_tokens == first.result.input_tokens + second.result.input_tokens


@pytest.mark.slow
def test_text_worker_bills_the_whole_trajectory(lm):
    worker = TextWorker(backend=LocalChatBackend(lm), max_new_tokens=16)
    res = RLM(ScriptedPolicy(STEPS), worker, budgets=Budgets(max_iterations=8)).run("Which room is the meeting in?",
                                                                                    DOC)
    calls = res.worker_events()
    assert calls and all(c.result.input_tokens == c.result.text_handoff_tokens and c.result.briefing is None
                         for c in calls)
    if res.stop_reason == "final":
        assert res.answer == "Heron Room"


@pytest.mark.slow
def test_chunk_scan_with_briefed_worker(lm):
    doc = DOC + " The harbor master is called Tom. The boats are painted green."
    res = RLM(ChunkScanPolicy(chunk_chars=220, verify=False), BriefedWorker(lm=lm, max_new_tokens=24),
              budgets=Budgets(max_iterations=10)).run("Which city was the meeting moved to?", doc)
    assert res.stop_reason == "final" and res.answer
    n_chunks = -(-len(doc) // 220)
    assert res.worker_calls == n_chunks + 1                     # a note per chunk, then the answer
    ratios = res.kept_ratios()
    assert len(ratios) == n_chunks + 1 and all(0 < r < 1 for r in ratios)
