"""`rlm bench` runner: the same rows serially, over a local process pool and over a local Ray; the CLI end to end
on a tiny random-weight model (the structure of results.json, the README block)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest

from benchmarks.rlm_bench.cli import build_parser, run_suite, write_suite
from benchmarks.rlm_bench.conditions import SuiteConfig, family_plan
from benchmarks.rlm_bench.families import FAMILIES, EpisodeSpec
from benchmarks.rlm_bench.runner import comparable, run_all

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tok, tmp_path_factory):
    from tests.tiny import tiny_model

    d = tmp_path_factory.mktemp("tiny-llama")
    tiny = tiny_model("llama-gqa", tok, max_positions=4096)
    tiny.model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


SPECS = [EpisodeSpec("variable_tracking", 5, 300, "late"), EpisodeSpec("updated_fact", 6, 300, "early"),
         EpisodeSpec("aggregation", 7, 300, None)]
CFG = SuiteConfig(summary_tokens=8, timing=False)


def _rows(results):
    return comparable(r for _, rs in results for r in rs)


@pytest.fixture(scope="module")
def serial(tiny_dir):
    return run_all(SPECS, CFG, model=tiny_dir, workers=1, progress=False)


def test_process_pool_equals_serial(tiny_dir, serial, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pool = run_all(SPECS, CFG, model=tiny_dir, workers=2, progress=False)
    assert [e["id"] for e, _ in pool] == [e["id"] for e, _ in serial]
    assert _rows(pool) == _rows(serial) and len(_rows(serial)) > 3 * 10


@pytest.mark.slow   # starts a local Ray (about 15 s): make test runs it, the fast tier not
def test_ray_equals_serial(tiny_dir, serial, monkeypatch):
    pytest.importorskip("ray", reason="the optional [ray] extra is not installed")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = run_all(SPECS, CFG, model=tiny_dir, workers=2, ray="local", progress=False)
    assert _rows(res) == _rows(serial)


def test_checkpoint_resumes_without_rerunning(tiny_dir, serial, tmp_path):
    ck = tmp_path / "episodes.jsonl"
    first = run_all(SPECS[:2], CFG, model=tiny_dir, progress=False, checkpoint=ck)
    assert len(ck.read_text().splitlines()) == 2
    logs: list[str] = []
    again = run_all(SPECS, CFG, model=tiny_dir, progress=False, checkpoint=ck, log=logs.append)
    assert logs == [f"resuming: 2 of 3 episodes already in {ck}"] and len(ck.read_text().splitlines()) == 3
    assert again[:2] == first and _rows(again) == _rows(serial)


def test_cli_end_to_end_on_tiny_model(tiny_dir, tmp_path):
    args = build_parser().parse_args(["--model", tiny_dir, "--lengths", "300", "--per-cell", "1", "--split", "heldout",
                                      "--no-progress", "--out", str(tmp_path)])
    result = run_suite(args)
    files = write_suite(result, tmp_path)
    for name in ("results.json", "results.md", "pareto.png", "families.png", "latency.png", "episodes.jsonl"):
        assert name in files and (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["n_episodes"] == len(FAMILIES) and data["episodes_wall_s"] > 0
    assert data["lengths"] == [300] and data["split"] == "heldout"
    assert {e["family"] for e in data["episodes"]} == set(FAMILIES)
    s = {x["condition"]: x for x in data["summary"]}
    for c in ("plain", "full", "am_tau1", "topk@am_tau1", "random@am_tau1", "sink_recent@am_tau1", "am_tau1+recent32",
              "am_b0.1", "topk_b0.1", "bm25_r0.1", "bm25+am_b0.1", "summary"):
        assert c in s
        for k in ("accuracy_ci95", "diff_full_ci95", "token_reduction_ci95"):
            lo, hi = s[c][k]
            assert lo <= s[c][k.removesuffix("_ci95")] <= hi
    assert set(data["by_family"]) == set(FAMILIES) and set(data["by_length"]) == {"300"}
    by = {(r["episode"], r["condition"]): r for r in data["rows"]}
    for (ep, c), r in by.items():  # matched baselines keep exactly the briefing's count; latency is measured
        if r["matched_to"] == "am_tau1":
            assert r["kept"] == by[(ep, "am_tau1")]["kept"]
        assert r["latency_s"] > 0
    assert s["full"]["token_reduction"] == 0.0 and s["am_b0.1"]["token_reduction"] > 0.5
    assert "| text, prefix-KV reuse (full) | " in (tmp_path / "results.md").read_text()


def test_importance_adds_the_global_allocation_at_matched_counts(tiny_dir):
    """`rlm bench --importance` (issue 28): the same episode also runs the opt-in global allocation of the importance
    at tau and at the budget, keeping what its uniform counterpart keeps, and the other rows do not change."""
    args = build_parser().parse_args(["--model", tiny_dir, "--importance"])
    assert args.importance == "global"
    assert build_parser().parse_args(["--model", tiny_dir, "--importance", "hybrid"]).importance == "hybrid"
    cfg = SuiteConfig(summary_tokens=8, timing=False, importance="global")
    plain = _rows(run_all(SPECS[:1], CFG, model=tiny_dir, progress=False))
    rows = run_all(SPECS[:1], cfg, model=tiny_dir, progress=False)[0][1]
    by = {r["condition"]: r for r in rows}
    assert by["amg_tau1"]["kept"] == by["am_tau1"]["kept"] and by["amg_b0.1"]["kept"] == by["am_b0.1"]["kept"]
    assert by["amg_tau1"]["method"] == "latent_briefing_global" and by["amg_b0.1"]["importance_s"] > 0
    same = [r for r in _rows([(None, rows)]) if not r["condition"].startswith("amg_")]
    assert same == plain
    # round 7's hybrid allocation: its own rows, at the same counts
    rows = run_all(SPECS[:1], SuiteConfig(summary_tokens=8, timing=False, importance="hybrid"), model=tiny_dir,
                   progress=False)[0][1]
    by = {r["condition"]: r for r in rows}
    assert by["amh_tau1"]["kept"] == by["am_tau1"]["kept"] and by["amh_b0.1"]["kept"] == by["am_b0.1"]["kept"]
    assert by["amh_tau1"]["method"] == "latent_briefing_hybrid" and "amg_tau1" not in by


def test_budget_sets_every_fixed_ratio_condition_and_is_checked(tiny_dir, capsys):
    """`rlm bench --budget B` (issue 28's P3 run at 17% kept): every fixed-ratio condition keeps B of the trajectory
    under its own name; at the 20% of am_b0.2 that row is not run twice; a share outside (0, 1) is refused."""
    from benchmarks.rlm_bench.cli import main

    assert build_parser().parse_args(["--budget", "0.17"]).budget == 0.17
    rows = run_all(SPECS[:1], SuiteConfig(summary_tokens=8, timing=False, budget=0.17, importance="hybrid"),
                   model=tiny_dir, progress=False)[0][1]
    by = {r["condition"]: r for r in rows}
    T = by["full"]["trajectory_tokens"]
    for c in ("am_b0.17", "am_recent_b0.17", "topk_b0.17", "random_b0.17", "sink_recent_b0.17", "amh_b0.17"):
        assert by[c]["kept"] == math.ceil(0.17 * T) and by[c]["matched_to"] == "budget0.17"
    assert by["am_b0.2"]["kept"] == math.ceil(0.2 * T) and not any(c.endswith("_b0.1") for c in by)
    names = [r["condition"] for r in run_all(SPECS[:1], SuiteConfig(summary_tokens=8, timing=False, budget=0.2),
                                             model=tiny_dir, progress=False)[0][1]]
    assert names.count("am_b0.2") == 1 and len(names) == len(set(names))
    # the report's tables name the run's own budget: am_b0.17 where a 10% run has am_b0.1, each name once
    from benchmarks.rlm_bench import report

    result = {"config": {"suite": {"budget": 0.17}}, "summary": [{"condition": c} for c in by]}
    assert report.breakdown_conditions(result) == ["full", "plain", "am_tau1", "topk@am_tau1", "sink_recent@am_tau1",
                                                   "am_b0.17", "topk_b0.17", "bm25_r0.1"]
    head = [x["condition"] for x in report.headline_rows(result)]
    assert head.index("am_b0.17") < head.index("am_b0.2") and len(head) == len(set(head)) == len(by)
    assert report.at_settings({"config": {"suite": {"budget": 0.2}}}, report.HEADLINE).count("am_b0.2") == 1
    assert report.at_settings({"config": {"suite": {"tau": 2.0, "recent": 64}}}, report.HEADLINE)[2:5] == [
        "am_tau2", "am_tau2+recent64", "topk@am_tau2"]
    for bad in ("0", "1", "-0.1", "nan"):
        with pytest.raises(SystemExit) as e:
            main(["--budget", bad])
        assert e.value.code == 2
        assert f"--budget: {float(bad)!r} is not a kept share; give a number in (0, 1)" in capsys.readouterr().err


def test_conditions_runs_only_those_and_full_text_with_the_same_rows(tiny_dir, capsys):
    """`rlm bench --conditions` (issue 28's P3 run with more episodes): only the named conditions and full text run,
    each row as in a run of every condition; a matched row still keeps the am_tau row's count; an unknown name is
    refused before any model loads, with the names of the run."""
    from benchmarks.rlm_bench.cli import main

    cfg = SuiteConfig(summary_tokens=8, timing=False, budget=0.17, importance="hybrid")
    every = {r["condition"]: r for r in _rows(run_all(SPECS[:1], cfg, model=tiny_dir, progress=False))}
    assert [name for name, _ in family_plan(None, cfg)] == list(every)
    some = dataclasses.replace(cfg, conditions=("amh_b0.17", "topk@am_tau1", "am_b0.17"))
    rows = _rows(run_all(SPECS[:1], some, model=tiny_dir, progress=False))
    assert [r["condition"] for r in rows] == ["full", "topk@am_tau1", "am_b0.17", "amh_b0.17"]
    assert all(r == every[r["condition"]] for r in rows)
    args = build_parser().parse_args(["--model", tiny_dir, "--importance", "hybrid", "--conditions", "amh_b0.1",
                                      "am_b0.17", "--out", "/nonexistent/never-written"])
    with pytest.raises(ValueError, match=r"^--conditions: am_b0.17 is not a condition of this run; pick among plain, "
                                         r"full, am_tau1, .*amh_b0.1 \(--budget"):
        run_suite(args, lm=object())
    with pytest.raises(SystemExit) as e:
        main(["--conditions", "am_b0.3", "am_b0.4", "--budget", "0.2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "rlm bench: error: --conditions: am_b0.3, am_b0.4 are not conditions of this run; " in err
    assert err.count(", am_b0.2,") == 1


def test_importance_share_sets_the_importance_conditions_and_is_checked(tiny_dir, capsys):
    """`rlm bench --importance hybrid --importance-share S` (issue 28, round 32's dev choice of the share): the
    amh_* conditions keep S of their positions by the importance, under the same names; the report says the share;
    a share outside (0, 1] or without --importance is refused before any model loads."""
    from benchmarks.rlm_bench import report
    from benchmarks.rlm_bench.cli import main
    from benchmarks.rlm_bench.conditions import importance_pick

    assert build_parser().parse_args(["--importance", "hybrid", "--importance-share", "0.5"]).importance_share == 0.5
    for allocation in ("hybrid", "global"):   # only the share changes; without the option, the selector's own 0.9
        for size in ({"ratio": 0.1}, {"tau": 1.0}):
            own, picked = importance_pick(allocation, **size), importance_pick(allocation, 0.5, **size)
            assert (own.agnostic, picked.agnostic, picked.allocation) == (0.9, 0.5, allocation)
            assert dataclasses.replace(own, agnostic=0.5) == picked and own != picked

    class Plan:   # what family_plan hands each condition, not run
        def run(self, spec):
            return spec

    cfg = SuiteConfig(summary_tokens=8, timing=False, importance="hybrid", conditions=("amh_tau1", "amh_b0.1"))
    for share, want in ((None, 0.9), (0.5, 0.5)):
        plan = dict(family_plan(Plan(), dataclasses.replace(cfg, importance_share=share)))
        assert plan["amh_tau1"]().selector.agnostic == plan["amh_b0.1"]().selector.agnostic == want
        assert plan["am_tau1"]().selector.agnostic == 0.0   # the default's conditions keep no importance share
    rows = {s: _rows(run_all(SPECS[:1], dataclasses.replace(cfg, importance_share=s), model=tiny_dir,
                             progress=False)) for s in (None, 0.5)}
    assert [r["condition"] for r in rows[0.5]] == [r["condition"] for r in rows[None]] == ["full", "amh_tau1",
                                                                                           "amh_b0.1"]
    for a, b in zip(rows[None], rows[0.5]):
        assert a["kept"] == b["kept"] and a["input_tokens"] == b["input_tokens"]
    suite = {"importance": "hybrid", "importance_share": 0.5}
    assert report.share_lines({"config": {"suite": suite}})[0].startswith(
        "The importance's conditions (amh_*): hybrid allocation, importance share 0.5 of the kept positions")
    assert report.share_lines({"config": {"suite": {"importance": "hybrid"}}}) == []   # as before the option
    with pytest.raises(SystemExit) as e:
        main(["--importance-share", "0.5"])
    assert e.value.code == 2
    assert "--importance-share 0.5: it sets the share of the importance's conditions; add --importance hybrid" in (
        capsys.readouterr().err)
    for bad in ("0", "1.5", "-0.1", "nan"):
        with pytest.raises(SystemExit) as e:
            main(["--importance", "hybrid", "--importance-share", bad])
        assert e.value.code == 2
        assert f"--importance-share: {float(bad)!r} is not a share of the kept positions; give a number in (0, 1]" in (
            capsys.readouterr().err)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_pool_worker_exits_when_the_run_that_made_it_is_killed(tmp_path):
    """A run killed mid-way (its parent process gone without cleanup) leaves no pool worker behind holding a model."""
    import signal
    import subprocess
    import sys

    pidfile = tmp_path / "worker.pid"
    code = (
        "import multiprocessing as mp, os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from benchmarks.rlm_bench.runner import _pool_init\n"
        "def work(path):\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    ex = ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=_pool_init,\n"
        "                             initargs=(os.getpid(),))\n"
        f"    ex.submit(work, {str(pidfile)!r})\n"
        "    time.sleep(600)\n")
    script = tmp_path / "run.py"
    script.write_text(code)
    root = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen([sys.executable, str(script)], cwd=root, env={**os.environ, "PYTHONPATH": root})
    worker = None
    try:
        deadline = time.time() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.time() < deadline and parent.poll() is None, "the worker never started"
            time.sleep(0.1)
        worker = int(pidfile.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while _alive(worker):
            assert time.time() < deadline, "the pool worker outlived the run that made it"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and _alive(worker):   # the test failed: do not leave the sleeper behind
            os.kill(worker, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"   # a zombie has exited
    except FileNotFoundError:
        return False


def test_contrast_conditions_rank_what_this_question_attends_to_more_and_are_checked(tiny_dir, capsys):
    """`rlm bench --contrast C` (issue 28, round 33): amc_* rank positions by the question's attention over a neutral
    question's to the power C; the same names and kept counts as the default's conditions at the budget; C outside
    (0, 4] refused before any model loads; a contrast selector without its baseline refused."""
    import torch

    from benchmarks.rlm_bench import report
    from benchmarks.rlm_bench.cli import main
    from benchmarks.rlm_bench.conditions import ContrastAttentionMatching
    from briefing.selection.base import Scores

    T = 40
    question = torch.full((1, 1, T), 0.5 / (T - 2))
    question[..., 0], question[..., 10] = 0.25, 0.25                   # the sink and position 10 equally
    neutral = torch.full((1, 1, T), 0.2 / (T - 1))
    neutral[..., 0] = 0.8                                              # every question attends to the sink
    scores = Scores(per_head=question, shared=question[0, 0])
    base = Scores(per_head=neutral, shared=neutral[0, 0])
    sel = ContrastAttentionMatching(tokens=2, sinks=0, smooth_kernel=1, look_ahead=0, contrast=1.0, baseline=base)
    got = sel.score(scores).per_head[0, 0]
    assert int(got.argmax()) == 10 and got[10] > 5 * got[0]          # contrasted: 10 first, the sink far below
    same = ContrastAttentionMatching(tokens=2, contrast=0.0, baseline=base).score(scores)
    assert torch.allclose(same.per_head, question + 1.0 / T)            # contrast 0: the guidance, shifted by e
    kept = sel.select(1, 1, T, scores)[0, 0].tolist()
    assert 10 in kept and 0 not in kept                                # the sink gives way (without sinks kept)
    with pytest.raises(ValueError, match="baseline is None"):
        ContrastAttentionMatching(tokens=2).score(scores)
    with pytest.raises(ValueError, match="contrast"):
        ContrastAttentionMatching(tokens=2, contrast=-1.0)

    from benchmarks.rlm_bench.conditions import NEUTRAL_QUESTION, FamilyRunner, _Capture
    from benchmarks.rlm_bench.runner import _load

    lm, prompts = _load(tiny_dir)
    ep = SPECS[0].build(count_tokens=lm.count_tokens)
    r = FamilyRunner(lm, prompts, ep, timing=False)
    seen = []
    compact = r.cache.compact
    r.cache.compact = lambda prompt, selector=None, **kw: seen.append(prompt) or compact(prompt, selector, **kw)
    (first, s1), (again, s2) = r.neutral_scores(), r.neutral_scores()
    assert len(seen) == 1 and first is again and s1 == s2 > 0                # once per episode
    assert NEUTRAL_QUESTION in seen[0] and ep.question not in seen[0]
    asked = _Capture(tokens=1, fit=None)
    compact(r.call_prompt, asked)
    assert not torch.allclose(asked.captured.per_head, first.per_head)    # the baseline is not the question's own
    row = r.run_contrast("amc_b0.1", {"ratio": 0.1}, 1.0, 0.1, "budget0.1")
    assert row["neutral_s"] == s1 and row["overhead_s"] >= s1 and row["latency_s"] >= s1
    assert seen[-1] == r.call_prompt and len(seen) == 2                      # the selection itself: the question

    cfg = SuiteConfig(summary_tokens=8, timing=False, contrast=1.0, conditions=("am_b0.1", "amc_tau1", "amc_b0.1"))
    assert "amc_b0.1" not in [n for n, _ in family_plan(None, dataclasses.replace(cfg, contrast=None,
                                                                                    conditions=()))]
    rows = _rows(run_all(SPECS[:2], cfg, model=tiny_dir, progress=False))
    by = {(r["episode"], r["condition"]): r for r in rows}
    for e in {r["episode"] for r in rows}:
        assert by[(e, "amc_b0.1")]["kept"] == by[(e, "am_b0.1")]["kept"]
        assert by[(e, "amc_tau1")]["kept"] > 0 and by[(e, "amc_b0.1")]["method"] == "latent_briefing_contrast"
    assert report.contrast_lines({"config": {"suite": {"contrast": 1.0}}})[0].startswith(
        "The contrast's conditions (amc_*): Attention Matching with the question's attention divided by")
    assert report.contrast_lines({"config": {"suite": {}}}) == []
    timed = {"config": {"suite": {"contrast": 1.0}}, "rows": rows}                       # this run's rows: timed
    assert "forward is in their latency (`neutral_s`)" in report.contrast_lines(timed)[0]
    assert "not in their latency" in report.contrast_lines({"config": {"suite": {"contrast": 1.0}}, "rows": [
        {"condition": "amc_b0.1", "overhead_s": 0.1}]})[0]
    for bad in ("0", "5", "-1", "nan"):
        with pytest.raises(SystemExit) as e:
            main(["--contrast", bad])
        assert e.value.code == 2
        assert f"--contrast: {float(bad)!r} is not an exponent of the neutral question's attention" in (
            capsys.readouterr().err)
