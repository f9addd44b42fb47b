"""The long-trajectory suite end to end on a tiny random-weight model (pipeline and bookkeeping, not accuracy)."""
from __future__ import annotations

import json

import pytest

from benchmarks.rlm_bench import long, long_episodes
from tests.tiny import tiny_model


def test_episode_plants_one_fact_per_quarter():
    ep = long.make_long_episode(3, 2000)
    text = ep.text
    assert [q.quarter for q in ep.questions] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [q.form for q in ep.questions] == ["own", "paraphrase"] * 4
    for q in ep.questions:
        lo, hi = long.QUARTERS[q.quarter]
        assert q.statement in text and lo - 0.1 <= q.offset <= hi + 0.1
        assert len(set(q.candidates)) == 4 and q.answer in q.candidates
        assert sum(f"{v}." in text for v in q.candidates) >= 3  # answer and the two same-kind distractors planted
        # the distractors' statements: planted, of the statement's own form, about other keys, with the candidates
        assert len(q.distractors) == 2 and all(f"{d}." in text for d in q.distractors)
        form = q.statement[:q.statement.index(q.key)]
        assert all(d.startswith(form) and q.key not in d and d.split()[-1] in q.candidates for d in q.distractors)
        if q.form == "own":
            assert f"{q.lead} {q.answer}" in text
        else:   # a paraphrase shares no content word with its statement
            assert not long_episodes.shared_words(q.question, q.statement)
    assert len({q.statement for q in ep.questions}) == 4
    assert sum(1 for _, query in ep.chunks if query) >= 3  # the worker calls of the run, seen by task guidance
    assert long.make_long_episode(3, 2000).text == text  # deterministic


def test_bootstrap_interval_brackets_the_mean():
    from benchmarks.stats import bootstrap_ci

    lo, hi = bootstrap_ci([1.0] * 6 + [0.0] * 4)
    assert 0.2 <= lo < 0.6 < hi <= 1.0
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    # resampling episodes: questions that share an episode move together, so the interval is wider than the
    # questions-as-independent one when episodes differ, and the same when every episode is one question
    episodes = [[1.0] * 4, [0.0] * 4] * 6
    flat = [x for g in episodes for x in g]
    lo_e, hi_e = bootstrap_ci(groups=episodes)
    lo_q, hi_q = bootstrap_ci(flat)
    assert lo_e < lo_q and hi_e > hi_q and lo_e < 0.5 < hi_e
    assert bootstrap_ci(groups=[[x] for x in flat]) == (lo_q, hi_q)


