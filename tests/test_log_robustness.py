"""Issue 9: a run's log never crashes it (lone surrogates), and `rlm view` says when a log's
last line is cut short."""

from __future__ import annotations

import json

from agents import ScriptedPolicy, Step
from rlm import RLM
from rlm.view import truncation_warning, view
from tests.fakes import FakeWorker, fake_factory


def test_lone_surrogate_in_a_cell_does_not_crash_the_log(tmp_path):
    log = tmp_path / "run.jsonl"
    policy = ScriptedPolicy([Step(code="print('\\ud800 x')\nFINAL('done \\udfff')")])
    res = RLM(policy, FakeWorker(), sandbox_factory=fake_factory, sandbox_config=None,
              log_path=str(log)).run("q", "ctx")
    assert res.answer is not None and "done" in res.answer
    lines = log.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # valid UTF-8 and valid JSON throughout
    assert any("\ud800" in json.dumps(r, ensure_ascii=False) for r in records)
    assert truncation_warning(log) is None
    assert "warning" not in view(log).splitlines()[0]


def test_view_warns_about_a_truncated_last_line(tmp_path):
    log = tmp_path / "run.jsonl"
    RLM(ScriptedPolicy([Step(code="FINAL('ok')")]), FakeWorker(), sandbox_factory=fake_factory,
        sandbox_config=None, log_path=str(log)).run("q", "ctx")
    full = log.read_text(encoding="utf-8")
    log.write_text(full + full.splitlines()[0][:25], encoding="utf-8")  # a write cut short
    warning = truncation_warning(log)
    assert warning is not None and "truncated" in warning and "\n" not in warning
    assert view(log).splitlines()[0] == warning
