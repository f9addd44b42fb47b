"""The episode generator of `rlm bench`: deterministic, the fact is in the trajectory and only there."""
from __future__ import annotations

import pytest

from benchmarks.rlm_bench.episodes import CARRIERS, DEPTHS, TEMPLATES, make_episode, make_suite
from rlm.events import render


def test_deterministic():
    a, b = make_episode(7, 1000), make_episode(7, 1000)
    assert a.trajectory == b.trajectory and a.question == b.question and a.candidates == b.candidates
    assert make_episode(8, 1000).trajectory != a.trajectory


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("depth", list(DEPTHS))
def test_fact_in_trajectory_not_in_question(carrier, depth):
    e = make_episode(3, 800, depth=depth, carrier=carrier, n_distractors=3)
    target = next(f for f in e.facts if f.target)
    assert target.statement in e.trajectory and e.answer in e.trajectory
    assert e.answer.lower() not in e.question.lower()
    assert e.answer not in e.answer_prefix
    assert e.fact_carrier == carrier
    lo, hi = DEPTHS[depth]
    assert 0.0 <= e.fact_offset <= 1.0
    if e.n_steps >= 4:  # depth is by section; allow a section of slack
        assert lo - 1.0 / e.n_steps - 0.15 <= e.fact_offset <= hi + 1.0 / e.n_steps + 0.15


def test_candidates_and_distractors():
    e = make_episode(11, 1000, n_distractors=4)
    distractors = [f for f in e.facts if not f.target]
    assert len(distractors) == 4 and len(set(e.candidates)) == 5
    assert e.answer in e.candidates
    assert {f.value for f in distractors} <= set(e.candidates)
    for f in distractors:  # same kind, other keys: the question alone cannot tell them apart
        assert f.statement in e.trajectory and f.key != e.facts[0].key


@pytest.mark.parametrize("kind", [t.kind for t in TEMPLATES])
def test_question_names_the_target_key_only(kind):
    """Each fact has its own key phrase; the question and the lead-in name the target's and no distractor's."""
    for seed in range(5):
        e = make_episode(seed, 800, kind=kind, n_distractors=4)
        target = next(f for f in e.facts if f.target)
        assert target.key in e.question and target.key in e.answer_prefix
        assert len({f.key for f in e.facts}) == len(e.facts)
        for f in e.facts:
            if not f.target:
                assert f.key not in e.question and f.key not in e.answer_prefix
        # the lead-in restates the statement up to its value, so the value follows the same words as in the trajectory
        assert target.statement == f"{e.answer_prefix} {e.answer}"
        assert sorted(e.candidates) == sorted(f.value for f in e.facts)


@pytest.mark.parametrize("kind", [t.kind for t in TEMPLATES])
def test_candidates_have_one_shape(kind):
    """Candidates are 4-digit codes (differing in >= 2 digits) or single words: equal token counts, summed log-prob."""
    for seed in range(5):
        e = make_episode(seed, 800, kind=kind, n_distractors=4)
        if kind == "code":
            assert all(len(c) == 4 and c.isdigit() for c in e.candidates)
            for i, a in enumerate(e.candidates):
                for b in e.candidates[i + 1:]:
                    assert sum(x == y for x, y in zip(a, b)) <= 2
        else:
            assert all(c.isalpha() and " " not in c for c in e.candidates)


def test_rendered_with_runtime_events_and_lengths_grow():
    e = make_episode(5, 1000)
    assert e.trajectory == "".join(render(ev) for ev in e.events)
    assert "[worker call 1]" in e.trajectory and "[output]" in e.trajectory and "[orchestrator]" in e.trajectory
    sizes = [len(make_episode(5, n, depth="middle", carrier="note").trajectory) for n in (600, 2000, 6000)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert 2000 * 2.5 < sizes[1] < 2000 * 6


def test_suite_varies_depth_carrier_distractors():
    eps = make_suite([600, 1200], 3, seed=0)
    assert len(eps) == 6
    assert {e.depth for e in eps} == set(DEPTHS)
    assert len({e.fact_carrier for e in eps}) >= 2 and len({e.n_distractors for e in eps}) == 3
