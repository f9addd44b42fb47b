"""Paired bootstrap intervals, the P3 rule, the protected-window selector and the docs/benchmarks.md block of
`rlm bench`."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.rlm_bench.conditions import ProtectedAttentionMatching, choice_kl
from benchmarks.rlm_bench.report import README_BEGIN, README_END, update_readme
from benchmarks.rlm_bench.stats import breakdown, summarize
from briefing.selection.base import Scores


def _rows(n: int, acc: dict[str, float], ratio: dict[str, float], seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        for c, p in acc.items():
            rows.append({"episode": f"e{i}", "condition": c, "method": c, "param": None, "matched_to": None,
                         "correct": rng.random() < p, "input_ratio": ratio[c], "input_tokens": int(1000 * ratio[c]),
                         "kept_ratio": ratio[c], "agree_full": True, "kl": 0.0, "choice_kl": 0.0, "latency_s": 1.0,
                         "overhead_s": 0.1, "family": ["a", "b"][i % 2], "n_candidates": 4})
    return rows


def test_intervals_cover_the_mean_and_shrink_with_n():
    small = {x["condition"]: x for x in summarize(_rows(20, {"full": 0.8, "am": 0.6}, {"full": 1.0, "am": 0.15}))}
    big = {x["condition"]: x for x in summarize(_rows(400, {"full": 0.8, "am": 0.6}, {"full": 1.0, "am": 0.15}))}
    for s in (small, big):
        lo, hi = s["am"]["accuracy_ci95"]
        assert lo <= s["am"]["accuracy"] <= hi
        assert s["full"]["diff_full"] == 0.0 and s["full"]["diff_full_ci95"] == [0.0, 0.0]
    def width(s: dict) -> float:
        return s["am"]["accuracy_ci95"][1] - s["am"]["accuracy_ci95"][0]

    assert width(big) < width(small) / 2
    assert big["am"]["token_reduction"] == pytest.approx(0.85)
    assert big["am"]["token_reduction_ci95"][0] == pytest.approx(0.85)
    # same rows, same intervals (fixed bootstrap seed)
    again = summarize(_rows(20, {"full": 0.8, "am": 0.6}, {"full": 1.0, "am": 0.15}))
    assert again[1]["accuracy_ci95"] == small["am"]["accuracy_ci95"]


def test_paired_difference_is_tighter_than_unpaired():
    """A condition that equals full on every episode has a zero-width difference interval, however noisy the
    accuracy."""
    rows = _rows(60, {"full": 0.5}, {"full": 1.0})
    rows += [dict(r, condition="same", method="same", input_ratio=0.1) for r in rows]
    s = {x["condition"]: x for x in summarize(rows)}
    assert s["same"]["diff_full_ci95"] == [0.0,
                                           0.0] and s["same"]["accuracy_ci95"][1] - s["same"]["accuracy_ci95"][0] > 0.1
    assert s["same"]["p3_supported"] is True  # 90% saved, no accuracy lost on any episode


def test_p3_needs_the_interval_not_the_point():
    s = {x["condition"]: x for x in summarize(_rows(30, {"full": 0.8, "am": 0.78}, {"full": 1.0, "am": 0.1}))}
    assert s["am"]["diff_full_ci95"][0] < -0.02 and s["am"]["p3_supported"] is False


def test_breakdown_per_group_with_chance():
    b = breakdown(_rows(40, {"full": 0.8, "am": 0.6}, {"full": 1.0, "am": 0.15}), "family")
    assert set(b) == {"a", "b"} and all(x["n"] == 20 and x["chance"] == 0.25 for xs in b.values() for x in xs)


def test_choice_kl():
    assert choice_kl([0.0, -1.0, -2.0], [0.0, -1.0, -2.0]) == pytest.approx(0.0, abs=1e-12)
    assert choice_kl([0.0, -5.0], [-5.0, 0.0]) > 3.0


def _scores(T: int, hot: list[int]) -> Scores:
    shared = torch.full((T,), 0.01)
    shared[hot] = 1.0
    return Scores(per_head=shared.view(1, 1, T).expand(2, 3, T).clone(), shared=shared)


def test_protected_window_and_positions_are_kept():
    T = 200
    sc = _scores(T, [50, 51, 52])
    tau = ProtectedAttentionMatching(tau=1.0, smooth_kernel=1, recent=16, keep=(100, 101))
    idx = tau.select(2, 3, T, sc)
    kept = set(idx[0, 0].tolist())
    assert {50, 51, 52, 0, 100, 101} | set(range(T - 16, T)) <= kept
    assert idx.shape[-1] == 3 + 1 + 16 + 2  # tau mode: its own count plus the protected positions
    bud = ProtectedAttentionMatching(tokens=30, smooth_kernel=1, recent=16).select(2, 3, T, sc)
    assert bud.shape[-1] == 30 and set(range(T - 16, T)) | {50, 51, 52} <= set(bud[1, 2].tolist())
    with pytest.raises(ValueError, match="recent must be"):
        ProtectedAttentionMatching(recent=-1)


def test_readme_block_is_rewritten_from_json(tmp_path):
    from benchmarks.rlm_bench import stats

    rows = _rows(30, {"full": 0.8, "am_tau1": 0.7}, {"full": 1.0, "am_tau1": 0.2})
    for r in rows:
        r["target_tokens"], r["depth"] = 1000, "early"
    result = {"n_episodes": 30, "split": "heldout", "families": ["a", "b"], "lengths": [1000], "seed_range": "1..30",
              "model": "m", "summary": stats.summarize(rows), "by_family": stats.breakdown(rows, "family")}
    (tmp_path / "results.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold table\n{README_END}\n\ntail\n")
    assert update_readme(readme, tmp_path / "results.json")
    text = readme.read_text()
    am = next(x for x in result["summary"] if x["condition"] == "am_tau1")
    assert "old table" not in text and text.endswith("tail\n") and f"| am_tau1 | {am['accuracy']:.2f} [" in text
    assert "not** supported" in text
    assert not update_readme(readme, tmp_path / "results.json")  # idempotent
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- rlm-bench:begin -->"):
        update_readme(readme, tmp_path / "results.json")


def test_committed_results_and_docs_agree(tmp_path):
    """docs/benchmarks.md's rlm-bench table is the generated block of the committed results.json (no figure typed
    by hand)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = root / "docs" / "results" / "rlm_bench" / "results.json"
    data = json.loads(results.read_text())
    assert data["n_episodes"] == len(data["episodes"]) and data["lengths"] and data["split"] == "heldout"
    assert all(e["family"] for e in data["episodes"])
    for x in data["summary"]:
        assert {"accuracy_ci95", "diff_full_ci95", "token_reduction_ci95"} <= set(x)
    doc = tmp_path / "benchmarks.md"
    doc.write_text((root / "docs" / "benchmarks.md").read_text())
    assert not update_readme(doc, results, "docs/results/rlm_bench/results.json"), \
        "docs/benchmarks.md is stale: run `rlm bench --readme docs/results/rlm_bench/results.json`"


