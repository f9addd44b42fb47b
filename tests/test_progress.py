"""The live progress of a run: a real bar on a terminal, a line per event otherwise."""
from __future__ import annotations

import io
from types import SimpleNamespace as E

from agents import BriefingStats, WorkerAnswer
from agents.events import WorkerCall
from briefing.stats import CompactionStats
from rlm.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _call(i: int) -> WorkerCall:
    stats = CompactionStats(method="AttentionMatching", kept=10, original_length=30, kept_ratio=1 / 3, prompt_tokens=5)
    result = WorkerAnswer(text="ok", input_tokens=100, text_handoff_tokens=300, latency_s=1.0,
                          briefing=BriefingStats(kept=10, total=30, compaction=stats))
    return WorkerCall(index=i, query="q", worker="briefed", result=result)


def test_tty_shows_a_bar_with_calls_done_of_total():
    out = Tty()
    p = Progress(out, label="[briefed] ", total=4)
    p(E(type="run_start"))
    p(_call(1))
    p(_call(2))
    p(E(type="final", depth=0))
    text = out.getvalue()
    assert "2/4" in text and "%|" in text and "worker input tok 200 (text 600)" in text


def test_pipe_gets_one_line_per_event():
    out = io.StringIO()
    p = Progress(out, total=4)
    p(_call(1))
    p(_call(2))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "worker calls 2" in lines[1] and "%|" not in out.getvalue()
