"""Selection that covers the answer: score transforms, the CoverageMatching selector, re-scoring with the
first generated tokens, and the benchmark helpers (cases, bootstrap, kvpress report)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import briefing
from briefing.errors import BriefingError
from briefing.selection.base import Scores, look_ahead
from briefing.selection.coverage import chunk_mean, key_diversity, mass_split, protect_recent, task_share
from tests.tiny import tiny_model


def test_look_ahead_covers_the_tokens_after_a_peak():
    s = torch.zeros(20)
    s[5] = 1.0
    out = look_ahead(s, window=4, decay=0.5)
    assert out[5] == 1.0 and out[6] == 0.5 and out[9] == 0.5 ** 4
    assert out[10] == 0 and out[:5].eq(0).all()  # nothing before the peak, nothing past the window


def test_chunk_mean_ranks_whole_chunks():
    s = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.2, 0.2, 0.2, 0.2, 0.1])
    out = chunk_mean(s, 4)
    assert set(out.topk(4).indices.tolist()) == {0, 1, 2, 3}  # the chunk with the best mean, zeros included
    assert out.shape == s.shape and math.isclose(float(out[8]), 0.1 * 1.001, rel_tol=1e-6)  # a partial chunk


def test_mass_split_gives_peaked_scores_few_positions():
    T = 100
    peaked = torch.full((T,), 1e-4)
    peaked[10] = 1.0
    flat = torch.ones(T)
    assert task_share(peaked, 0.5) == 1 / T and task_share(flat, 0.5) == 0.5
    agnostic = torch.arange(T, dtype=torch.float)
    top = mass_split(peaked, agnostic, 0.5).topk(5).indices.tolist()
    assert top[0] == 10 and set(top[1:]) == {99, 98, 97, 96}  # the task's peak, then the agnostic order


def test_key_diversity_and_recent_window():
    keys = torch.zeros(1, 1, 4, 2)
    keys[..., 0] = 1.0
    keys[0, 0, 3] = torch.tensor([-1.0, 0.0])  # the odd key out
    assert key_diversity(keys)[0, 0].argmax() == 3
    assert protect_recent(torch.zeros(6), 2)[-2:].isinf().all() and protect_recent(torch.zeros(6), 0).eq(0).all()


@pytest.mark.parametrize("kwargs", [{"look_ahead": -1}, {"chunk": 1.5}, {"protect_last": True},
                                    {"look_ahead_decay": 0.0}, {"agnostic_mass": 2.0},
                                    {"agnostic_mass": 0.5, "per_head": False}, {"rescore_tokens": -2},
                                    {"rescore_weight": 1.5}])
def test_coverage_matching_rejects_bad_settings(kwargs):
    with pytest.raises(BriefingError, match=next(iter(kwargs)).split("_")[0]):
        briefing.CoverageMatching(ratio=0.1, **kwargs)


def test_look_ahead_default_keeps_the_span_after_the_quote():
    L, H, T = 2, 2, 64
    per_head = torch.full((L, H, T), 1e-3)
    per_head[..., 20:24] = 1.0  # the question attends to the words it quotes
    scores = Scores(per_head=per_head, shared=per_head.mean((0, 1)))
    plain = briefing.AttentionMatching(tokens=12, smooth_kernel=1, look_ahead=0).select(L, H, T, scores)
    covered = briefing.AttentionMatching(tokens=12, smooth_kernel=1).select(L, H, T, scores)  # look_ahead=8
    both = briefing.TopK(tokens=12, smooth_kernel=1, look_ahead=4, look_back=4).select(L, H, T, scores)
    assert covered.shape == plain.shape == both.shape == (L, H, 12)
    answer = set(range(24, 31))  # the tokens that continue the quote
    assert answer <= set(covered[0, 0].tolist()) and not answer <= set(plain[0, 0].tolist())
    assert {0, *range(16, 28)} - {16} == set(both[0, 0].tolist())  # the sink, 4 before, the quote, 4 after


@pytest.mark.parametrize("selector", [
    briefing.AttentionMatching(ratio=0.3, look_back=2),
    briefing.CoverageMatching(ratio=0.3, chunk=4),
    briefing.CoverageMatching(ratio=0.3, agnostic_mass=0.5),
    briefing.CoverageMatching(ratio=0.3, protect_last=3),
    briefing.CoverageMatching(ratio=0.3, rescore_tokens=3, look_ahead=4),
    briefing.TopK(ratio=0.3, look_ahead=4, per_head=False),
    briefing.TopK(ratio=0.3, rescore_tokens=2),
])
def test_every_coverage_strategy_compacts_and_generates(tok, selector):
    tiny = tiny_model("llama-gqa", tok)
    cache = briefing.TrajectoryCache(tiny, "The orchestrator found that the key is 4417. Then it checked the "
                                           "second file and found nothing of interest there.")
    ids_before = [layer.keys.clone() for layer in cache.kv.layers]
    ctx = cache.compact(" Question: what is the key? Answer:", selector)
    assert ctx.stats.kept == math.ceil(0.3 * cache.length) and ctx.stats.fallback is None
    assert all(torch.equal(a, b.keys) for a, b in zip(ids_before, cache.kv.layers, strict=True))  # full cache intact
    if selector.protect_last if isinstance(selector, briefing.CoverageMatching) else False:
        assert (ctx.positions[..., -3:] == torch.arange(cache.length - 3, cache.length)).all()
    assert briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=3)).token_ids


def test_rescoring_uses_the_generated_tokens(tok):
    from briefing import kv
    from briefing.context import forward_with_bias
    from briefing.rescore import generated_scores

    tiny = tiny_model("llama-gqa", tok)
    cache = briefing.TrajectoryCache(tiny, "alpha beta gamma delta epsilon zeta eta theta iota kappa")
    T, prompt = cache.length, tiny.encode(" Question: which letter? Answer:")
    before = kv.marks(cache.kv)
    logits = forward_with_bias(tiny, cache.kv, prompt, T, None, last_only=True)
    try:
        scores = generated_scores(tiny, cache.store, T, T + len(prompt), logits[-1], 3)
        assert kv.cache_length(cache.kv) == T + len(prompt) + 3  # the greedy tokens went through the cache
    finally:
        kv.rollback(cache.kv, before)
    assert scores.shape == (tiny.num_layers, 2, T) and (scores >= 0).all() and (scores.sum(-1) <= 1 + 1e-5).all()
    plain = cache.compact(" Question: which letter? Answer:", briefing.TopK(tokens=4, smooth_kernel=1))
    mixed = cache.compact(" Question: which letter? Answer:", briefing.TopK(tokens=4, smooth_kernel=1,
                                                                             rescore_tokens=3, rescore_weight=1.0))
    assert not torch.equal(plain.positions, mixed.positions)  # the generated tokens' attention decided


def test_bootstrap_median_interval():
    from benchmarks.selection_bench import bootstrap_median

    med, lo, hi = bootstrap_median([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0])
    assert med == 5.0 and 1.0 < lo < med < hi < 100.0  # the outlier moves the mean, not the median's interval
    assert bootstrap_median([2.0] * 4) == (2.0, 2.0, 2.0)


@pytest.mark.slow
def test_recall_cases_splits_are_disjoint_and_answers_come_from_the_text(lm):
    from benchmarks.recall_cases import KINDS, cases, split_essays

    splits = split_essays()
    assert not set(splits["dev"]) & set(splits["heldout"]) and "avg.txt" not in splits["dev"] + splits["heldout"]
    dev = cases(lm, "dev")
    assert [c.kind for c in dev[:4]] == list(KINDS)
    for c in dev:
        assert 900 <= lm.count_tokens(c.text) <= 1100
        if c.kind in ("continuation", "verbatim", "keywords"):
            assert c.answer.strip() in c.text  # verbatim: the answer is the text's own words
        assert c.question.endswith("Answer:") and c.answer.startswith(" ")


def test_kvpress_report_marks_errors_and_best_press(tmp_path):
    from benchmarks.kvpress_compare import RATIOS, report

    def row(ours: float, press: float) -> dict:
        return {"tokens": 100, "prompt_tokens": 10, "identity_kl": 0.0, "kept": {},
                "ours": {"mine": {str(r): ours for r in RATIOS}},
                "presses": {"SnapKV": {str(r): {"kl": press, "kept": 20.0} for r in RATIOS},
                            "PyramidKV": {str(r): {"error": "RuntimeError: size"} for r in RATIOS}}}

    res = {"split": "heldout", "kvpress": "0.5.5", "transformers": "5.2.0", "ours": ["mine"],
           "presses": ["SnapKV", "PyramidKV"], "cases": [row(0.1, 0.2), row(0.3, 0.4)], "anchor": row(0.01, 0.02)}
    (tmp_path / "compare_heldout.json").write_text(json.dumps(res))
    text = report(tmp_path)
    assert "| ours: mine | 0.0100 |" in text and "error: RuntimeError: size" in text
    assert "best press | SnapKV 0.0200" in text and "SnapKV 0.3000" in text  # median of 0.2 and 0.4


def test_kvpress_report_splits_the_kinds_and_counts_cases_below_kvzip(tmp_path):
    from benchmarks.kvpress_compare import RATIOS, report

    def row(kind: str, ours: float, kvzip: float) -> dict:
        return {"essay": f"{kind}-{ours}", "kind": kind, "tokens": 100, "prompt_tokens": 10, "identity_kl": 0.0,
                "kept": {}, "ours": {"mine": {str(r): ours for r in RATIOS}},
                "presses": {"KVzip": {str(r): {"kl": kvzip, "kept": 20.0} for r in RATIOS}}}

    rows = [row("continuation", 0.1, 0.2), row("verbatim", 0.5, 0.4), row("recall:number", 0.3, 0.6),
            row("recall:name", 0.2, 0.1), row("recall:continuation", 0.05, 0.07)]
    res = {"split": "heldout", "kvpress": "0.5.5", "transformers": "5.2.0", "ours": ["mine"], "presses": ["KVzip"],
           "cases": rows}
    (tmp_path / "compare_heldout.json").write_text(json.dumps(res))
    text = report(tmp_path)
    assert "median over 5 cases" in text and "(of 5): mine 3/3/3/3" in text
    assert "task-type cases only, median over 2" in text and "(of 2): mine 1/1/1/1" in text
    assert "verbatim-recall cases only, median over 3" in text and "(of 3): mine 2/2/2/2" in text
    recall = text.split("verbatim-recall cases only")[1]
    assert "| ours: mine | 0.200 [" in recall and "| KVzip | 0.100 [" in recall   # medians of the three
    import importlib.util

    # the plot needs matplotlib (the [bench] extra); the tables do not
    assert (tmp_path / "compare_heldout.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_kvpress_report_reads_part_runs_alone_and_refuses_an_empty_folder(tmp_path):
    from benchmarks.kvpress_compare import RATIOS, report

    def part(name: str, essay: str, ours: float) -> None:
        row = {"essay": essay, "kind": "continuation", "tokens": 100, "prompt_tokens": 10, "identity_kl": 0.0,
               "kept": {}, "ours": {"mine": {str(r): ours for r in RATIOS}}, "presses": {}}
        res = {"split": "heldout", "kvpress": "0.5.5", "transformers": "5.2.0", "ours": ["mine"], "presses": [],
               "cases": [row]}
        (tmp_path / name).write_text(json.dumps(res))

    with pytest.raises(SystemExit, match="no tables to write"):
        report(tmp_path)
    part("compare_heldout_part-3.json", "e3", 0.1)
    part("compare_heldout_part-1.json", "e1", 0.3)
    assert "median over 2 cases" in report(tmp_path) and "| ours: mine | 0.200 [" in report(tmp_path)
    other = json.loads((tmp_path / "compare_heldout_part-3.json").read_text())
    other["ours"] = ["mine [window 512]"]   # other rows on other cases: refused, not dropped unseen
    (tmp_path / "compare_heldout_part-5.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="must run the same rows"):
        report(tmp_path)


def test_kvpress_shards_join_in_the_split_order():
    from benchmarks.kvpress_compare import join_shards

    cases = [{"essay": f"e{i}"} for i in range(7)]
    parts = [{"split": "heldout", "anchor": {"tokens": 1}, "cases": cases[j::3]} for j in range(3)]
    parts[1].pop("anchor")
    res = join_shards(parts)
    assert res["cases"] == cases and res["anchor"] == {"tokens": 1} and res["split"] == "heldout"


def test_kvpress_jobs_write_one_file_under_the_runs_tag_and_stop_on_a_failed_shard(tmp_path, monkeypatch):
    """--jobs N: N processes (faked here: each writes its shard's file from its argv), joined into the file a single
    process would write: compare_heldout.json, or with --cases the part-run's tag; a failed shard stops the run."""
    import subprocess
    from pathlib import Path

    from benchmarks import kvpress_compare

    class Shard:
        fail: set[int] = set()
        seen: list[list[str]] = []

        def __init__(self, argv: list[str]) -> None:
            self.seen.append(argv)
            arg = {k: argv[i + 1] for i, k in enumerate(argv) if k in ("--out", "--shard", "--tag")}
            j, n = map(int, arg["--shard"].split("/"))
            rest = argv[argv.index("--cases") + 1:]
            picked = [int(a) for a in rest[:next(i for i, a in enumerate(rest) if a.startswith("--"))]]
            res = {"split": "heldout", "cases": [{"essay": f"e{i}"} for i in picked[j::n]]}
            if "--no-anchor" not in argv:
                res["anchor"] = {"tokens": 1}
            Path(arg["--out"], f"compare_heldout_{arg['--tag']}.json").write_text(json.dumps(res))
            self.returncode = 1 if j in self.fail else 0

        def poll(self) -> int:
            return self.returncode

        def wait(self) -> int:
            return self.returncode

        def terminate(self) -> None:
            pass

    monkeypatch.setattr(subprocess, "Popen", Shard)
    args = ["--jobs", "2", "--presses", "--out", str(tmp_path), "--no-report", "--cases", "5", "1", "3"]
    kvpress_compare.main(args)
    res = json.loads((tmp_path / "compare_heldout_part-5-1-3.json").read_text())
    assert [c["essay"] for c in res["cases"]] == ["e5", "e1", "e3"] and res["anchor"] == {"tokens": 1}
    assert res["jobs"] == 2 and not (tmp_path / "compare_heldout.json").exists()
    kvpress_compare.main([*args, "--importance-window", "512"])   # every shard gets the window; its own file
    assert all(argv[argv.index("--importance-window") + 1] == "512" for argv in Shard.seen[-2:])
    assert (tmp_path / "compare_heldout_window512-part-5-1-3.json").exists()
    assert kvpress_compare.ours_label("hybrid", 512) == "hybrid [window 512]"
    assert kvpress_compare.ours_label("hybrid", None) == "hybrid"
    Shard.fail = {1}
    with pytest.raises(SystemExit, match=r"shard\(s\) \[1\] of 2 failed"):
        kvpress_compare.main([*args[:-4], "--cases", "0", "2"])


def test_docs_selection_tables_are_the_generated_ones():
    """No figure typed by hand: every table row of the generated Markdown is in docs/benchmarks.md as written."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "docs" / "benchmarks.md").read_text()
    for generated in ("docs/results/selection/selection_tables.md", "docs/results/kvpress_compare/compare_tables.md"):
        rows = [line for line in (root / generated).read_text().splitlines() if line.startswith("| ")]
        assert rows, generated
        missing = [row for row in rows if row not in readme]
        assert not missing, f"docs/benchmarks.md rows differ from {generated} (regenerate with --report --readme): " \
                            f"{missing[:2]}"


def test_selection_report_merges_parts_and_rounds(tmp_path):
    from benchmarks.selection_bench import RATIOS, merged

    def case(essay: str, kls: dict) -> dict:
        return {"essay": essay, "kind": "continuation", "kl": {v: {str(r): x for r in RATIOS} for v, x in kls.items()}}

    def dump(name: str, variants: list[str], cases: list[dict]) -> None:
        (tmp_path / name).write_text(json.dumps({"variants": variants, "cases": cases}))

    dump("selection_heldout.json", ["a"], [case("e1", {"a": 1.0})])
    dump("selection_heldout_part-1.json", ["a"], [case("e2", {"a": 3.0}), case("e1", {"a": 99.0})])
    dump("selection_heldout_round2.json", ["b"], [case("e2", {"b": 0.5}), case("e1", {"b": 0.1})])
    res = merged(tmp_path, "heldout")
    assert [c["essay"] for c in res["cases"]] == ["e1", "e2"] and res["variants"] == ["a", "b"]
    assert res["summary"]["a"]["0.5"][0] == 2.0 and res["summary"]["b"]["0.5"][0] == 0.3  # e1's duplicate ignored


def test_selection_bench_runs_the_model_it_is_given(tiny, tmp_path, monkeypatch, essay):
    """--model loads that model (a second model's run: round 30) into its own --out, and the round's two variants run
    on it: top-k with look-ahead 8 is the shipped default's selection without its fit, and a larger ridge reaches the
    fit. A run of another model is never merged with the embedded model's, nor written over its tables."""
    import dataclasses

    from benchmarks import selection_bench
    from benchmarks.recall_cases import Case

    asked = []

    def load(name=None):
        asked.append(name)
        return tiny

    monkeypatch.setattr(briefing, "load_model", load)
    text = essay[:1500]
    monkeypatch.setattr(selection_bench, "cases", lambda lm, split: [
        Case(essay="avg.txt", kind="continuation", text=text, question="How does the text go on?",
             answer=" the text goes on and on")])
    names = [selection_bench.DEFAULT, selection_bench.TOPK_AHEAD, "fit, ridge 1"]
    for bad in (["--readme", "--out", str(tmp_path)], []):   # SmolLM2's tables and default --out are not for it
        with pytest.raises(SystemExit):
            selection_bench.main(["--split", "dev", "--model", "gemma3-270m", *bad])
    assert asked == []
    selection_bench.main(["--split", "dev", "--no-extras", "--model", "gemma3-270m", "--out", str(tmp_path),
                          "--variants", *names])
    assert asked == ["gemma3-270m"]
    res = json.loads((tmp_path / "selection_dev.json").read_text())
    assert res["model"] == tiny.name and res["variants"] == names
    kl = res["cases"][0]["kl"]
    assert kl[selection_bench.DEFAULT]["0.1"] != kl["fit, ridge 1"]["0.1"]  # the ridge reaches the fit
    top = selection_bench.VARIANTS[selection_bench.TOPK_AHEAD](ratio=0.1)
    shipped = selection_bench.VARIANTS[selection_bench.DEFAULT](ratio=0.1)
    assert isinstance(top, briefing.TopK) and top.fit is None and shipped.fit is not None
    fields = [f.name for f in dataclasses.fields(briefing.ScoredSelector) if f.name != "fit"]
    assert {f: getattr(top, f) for f in fields} == {f: getattr(shipped, f) for f in fields}
    monkeypatch.setattr(selection_bench, "plot", lambda loaded, path: None)   # tables only: no matplotlib in every tier
    text = selection_bench.report(tmp_path)   # the per-case tables against top-k and against the default
    assert f"per case against {selection_bench.TOPK_AHEAD}" in text and f"per case against {selection_bench.DEFAULT}" \
        in text
    n, ratio = selection_bench.against(res, selection_bench.TOPK_AHEAD, selection_bench.DEFAULT, "0.1")
    a, b = kl[selection_bench.DEFAULT]["0.1"], kl[selection_bench.TOPK_AHEAD]["0.1"]
    assert n == int(a < b) and ratio == pytest.approx(a / b)
    assert f"| {selection_bench.DEFAULT} | " in text and f"{n}; {ratio:.2f}x" in text
    two = {"cases": [{"kl": {"x": {"0.1": 1.0}, "y": {"0.1": 2.0}}}, {"kl": {"x": {"0.1": 3.0}, "y": {"0.1": 1.0}}},
                     {"kl": {"x": {"0.1": 0.0}, "y": {"0.1": 0.0}}}]}
    assert selection_bench.against(two, "y", "x", "0.1") == (1, 1.0)   # ratios 0.5, 3, 1 (both 0): one lower
    other = dict(res, model="another-model")
    (tmp_path / "selection_dev_round2.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="another-model"):
        selection_bench.merged(tmp_path, "dev")
