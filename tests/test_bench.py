"""`rlm bench --quick` on the embedded model (two families, short): the episodes need the trajectory."""
from __future__ import annotations

import json

import pytest

from benchmarks.rlm_bench.cli import build_parser, run_suite, write_suite


@pytest.mark.slow
def test_quick_bench_on_embedded_model(lm, tmp_path):
    args = build_parser().parse_args(["--quick", "--families", "single_key", "multi_key", "--lengths", "600",
                                      "--per-cell", "2", "--no-timing", "--no-progress", "--out", str(tmp_path)])
    result = run_suite(args, lm=lm)
    write_suite(result, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["split"] == "dev" and data["n_episodes"] == 4
    s = {x["condition"]: x for x in data["summary"]}
    # the fact is only in the trajectory: full text answers from it, the plain worker cannot
    assert s["full"]["accuracy"] >= s["plain"]["accuracy"] + 0.5
    assert s["full"]["kl_mean"] == 0.0 and s["full"]["token_reduction"] == 0.0
    assert s["am_b0.1"]["token_reduction"] > 0.7 and s["am_b0.1"]["kl_mean"] < s["plain"]["kl_mean"]
    assert s["random@am_tau1"]["input_tokens_median"] == s["am_tau1"]["input_tokens_median"]