@pytest.mark.slow   # every long-suite condition end to end (about 14 s): make test runs it
def test_long_suite_runs_every_condition_in_bounded_memory(tok, tmp_path):
    tiny = tiny_model("llama-gqa", tok, max_positions=2048)   # the ceiling holds the 300-token episode whole
    args = long.build_parser().parse_args(["--lengths", "300", "900", "--episodes", "1", "--window", "320",
                                           "--recent", "96", "--summary-tokens", "8", "--out", str(tmp_path),
                                           "--no-progress"])
    result = long.run(args, lm=tiny, log=lambda *a: None, out=tmp_path)
    rows = result["rows"]
    assert {r["condition"] for r in rows} == set(long.CONDITIONS)
    # four facts, each in two wordings; the ceiling (all in view) only where the trajectory fits the model's context
    ceiling = {r["length"] for r in rows if r["condition"] == "ceiling"}
    assert 300 in ceiling and len(rows) == (2 * len(long.CONDITIONS) - 2 + len(ceiling)) * 8
    for r in rows:
        if r["condition"] == "ceiling":   # every position in view: nothing folded, the fact wholly covered
            assert r["folds"] == 0 and r["covered_fact"] == 1.0
        if r["condition"] in long.LATENT:   # the recall's budget comes out of the cache's, as fold-recall's does
            assert r["cache_positions"] <= result["config"]["window"] - result["config"]["reserve"] \
                - result["config"]["recall_budget"]
    latent = [r for r in rows if r["condition"] in long.LATENT and r["length"] == 900]
    assert any(r["recalled_tokens"] > 0 for r in latent)   # past the first fold the latent recall brings blocks back
    # the routed conditions ask on fold-latent's cache: where the round-24 default (latent recall by blocks) routed a
    # question to latent recall it recalls the same
    routed = {(r["length"], r["question"]): r for r in rows if r["condition"] == "fold-routed-sentences-confident"}
    for r in latent:
        if r["condition"] == "fold-latent" and routed[(900, r["question"])]["recall_how"] == "latent:attach":
            assert routed[(900, r["question"])]["covered_fact"] == r["covered_fact"]
    # a quarter of this budget is below a recall's minimum: below the margin latent recall takes it all; BM25's best
    # chunk beside latent blocks only where the latent ranking overrules BM25's confident route (verify, the default)
    for c in ("fold-routed-sentences-confident", "fold-routed"):   # the shipped default's latent recall by sentences
        assert {r["recall_how"] for r in rows if r["condition"] == c} <= {"", "bm25", "latent:attach",
                                                                            "latent:attach+bm25"}
    # the latent lookup's time, a part of the recall's, and its share of a call in the summary
    looked = [r for r in rows if r["condition"] == "fold-routed" and r["length"] == 900 and r["lookup_s"] > 0]
    assert looked and all(r["lookup_s"] <= r["recall_s"] for r in looked)
    calls = {(c["condition"], c["length"]): c for c in result["summary"]["calls"]}
    assert calls[("fold-routed", 900)]["lookup_share_max"] == max(r["lookup_s"] / r["latency_s"] for r in looked)
    assert all(isinstance(r["tail_gap"], float) for r in looked if "tail_gap" in r)
    assert any("tail_gap" in r for r in rows if r["condition"] == "fold-routed")   # the tail's best over a fetch's
    # a bar under the tail's best (round 29's probes) fetches a prefix of the same ranking: never more, on one cache
    by = {(r["condition"], r["length"], r["question"]): r for r in rows}
    for (c, n, i), r in by.items():
        if c in ("fold-routed-bar0", "fold-routed-bar1"):
            free, loose = by[("fold-routed-by-model", n, i)], by[("fold-routed-bar1", n, i)]
            assert r["recalled_tokens"] <= loose["recalled_tokens"] <= free["recalled_tokens"]
            assert r.get("tail_gap") == pytest.approx(free.get("tail_gap"), abs=1e-3)
    unchecked = {r["recall_how"] for r in rows if r["condition"] == "fold-routed-peaks"}   # verify=False
    assert unchecked <= {"", "bm25", "latent:attach"}
    # fold-routed-sink folds on a cache of its own, past a sink that holds the header as far as this small budget allows
    starts = {f["condition"]: f["span_start"] for f in result["folds"]}
    assert starts["fold-latent"] == 4 and starts["fold-routed-sink"] > 4
    forms = {(d["condition"], d["length"], d["form"]): d for d in result["summary"]["by_form"]}
    assert forms[("fold-latent", 900, "paraphrase")]["questions"] == 4
    assert 0.0 <= forms[("fold-latent", 900, "own")]["availability"] <= 1.0
    assert {d["reference"] for d in result["summary"]["by_form_paired"]} == {"fold-recall-all-ranked", "ceiling"}
    # episode 0 has one seed at both lengths: a length's episodes do not depend on the other lengths listed
    assert {r["seed"] for r in rows} == {long.SPLIT_SEED["heldout"]}
    budget = result["config"]["window"] - result["config"]["reserve"]
    for r in rows:
        if r["condition"] in long.FOLD_GUIDANCE or r["condition"] in long.STREAMING:
            assert r["cache_positions"] <= budget
            event = tiny.count_tokens(long.question_event(long.make_long_episode(r["seed"], r["length"]).questions[0],
                                                          0))
            assert 0 < r["prefilled_tokens"] <= event + 4  # a call forwards its new event only, never the trajectory
            assert 0.0 <= r["held_fact"] <= 1.0 and 0.0 <= r["held_quarter"] <= 1.0
            if r["length"] == 900 and r["quarter"] == 1:
                assert r["held_quarter"] < 1.0  # folded away, in part at least
        if r["condition"] in long.STREAMING and r["length"] == 900 and r["quarter"] == 1:
            assert r["held_fact"] == 0.0  # keep 0: the first quarter is gone from the cache
        if r["condition"] == "truncated":   # TextWorker cuts the text to the window
            assert r["prefilled_tokens"] == r["cache_positions"] <= result["config"]["window"]
        if r["condition"] in long.FOLD_GUIDANCE or r["condition"] in ("truncated", "plain"):
            assert 0.0 <= r["covered_fact"] <= 1.0
        if "covered_fact" in r:   # how many of the two same-kind distractor statements the call held whole
            assert r["distractors_held"] in (0, 1, 2)
        if r["condition"] == "plain":   # no trajectory in view: neither the fact nor a distractor
            assert r["covered_fact"] == 0.0 and r["distractors_held"] == 0
        if r["condition"] == "ceiling":   # the whole trajectory in view: the fact and both its distractors
            assert r["covered_fact"] == 1.0 and r["distractors_held"] == 2
    long_rows = [r for r in rows if r["length"] == 900 and r["condition"] == "fold-mix"]
    assert long_rows[0]["trajectory_tokens"] > 2 * budget and long_rows[0]["folds"] >= 2
    assert result["folds"] and all(f["kept"] < f["span"] for f in result["folds"] if f["condition"] != "streaming")
    acc = {(a["condition"], a["length"]): a["accuracy"] for a in result["summary"]["accuracy"]}
    pairs = result["summary"]["paired"]
    # against fold-recall, then against BriefedWorker's recall (the pair of references once)
    per_length = {n: len({r["condition"] for r in rows if r["length"] == n}) for n in (300, 900)}
    assert [d["reference"] for d in pairs] == (["fold-recall"] * sum(k - 1 for k in per_length.values())
                                               + ["fold-recall-all-ranked"] * sum(k - 2 for k in per_length.values()))
    for d in pairs:  # every condition answered the same questions here: the paired mean is the accuracy gap
        assert d["questions"] == 8 and abs(d["diff"] - (acc[(d["condition"], d["length"])]
                                                         - acc[(d["reference"], d["length"])])) < 1e-9
        assert d["ci95"][0] <= d["diff"] <= d["ci95"][1] and d["episode_ci95"][0] <= d["diff"] <= d["episode_ci95"][1]
        assert abs((d["won"] - d["lost"]) / d["questions"] - d["diff"]) < 1e-9
    paths = long.write(result, tmp_path)
    assert all((tmp_path / p).exists() for p in ("results.json", "results.md", "long.png")) and len(paths) == 3
    md = (tmp_path / "results.md").read_text()
    assert "| fold-mix | 900 |" in md and md.index("Against fold-recall:") < md.index("Against fold-recall-all-ranked:")
    by = {(r["condition"], r["length"], r["question"]): r for r in rows}
    for i in range(4):  # recall puts folded-away text into the prompt, within its budget
        extra = by[("fold-recall", 900, i)]["prompt_tokens"] - by[("fold-mix", 900, i)]["prompt_tokens"]
        assert 0 < extra <= result["config"]["recall_budget"] + 16
        a = by[("fold-recall", 900, i)]
        for v in long.RECALL_VARIANTS:  # one cache, four recall variants: its folds recorded once, as fold-recall's
            b = by[(v, 900, i)]
            assert (a["cache_positions"], a["folds"]) == (b["cache_positions"], b["folds"])
            if i == 0:  # later questions may fold under guidance the variants' own earlier questions left
                assert a["held_fact"] == b["held_fact"]
    folded = {f["condition"] for f in result["folds"]}
    assert "fold-recall" in folded and not folded & (set(long.RECALL_VARIANTS) - {"fold-recall"})
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{long.README_START}\nold table\n{long.README_END}\nrest\n")
    assert long.main(["--report", str(tmp_path / "results.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and "| fold-mix | 900 |" in text
    assert text.startswith("intro") and text.endswith("rest\n")
    q1 = next(d for d in result["summary"]["by_depth"] if d["condition"] == "fold-mix" and d["quarter"] == 1)
    assert f"{q1['accuracy']:.2f} [{q1['ci95'][0]:.2f}, {q1['ci95'][1]:.2f}] ({q1['questions']})" in text  # depth CI
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["summary"] == json.loads(json.dumps(result["summary"]))
    # runs split by length over processes merge into one report
    parts = []
    for n in (300, 900):
        part = dict(result, rows=[r for r in rows if r["length"] == n],
                    folds=[f for f in result["folds"] if f["length"] == n],
                    config=dict(result["config"], lengths=[n]))
        parts.append(json.loads(json.dumps(part)))
    merged = long.merge(parts + parts[1:])  # a part given twice is counted once
    assert merged["summary"]["accuracy"] == json.loads(json.dumps(result["summary"]["accuracy"]))
    assert merged["config"]["lengths"] == [300, 900] and merged["merged_from"] == 3
    for i, part in enumerate(parts):
        (tmp_path / f"p{i}").mkdir()
        (tmp_path / f"p{i}" / "results.json").write_text(json.dumps(part))
    start, end = long.readme_markers("small")
    readme.write_text(f"intro\n{start}\nold\n{end}\n")
    assert long.main(["--report", str(tmp_path / "p0" / "results.json"), str(tmp_path / "p1" / "results.json"),
                      "--out", str(tmp_path / "merged"), "--readme", str(readme), "--readme-block", "small"]) == 0
    assert "| fold-mix | 900 |" in readme.read_text() and "--readme-block small" in readme.read_text()
    one_minute = [p["load_average"][0] for p in parts]
    assert f"at the end of each of 2 runs) {min(one_minute):.2f} to {max(one_minute):.2f}" in readme.read_text()
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["merged_from"] == 2
    assert json.loads((tmp_path / "p0" / "results.json").read_text())["config"]["lengths"] == [300]  # inputs kept
    # a merged report merges again: its runs' loads join the others' (one list of 1/5/15-minute loads per run)
    again = long.merge([merged, parts[0]])
    assert again["load_average"] == [p["load_average"] for p in parts + parts[1:]] + [parts[0]["load_average"]]
    assert "at the end of each of 4 runs)" in long.markdown(again)


def test_rlm_bench_routes_the_long_suite(capsys):
    from benchmarks.rlm_bench.cli import main

    for argv in (["--suite", "long", "--help"], ["long", "--help", "--suite"]):  # rlm's CLI may reorder
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0 and "rlm bench --suite long" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="only suite"):
        main(["--suite", "short"])


def test_recall_fits_the_whole_window_when_it_is_the_models_context(tok, tmp_path):
    """Window = the model's context (the default): the recalled text comes out of the cache budget and positions
    re-base early enough that every call prompt with its recall still fits."""
    tiny = tiny_model("llama-gqa", tok, max_positions=320)
    args = long.build_parser().parse_args(["--lengths", "1200", "--episodes", "1", "--conditions", "fold-recall",
                                           "streaming-recall", "--recent", "48", "--recall-budget", "64", "--out",
                                           str(tmp_path), "--no-progress"])
    result = long.run(args, lm=tiny, log=lambda *a: None)
    cfg = result["config"]
    assert cfg["window"] == 320 and cfg["recall_budget"] > 0
    for r in result["rows"]:
        assert r["cache_positions"] <= cfg["window"] - cfg["reserve"] - cfg["recall_budget"]
        assert r["position"] <= cfg["window"] - cfg["reserve"] - cfg["recall_budget"]  # RoPE: room for the recall
        assert r["position"] + r["prompt_tokens"] <= cfg["window"]


def test_first_episode_picks_later_seeds_and_is_checked(tok, tmp_path):
    tiny = tiny_model("llama-gqa", tok, max_positions=1024)
    args = long.build_parser().parse_args(["--lengths", "300", "--episodes", "2", "--first-episode", "3",
                                           "--window", "320", "--conditions", "plain", "--out", str(tmp_path),
                                           "--no-progress"])
    result = long.run(args, lm=tiny, log=lambda *a: None)
    assert sorted({r["seed"] for r in result["rows"]}) == [100_003, 100_004]
    assert result["config"]["first_episode"] == 3
    parts = [json.loads(json.dumps(dict(result, rows=[r for r in result["rows"] if r["seed"] == seed])))
             for seed in (100_003, 100_004)]  # the same length's episodes run by two processes
    merged = long.merge(parts)
    assert merged["config"]["episodes_done"] == {"300": 2} and len(merged["rows"]) == 16
    bad = long.build_parser().parse_args(["--lengths", "300", "--first-episode", "-1", "--conditions", "plain"])
    with pytest.raises(SystemExit, match="--first-episode -1"):
        long.run(bad, lm=tiny, log=lambda *a: None)
    past = long.build_parser().parse_args(["--lengths", "300", "--episodes", "2", "--first-episode", "99999",
                                           "--conditions", "plain"])  # would run into the next split's seeds
    with pytest.raises(SystemExit, match="--first-episode 99999 .* at most 100000"):
        long.run(past, lm=tiny, log=lambda *a: None)


def test_route_sweep_replays_each_question_from_the_run_its_margin_routes_to():
    """route_sweep: a question whose BM25 margin reaches the threshold takes BM25's row, the others latent's; the
    shares and means follow from the rows."""
    from benchmarks.rlm_bench.route_sweep import sweep

    def row(form, cov, ok):
        return dict(form=form, quarter="Q2", covered_fact=cov, correct=ok)

    bm25 = {(1, 9, 0): row("own", 1.0, True), (1, 9, 1): row("paraphrase", 0.0, False),
            (1, 9, 2): row("own", 1.0, True), (1, 9, 3): row("paraphrase", 0.0, False)}
    latent = {(1, 9, 0): row("own", 0.0, False), (1, 9, 1): row("paraphrase", 1.0, True),
              (1, 9, 2): row("own", 0.5, False), (1, 9, 3): row("paraphrase", 0.0, True)}
    margin = {(1, 9, 0): 3.0, (1, 9, 1): 1.05, (1, 9, 2): 1.25, (1, 9, 3): 1.0}
    got = {e["margin"]: e for e in sweep(bm25, latent, margin, [1.2, 1.5])}
    assert got["bm25"]["to_latent"] == 0 and got["latent"]["to_latent"] == 1
    assert got[1.2]["to_latent"] == 0.5 and got[1.2]["own"]["availability"] == 1.0
    assert got[1.2]["paraphrase"] == dict(questions=2, availability=0.5, accuracy=1.0)
    assert got[1.5]["to_latent"] == 0.75 and got[1.5]["own"]["availability"] == 0.75


def test_pooled_pairs_questions_within_each_run_and_pools_them(tmp_path, capsys):
    """Two runs, paired per run by (length, episode, question): the differences are pooled by form."""
    from benchmarks.rlm_bench import long_pooled

    def row(cond, q, form, correct, covered, length=100):
        return dict(condition=cond, length=length, episode="e0", question=q, form=form, correct=correct,
                    covered_fact=covered)
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"rows": [row("ref", 0, "own", True, 1.0), row("new", 0, "own", True, 1.0),
                                      row("ref", 1, "paraphrase", False, 0.1),
                                      row("new", 1, "paraphrase", True, 1.0)]}))
    ref, new = tmp_path / "ref.json", tmp_path / "new.json"   # a pair: the same question ids as a, another length
    ref.write_text(json.dumps({"rows": [row("ref", 1, "paraphrase", True, 1.0, 200)]}))
    new.write_text(json.dumps({"rows": [row("new", 1, "paraphrase", False, 0.2, 200),
                                        row("new", 2, "paraphrase", True, 1.0, 200)]}))   # unpaired: left out
    got = {r["form"]: r for r in long_pooled.pooled([str(a), f"{ref}:{new}"], "new", "ref")}
    assert got["own"]["questions"] == 1 and got["own"]["accuracy"] == 0.0
    assert got["paraphrase"]["questions"] == 2 and got["paraphrase"]["accuracy"] == 0.0
    assert got["paraphrase"]["held_whole"] == 0.0 and got["paraphrase"]["accuracy_ci"][0] < 0 < \
        got["paraphrase"]["accuracy_ci"][1]
    assert long_pooled.main(["--condition", "new", "--reference", "ref", str(a)]) == 0
    assert "paraphrase: 1 questions, accuracy 1.00 against 0.00, +1.000" in capsys.readouterr().out
    # =NAME: this run's condition rows under another name (here the reference's own: every difference 0)
    same = {r["form"]: r for r in long_pooled.pooled([f"{a}=ref"], "new", "ref")}
    assert same["paraphrase"]["questions"] == 1 and same["paraphrase"]["accuracy"] == 0.0
    assert long_pooled.pooled([f"{a}=missing"], "new", "ref") == []
    assert long_pooled.main(["--condition", "missing", "--reference", "ref", f"{a}=new"]) == 0
    assert "paraphrase: 1 questions, accuracy 1.00 against 0.00" in capsys.readouterr().out
    # REF=NAME: the reference's rows under another name (an older run's default); here a's own "new" rows
    renamed = {r["form"]: r for r in long_pooled.pooled([f"{a}=new:{a}"], "new", "ref")}
    assert renamed["paraphrase"]["questions"] == 1 and renamed["paraphrase"]["ref"] == 1.0   # new against new
    assert long_pooled.split_run(f"{ref}=old:{new}=x") == (str(ref), "old", str(new), "x")
    assert long_pooled.split_run(f"{ref}:{new}=x") == (str(ref), "", str(new), "x")
    assert long_pooled.split_run(f"{ref}=old:{new}") == (str(ref), "old", str(new), "")
    assert long_pooled.split_run(f"{a}") == (str(a), "", str(a), "")   # one run: both sides, their own names
    assert long_pooled.split_run(f"{a}=x") == (str(a), "", str(a), "x")
    with pytest.raises(SystemExit):
        long_pooled.main(["--condition", "new", str(tmp_path / "missing.json")])
    # --by-route: each form split by the reference's route (its row's recall_how)
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"rows": [dict(row("ref", 0, "own", False, 0.5), recall_how="bm25"),
                                      dict(row("new", 0, "own", True, 1.0), recall_how="latent:attach+bm25"),
                                      dict(row("ref", 1, "own", True, 1.0), recall_how="latent:attach+bm25"),
                                      row("new", 1, "own", True, 1.0)]}))
    by = {r["route"]: r for r in long_pooled.pooled([str(b)], "new", "ref", by_route=True)}
    assert by["bm25"]["questions"] == by["split"]["questions"] == 1
    assert (by["bm25"]["accuracy"], by["split"]["accuracy"]) == (1.0, 0.0)   # the reference's route, not the new one's
    both = long_pooled.pooled([str(b)], "new", "ref", by_place=True, by_route=True)
    assert sorted((r["place"], r["route"]) for r in both) == [("folded", "bm25"), ("folded", "split")]
    assert [long_pooled.route(dict(recall_how=h)) for h in ("bm25", "bm25+latent:attach-pins", "latent:attach+bm25",
                                                            "", None)] == ["bm25", "bm25", "split", "none", "none"]
    assert long_pooled.main(["--by-route", "--condition", "new", "--reference", "ref", str(b)]) == 0
    assert "bm25 own: 1 questions, accuracy 1.00 against 0.00, +1.000" in capsys.readouterr().out
    # accuracy where each side held the fact whole (unpaired), and the distractors held where both rows record them
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"rows": [dict(row("ref", 0, "paraphrase", False, 1.0), distractors_held=2),
                                      dict(row("new", 0, "paraphrase", True, 1.0), distractors_held=1),
                                      dict(row("ref", 1, "paraphrase", True, 0.5), distractors_held=0),
                                      dict(row("new", 1, "paraphrase", False, 1.0), distractors_held=0),
                                      row("ref", 2, "paraphrase", True, 1.0), row("new", 2, "paraphrase", True, 0.0)]}))
    p, = long_pooled.pooled([str(c)], "new", "ref")
    assert (p["new_whole_questions"], p["new_when_whole"], p["ref_whole_questions"], p["ref_when_whole"]) == (2, 0.5, 2,
                                                                                                            0.5)
    assert (p["new_distractors"], p["ref_distractors"]) == (0.5, 1.0)   # the two pairs that record them
    assert long_pooled.main(["--condition", "new", "--reference", "ref", str(c)]) == 0
    assert ("where held whole: accuracy 0.50 (2) against 0.50 (2); distractors held whole 0.50 against 1.00"
            in capsys.readouterr().out)