def test_paired_pools_runs_and_counts_departures(tmp_path, capsys):
    """`python -m benchmarks.rlm_bench.paired`: episodes paired within each run (or REF.json:NEW.json) and pooled;
    the difference is the paired mean, gained / lost / equal choices counted per episode; a run without a condition
    or an episode given twice is refused with one line and status 2."""
    from benchmarks.rlm_bench.paired import main, paired

    def row(e, c, correct, choice, kl=0.0):
        return {"episode": e, "condition": c, "correct": correct, "choice": choice, "choice_kl": kl, "method": c,
                "param": None, "matched_to": None, "input_ratio": 0.5, "input_tokens": 10, "kept_ratio": 0.1,
                "agree_full": True, "kl": 0.0, "latency_s": 1.0, "overhead_s": 0.0}

    def write(name, rows):
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return str(tmp_path / name)

    both = write("a.json", [row("e1", "ref", True, "x"), row("e1", "new", False, "y", 0.4),
                            row("e2", "ref", False, "y"), row("e2", "new", False, "y", 0.2)])
    ref = write("b.json", [row("e3", "ref", True, "x"), row("e4", "ref", False, "y")])
    new = write("c.json", [row("e3", "new", True, "x", 0.0), row("e4", "new", True, "x", 0.6)])
    x = paired([both, f"{ref}:{new}"], "new", "ref")
    assert (x["episodes"], x["accuracy"], x["reference_accuracy"]) == (4, 0.5, 0.5)
    assert (x["diff"], x["same_choice"], x["gained"], x["lost"]) == (0.0, 2, 1, 1)
    assert x["choice_kl_median"] == pytest.approx(0.3) and x["diff_ci95"][0] < 0 < x["diff_ci95"][1]
    assert paired([f"{ref}:{new}"], "new", "ref")["diff"] == 0.5
    for argv, message in (([both, both], "episode e1 is in an earlier run too"), ([ref], "has no rows of new")):
        with pytest.raises(SystemExit) as e:
            main(["--condition", "new", "--reference", "ref", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_paired_by_family_compares_within_each_family(tmp_path, capsys):
    """`paired --by family`: the pooled comparison plus the same within each family, pooled over runs the same way;
    numeric values sorted as numbers; a field the rows lack is refused with one line and status 2."""
    from benchmarks.rlm_bench.paired import main, paired

    def row(e, c, family, correct, tokens=1000):
        return {"episode": e, "condition": c, "family": family, "target_tokens": tokens, "correct": correct,
                "choice": str(correct), "choice_kl": 0.0, "method": c, "param": None, "matched_to": None,
                "input_ratio": 0.5, "input_tokens": 10, "kept_ratio": 0.1, "agree_full": True, "kl": 0.0,
                "latency_s": 1.0, "overhead_s": 0.0}

    def write(name, rows):
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return str(tmp_path / name)

    # run 1: family a, 4 episodes at 16000 tokens, the condition loses one; run 2: family b (2 episodes at 8000
    # tokens, both gained) and one more of family a at 1000 tokens (level)
    one = write("one.json", [row(f"a{i}", "ref", "a", True, 16000) for i in range(4)]
                + [row(f"a{i}", "new", "a", i > 0, 16000) for i in range(4)])
    two = write("two.json", [row(f"b{i}", c, "b", c == "new", 8000) for i in range(2) for c in ("ref", "new")]
                + [row("a9", c, "a", True) for c in ("ref", "new")])
    x = paired([one, two], "new", "ref", by="family")
    assert x["episodes"] == 7 and x["diff"] == pytest.approx(1 / 7)
    a, b = x["groups"]["a"], x["groups"]["b"]
    assert (a["episodes"], a["diff"], a["lost"], a["gained"]) == (5, -0.2, 1, 0)
    assert (b["episodes"], b["diff"], b["lost"], b["gained"]) == (2, 1.0, 0, 2)
    assert list(paired([one, two], "new", "ref", by="target_tokens")["groups"]) == [1000, 8000, 16000]
    assert main(["--condition", "new", "--reference", "ref", "--by", "family", one, two]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("  family a: -0.200") and out[2].startswith("  family b: +1.000")
    with pytest.raises(SystemExit) as e:
        main(["--condition", "new", "--reference", "ref", "--by", "colour", one])
    assert e.value.code == 2 and "--by colour: the rows have no field 'colour'" in capsys.readouterr().err
