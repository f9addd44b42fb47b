"""`rlm bench --quick` end to end on the embedded model: output structure, and episodes need the trajectory."""
from __future__ import annotations

import json

from benchmarks.rlm_bench.cli import build_parser, run_suite, write_suite


def test_quick_bench(lm, tmp_path):
    args = build_parser().parse_args(["--quick", "--out", str(tmp_path)])
    result = run_suite(args, lm=lm, log=lambda *_: None)
    files = write_suite(result, tmp_path)
    for name in ("results.json", "results.md", "pareto.png", "overhead.png", "kept_vs_tau.png"):
        assert name in files and (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    for key in ("rows", "summary", "targets", "overhead_fit", "episodes", "config", "accuracy_metric"):
        assert key in data
    row_keys = {"episode", "condition", "method", "correct", "agree_full", "kl", "input_tokens", "full_input_tokens",
                "kept", "kept_ratio", "kv_bytes", "overhead_s", "latency_s", "trajectory_tokens"}
    assert all(row_keys <= set(r) for r in data["rows"])
    conds = {s["condition"]: s for s in data["summary"]}
    for c in ("plain", "full", "am_tau1", "topk@am_tau1", "random@am_tau1", "recent@am_tau1", "summary", "bm25_150"):
        assert c in conds
    # matched baselines keep exactly the briefing's count
    by = {(r["episode"], r["condition"]): r for r in data["rows"]}
    for (ep, c), r in by.items():
        if r["matched_to"] == "am_tau1":
            assert r["kept"] == by[(ep, "am_tau1")]["kept"]
    assert conds["full"]["kl_mean"] == 0.0 and conds["full"]["input_ratio_median"] == 1.0
    assert conds["am_tau1"]["input_ratio_median"] < 1.0
    # sanity: the episodes need the trajectory (full answers from it, plain is near chance)
    assert conds["full"]["accuracy"] >= conds["plain"]["accuracy"] + 0.3
    assert "| full |" in (tmp_path / "results.md").read_text()