def test_suite_sizes_take_the_worker_s_default_recall_budget():
    """The suite's recall budget is the worker's default (`default_recall_tokens`): an eighth of the cache's budget at
    the 8k window, raised to 384 at the fast 2,048 window, and only as far as its folding cache still fits."""
    from types import SimpleNamespace

    from benchmarks.rlm_bench.long_conditions import LongConfig

    lm = SimpleNamespace(max_context=8192, name="m")
    assert LongConfig(window=8192).sizes(lm)["recall_budget"] == 960              # (8192 - 512) // 8
    fast = LongConfig(window=2048).sizes(lm)
    assert (fast["budget"], fast["recent"], fast["recall_budget"]) == (1920, 960, 384)
    # budget 1920 - t must hold sink 4 + recent 1200 + reserve 128 + t: t <= 294
    assert LongConfig(window=2048, recent=1200).sizes(lm)["recall_budget"] == 294
    assert LongConfig(window=2048, recall_budget=100).sizes(lm)["recall_budget"] == 100


def test_routed_conditions_build_their_recall():
    """Each routed condition's recall: fold-routed-text re-prefills the latent blocks' text (LatentRecall attach=False),
    fold-routed leaves the choice to the model (attach=None) and follows the shipped default (whole sentences on
    BM25's own route, round 24), the others set their share or margin and keep their round's chunks."""
    from agents import LatentRecall, RoutedRecall, TextRecall
    from benchmarks.rlm_bench.long_conditions import ROUTED, recall_of

    sizes = {"recall_budget": 120}
    text, plain = recall_of("fold-routed-text", sizes), recall_of("fold-routed", sizes)
    assert isinstance(text, RoutedRecall) and isinstance(text.latent, LatentRecall) and text.latent.attach is False
    assert text.latent.tokens == text.tokens == 120 and plain.latent.attach is None
    assert recall_of("fold-routed-alone", sizes).share == 0.0 and recall_of("fold-routed-always", sizes).margin == 1e9
    assert recall_of("fold-routed-hedged", sizes).confident_share == 0.75 and plain.confident_share == 1.0
    tail = recall_of("fold-routed-tail", sizes)
    assert tail.latent.tail_skip == 512 and tail.latent.tokens == 120 and plain.latent.tail_skip is None
    assert recall_of("fold-routed-pin", sizes).latent.pin == 60
    assert recall_of("fold-routed-pin-full", sizes).latent.pin == 120
    assert plain.latent.pin is None and recall_of("fold-routed-pin", sizes).latent.tokens == 120
    assert recall_of("fold-routed-unpinned", sizes).latent.pin == 0   # the default until round 7
    assert recall_of("fold-routed-confident-pin", sizes).confident_pin and not plain.confident_pin
    peaks = recall_of("fold-routed-peaks", sizes)   # the default of rounds 12-14: peaks, BM25's route unchecked
    assert peaks.latent.peaks == 4 == plain.latent.peaks and not peaks.verify
    means = recall_of("fold-routed-means", sizes)   # the default until round 12
    assert means.latent.peaks == 0 and not means.verify
    assert recall_of("fold-routed-verify", sizes).verify and plain.verify   # the default since round 15
    for condition, chunks in [("fold-routed-stride", "overlap"), ("fold-routed-sentences", "sentences")]:
        probe = recall_of(condition, sizes)   # round 19's probes: BM25's chunks overlapping, or of whole sentences
        assert probe.text.chunks == probe.share_recall().chunks == chunks
        assert probe.text.tokens == probe.share_recall().tokens == 120
    mixed = recall_of("fold-routed-sentences-confident", sizes)   # round 22's probe, the default since round 24
    assert (mixed.text.chunks, mixed.shared.chunks, mixed.shared.tokens) == ("sentences", "words", 120)
    # fold-routed follows the shipped default: whole sentences on BM25's own route, side by side for its share
    assert (plain.text, plain.share_recall()) == (mixed.text, mixed.shared) and plain.shared is None
    units = recall_of("fold-routed-units", sizes)   # round 25's probe: the shipped default, latent recall by sentences
    assert (units.latent.units, units.latent.pad, units.latent.tokens) == ("sentences", 0, 120)
    assert (units.text, units.shared) == (mixed.text, mixed.shared) and plain.latent.units is None
    by_model = recall_of("fold-routed-by-model", sizes)   # round 27's probe: sentences re-attached, blocks pasted
    assert (by_model.latent.units, by_model.latent.pad, by_model.text, by_model.shared) == (None, None, mixed.text,
                                                                                            mixed.shared)
    for condition, margin in [("fold-routed-bar0", 0.0), ("fold-routed-bar1", 1.0)]:   # round 29's probes
        bar = recall_of(condition, sizes)
        assert bar.latent == LatentRecall(tokens=120, units=None, tail_margin=margin) and bar.text == mixed.text
    assert plain.latent.tail_margin is None
    tail_units = recall_of("fold-routed-tail-units", sizes)   # round 29's second probe
    assert tail_units.latent == LatentRecall(tokens=120, units=None, tail_skip=128)
    for condition in ROUTED:   # every other condition pins its round's chunks: side by side unless it names its own
        if condition not in ("fold-routed", "fold-routed-stride", "fold-routed-sentences",
                             "fold-routed-sentences-confident", "fold-routed-units", "fold-routed-by-model",
                             "fold-routed-bar0", "fold-routed-bar1", "fold-routed-tail-units"):
            probe = recall_of(condition, sizes)
            assert probe.text == TextRecall(tokens=120) == probe.share_recall(), condition


