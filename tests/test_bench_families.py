"""Task families of `rlm bench`: deterministic, answerable only from the trajectory, fair candidates, seed splits."""
from __future__ import annotations

import re

import pytest
from rlm.events import render

from benchmarks.rlm_bench.episodes import DEPTHS
from benchmarks.rlm_bench.families import (
    FAMILIES,
    PARAPHRASES,
    SPLITS,
    content_words,
    make_family_episode,
    suite_specs,
)


@pytest.fixture(scope="module")
def small(tok):
    """A tiny random model on the BPE test tokenizer: what the families need of a worker is its tokenizer."""
    from tests.tiny import tiny_model

    return tiny_model("llama-gqa", tok)


def test_deterministic_and_seed_sensitive():
    for fam in FAMILIES:
        a, b = make_family_episode(fam, 3, 800, "middle"), make_family_episode(fam, 3, 800, "middle")
        assert (a.trajectory, a.question, a.candidates, a.answer) == (b.trajectory, b.question, b.candidates, b.answer)
        assert make_family_episode(fam, 4, 800, "middle").trajectory != a.trajectory


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_answer_only_in_trajectory_and_candidates_fair(family, lm):
    """The candidates are chosen for the embedded model's tokenizer (single-token words, one token per digit)."""
    small = lm
    for seed in range(6):
        e = make_family_episode(family, seed, 800, count_tokens=small.count_tokens)
        assert e.family == family and e.answer in e.candidates and len(set(e.candidates)) == len(e.candidates) >= 4
        assert e.trajectory == "".join(render(ev) for ev in e.events)
        for f in e.facts:
            assert f.statement in e.trajectory
        # the question does not give the answer away, and every candidate has the same token count
        assert e.answer not in e.question
        sizes = {len(small.encode(" " + e.answer_prefix + " " + c)) for c in e.candidates}
        assert len(sizes) == 1, (e.candidates, sizes)


def test_variable_tracking_needs_the_chain():
    for seed in range(5):
        e = make_family_episode("variable_tracking", seed, 1200, "middle")
        names = re.findall(r"X\d+", e.answer)
        value = re.search(r"\d{4}", e.question).group()
        # only the first hop is retrievable by the question's words; the rest are bound by name, in order
        assert f"VAR {names[0]} = {value}" in e.trajectory
        pos = [e.trajectory.index(f"VAR {names[1]} = {names[0]}"), e.trajectory.index(f"VAR {names[2]} = {names[1]}")]
        assert e.trajectory.index(f"VAR {names[0]} = {value}") < pos[0] < pos[1]
        assert names[1] not in e.question and names[2] not in e.question


def test_updated_fact_latest_wins():
    for seed in range(6):
        e = make_family_episode("updated_fact", seed, 1200, "late")
        old = next(f for f in e.facts if not f.target and "Update" not in f.statement and
                   f.statement.startswith(e.answer_prefix))
        new = next(f for f in e.facts if f.target)
        assert e.trajectory.index(old.statement) < e.trajectory.index(new.statement)
        assert e.answer in new.statement and old.statement.rsplit(" ", 1)[1] in e.candidates


def test_paraphrase_shares_no_content_word():
    for key, q in PARAPHRASES.items():
        assert not content_words(q) & content_words(f"The {key} is"), (key, q)
    for seed in range(6):
        e = make_family_episode("paraphrase", seed, 800)
        target = next(f for f in e.facts if f.target)
        assert not content_words(e.question) & content_words(target.statement)


def test_aggregation_count_matches_trajectory():
    for seed in range(6):
        e = make_family_episode("aggregation", seed, 1500)
        animal = re.search(r"was a (\w+) seen", e.question).group(1)
        assert e.trajectory.count(f"Sighting: a {animal} was seen") == int(e.answer)
        assert e.depth == "spread"


@pytest.mark.parametrize("depth", list(DEPTHS))
def test_depth_band(depth):
    lo, hi = DEPTHS[depth]
    for fam in ("single_key", "multi_key", "paraphrase"):
        for seed in range(4):
            e = make_family_episode(fam, seed, 3000, depth)
            assert e.depth == depth and e.n_steps >= 8
            slack = 1.5 / e.n_steps + 0.1
            assert lo - slack <= e.fact_offset <= hi + slack, (fam, seed, e.fact_offset)


@pytest.mark.slow
def test_lengths_follow_the_worker_tokenizer(lm):
    """Sized with the embedded model's tokenizer (the scaffolding estimate is calibrated on it)."""
    small = lm
    for n in (1000, 2000):
        sizes = [small.count_tokens(s.build(small.count_tokens).trajectory) for s in suite_specs([n], 1, "dev")]
        assert all(0.8 * n <= x <= 1.45 * n for x in sizes), sizes


def test_suite_specs_splits_and_size():
    held = suite_specs([1000, 2000, 4000, 8000], 5, "heldout")
    dev = suite_specs([1000, 2000, 4000, 8000], 5, "dev")
    assert len(held) == 7 * 4 * 5 >= 120
    assert all(s.seed in SPLITS["heldout"] for s in held) and all(s.seed in SPLITS["dev"] for s in dev)
    assert not set(SPLITS["dev"]) & set(SPLITS["heldout"])
    assert len({(s.family, s.seed, s.target_tokens) for s in held}) == len(held)
    assert {s.depth for s in held if s.family != "aggregation"} == set(DEPTHS)
    uneven = suite_specs([1000, 8000], [3, 1], "heldout")
    assert len(uneven) == 7 * 4 and len({s.seed for s in uneven}) == len(uneven)
    # depths rotate across lengths too: one episode per cell still covers every depth over 3 lengths
    one = suite_specs([1000, 2000, 4000], 1, "dev", families=("single_key",))
    assert [s.depth for s in one] == ["early", "middle", "late"]
    with pytest.raises(ValueError, match="split must be one of"):
        suite_specs([1000], 1, "test")
    with pytest.raises(ValueError, match="family must be one of"):
        make_family_episode("needle", 0, 800)


def test_diagnosis_finds_the_statement_tokens_and_their_coverage(small):
    import types

    import torch

    from benchmarks.rlm_bench.diagnose import coverage, statement_positions

    e = make_family_episode("single_key", 2, 800, "late", count_tokens=small.count_tokens)
    head = "<head>"
    target = next(f for f in e.facts if f.target)
    pos = statement_positions(small, head + e.trajectory, len(head), e.trajectory, [target.statement])
    ids = small.encode(head + e.trajectory)
    assert target.statement in small.decode([ids[p] for p in pos])
    assert len(pos) <= len(small.encode(target.statement)) + 2
    kept = torch.tensor(pos[: len(pos) // 2] + [0]).view(1, 1, -1).expand(2, 3, -1)       # [L, H, t]
    assert coverage(types.SimpleNamespace(positions=kept), pos) == pytest.approx(len(pos) // 2 / len(pos))
    assert coverage(types.SimpleNamespace(positions=torch.tensor(pos).view(1, 1, -1)), pos) == 1.0