def test_header_sink_condition_holds_the_header_within_the_cache_s_room():
    """fold-routed-sink's fold (round 18's probe): the sink holds the whole header where the cache's room allows, the
    recent window giving up what it must (TrajectoryCache.check_budget: budget - t >= sink + recent + reserve + t),
    and on a budget too small for it the sink stops where half the recent window is left."""
    from types import SimpleNamespace

    from agents.recall import fold_room
    from benchmarks.rlm_bench.long_conditions import HEADER_SINK, LongConfig, cache_group, fold_policy

    lm = SimpleNamespace(max_context=8192, name="m")
    for window, recent_flag, sink, recent in ((2048, None, 83, 941), (8192, None, 83, 3840), (320, 96, 52, 48),
                                              (320, 250, 4, 124)):   # room 128: the sink stays 4, the window 124
        cfg = LongConfig(window=window, recent=recent_flag)
        sizes = cfg.sizes(lm)
        fold = fold_policy(cfg, sizes, HEADER_SINK[0], 83)
        assert (fold.sink, fold.recent) == (sink, recent), window
        # fold_room: the most a recall can take with this sink and window, at least the suite's recall budget
        assert fold_room(sizes["budget"], sizes["reserve"], fold.sink, fold.recent) >= sizes["recall_budget"]
    assert fold_policy(cfg, sizes, "fold-routed", 83).sink == 4   # the other conditions keep the default sink
    # a cache of its own: on fold-latent's shared one it would fold with the default sink
    assert cache_group("fold-routed-sink") == "fold-routed-sink" and cache_group("fold-routed") == "fold-latent"
    assert cache_group("fold-recall-all") == "fold-recall" and cache_group("fold-mix") == "fold-mix"


def test_pooled_by_length_keeps_lengths_apart(tmp_path, capsys):
    from benchmarks.rlm_bench import long_pooled

    def row(cond, q, correct, covered, length):
        return dict(condition=cond, length=length, episode="e0", question=q, form="paraphrase", correct=correct,
                    covered_fact=covered)
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"rows": [row("ref", 0, False, 0.0, 100), row("new", 0, True, 1.0, 100),
                                      row("ref", 0, True, 0.5, 200), row("new", 0, True, 0.5, 200)]}))
    got = {r["length"]: r for r in long_pooled.pooled([str(a)], "new", "ref", by_length=True)}
    assert got[100]["accuracy"] == 1.0 and got[100]["new_available"] == 1.0 and got[100]["ref_available"] == 0.0
    assert got[200]["accuracy"] == 0.0 and got[200]["new"] == got[200]["ref"] == 1.0
    (both,) = long_pooled.pooled([str(a)], "new", "ref")
    assert both["questions"] == 2 and both["accuracy"] == 0.5
    assert long_pooled.main(["--condition", "new", "--reference", "ref", "--by-length", str(a)]) == 0
    assert "100 paraphrase: 1 questions, accuracy 1.00 against 0.00" in capsys.readouterr().out


def test_pooled_by_place_splits_tail_facts_from_folded_ones(tmp_path, capsys):
    """--by-place: a question whose fact the reference's cache held whole (held_fact 1: its unfolded tail) is
    pooled apart from one whose fact was folded away."""
    from benchmarks.rlm_bench import long_pooled

    def row(cond, q, correct, covered, held):
        return dict(condition=cond, length=100, episode="e0", question=q, form="paraphrase", correct=correct,
                    covered_fact=covered, held_fact=held)
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"rows": [dict(row("ref", 0, False, 0.4, 1.0), tail_gap=0.3),
                                      row("new", 0, True, 1.0, 1.0),
                                      dict(row("ref", 1, True, 1.0, 0.1), tail_gap=-2.0),
                                      row("new", 1, False, 0.0, 0.1),
                                      row("ref", 2, True, 1.0, 0.2), row("new", 2, True, 1.0, 0.2)]}))
    got = {r["place"]: r for r in long_pooled.pooled([str(a)], "new", "ref", by_place=True)}
    assert got["tail"]["questions"] == 1 and got["tail"]["ref_available"] == 0.4 and got["tail"]["held_whole"] == 1
    # the reference's lookups that ranked the tail's best first, over the rows that record one (round 29)
    assert (got["tail"]["ref_tail_first"], got["tail"]["ref_looked"]) == (1.0, 1)
    assert (got["folded"]["ref_tail_first"], got["folded"]["ref_looked"]) == (0.0, 1)
    assert got["folded"]["questions"] == 2 and got["folded"]["accuracy"] == -0.5 and got["folded"]["new_available"] \
        == 0.5
    assert long_pooled.main(["--condition", "new", "--reference", "ref", "--by-place", str(a)]) == 0
    out = capsys.readouterr().out
    assert "tail paraphrase: 1 questions, accuracy 1.00 against 0.00" in out
    assert "ranked the unfolded tail's best above every fetchable piece in 1 of 1 calls" in out


def test_attention_ab_alternates_both_implementations_on_one_cache(tok, tmp_path, capsys):
    from benchmarks import attention_ab

    with pytest.raises(SystemExit):
        attention_ab.main(["--length", "100"])
    assert "--length 100" in capsys.readouterr().err
    tiny = tiny_model("llama-gqa", tok, max_positions=2048)
    assert attention_ab.main(["--length", "700", "--window", "512", "--out", str(tmp_path)], lm=tiny) == 0
    result = json.loads((tmp_path / "attention_ab.json").read_text())
    grouped, copied = result["calls"]["grouped"], result["calls"]["per-head copy"]
    assert len(grouped) == len(copied) == 16   # eight questions, each asked twice per implementation (ABBA)
    assert [c["question"] for c in grouped] == [c["question"] for c in copied]
    assert result["summary"]["grouped / per-head copy"]["pairs"] == 16 and (tmp_path / "attention_ab.png").is_file()
    import briefing.attention

    assert briefing.attention.sdpa.__module__ == "briefing.attention"   # the shipped implementation is restored
