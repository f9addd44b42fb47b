"""Latent recall by sentences (`LatentRecall(units="sentences")`, issue 29, round 25), on tiny random-weight models:
the trajectory's sentences as token ranges, their scores against an explicit float64 computation, picks of whole
sentences, the routed check over them, and a worker recalling through them."""
from __future__ import annotations

import pytest
import torch

import briefing
from agents import BriefedWorker, RoutedRecall
from agents.recall import LatentRecall, sentence_units
from briefing import latent
from tests.test_latent_recall import FACT, PARAPHRASE, archiving_cache, planted
from tests.tiny import tiny_model


def test_sentence_units_start_at_each_sentence_and_are_cut_at_the_cap(tiny):
    """A unit starts at the token holding each sentence's first character (after ".", "!" or "?" and whitespace, or
    after a line break), the whitespace after a sentence goes with it, a sentence longer than the cap is cut every cap
    tokens, and the units lie side by side over every token."""
    text = "Alpha beta. Gamma delta?\n\nEpsilon zeta eta theta iota kappa lambda mu!  Nu xi\nomicron 3.5 pi"
    cache = archiving_cache(tiny)
    cache.extend(text)
    spans = cache.token_spans()
    units = sentence_units(cache, 8)                                           # [n, 2]
    firsts = [0, text.index("Gamma"), text.index("Epsilon"), text.index("Nu"), text.index("omicron")]
    heads = [next(t for t, (a, b) in enumerate(spans) if a <= c < b) for c in firsts]
    want = []
    for a, b in zip(heads, [*heads[1:], cache.tokens]):
        want += [[lo, min(b, lo + 8)] for lo in range(a, b, 8)]
    assert units.tolist() == want            # "3.5" ends no sentence: no whitespace after its "."
    assert any(b - a == 8 for a, b in want) and len(want) > len(heads)        # the cap cut a sentence
    assert units.dtype == torch.long and units.device == cache.archive.sums.device


def test_within_keeps_the_ranges_whose_every_token_is_in_a_marked_block():
    blocks = torch.tensor([True, True, False, True])                           # 4 blocks of 8 tokens
    units = torch.tensor([[0, 10], [10, 17], [24, 32], [15, 16], [30, 34]])
    assert latent.within(units, blocks, 8).tolist() == [True, False, True, True, False]


def test_pick_takes_the_best_spans_whole_within_the_budget_best_last():
    spans = torch.tensor([[0, 10], [10, 14], [30, 50], [60, 64], [70, 75]])    # [5, 2]
    scores = torch.tensor([0.5, 3.0, 2.0, float("-inf"), 1.0])                 # the fourth cannot be recalled
    assert latent.pick(scores, 32, 0, 30, 100, 0, spans) == [(70, 75), (30, 50), (10, 14)]
    assert latent.pick(scores, 32, 0, 40, 100, 0, spans) == [(70, 75), (30, 50), (0, 14)]   # touching: merged
    assert latent.pick(scores, 32, 2, 20, 100, 0, spans) == [(8, 16)]          # padded; the next does not fit
    assert latent.pick(scores, 32, 0, 10, 100, 12, spans) == [(12, 14)]        # nothing before the floor
    assert latent.pick(scores, 32, 0, 25, 100, 16, spans) == [(70, 75), (30, 50)]   # one wholly before it: none


def test_unit_scores_equal_an_explicit_float64_computation(tiny, essay):
    """A unit's score: its mean token state's cosine with the question, both whitened by the units' shrunk
    covariance, plus the mean of its k best token scores (each token's the whitened dot product with the question
    over its standardised length, by the blocks' spread), each standardised over the units; computed here with
    explicit inverses in float64. A cache without token states, and peaks 0, are refused."""
    cache = archiving_cache(tiny)
    cache.extend(planted(essay))
    arc, k, s = cache.archive, 3, latent.SHRINK
    units = sentence_units(cache, latent.UNIT_TOKENS)                           # [n, 2]
    q = latent.query_vector(cache, tiny.encode(PARAPHRASE))                     # [layers, hidden]
    got = latent.unit_scores(cache, q, units, peaks=k)                          # [n]
    assert torch.isfinite(got).all() and got.shape == (units.shape[0],)

    def shrunk(x):                                                              # [m, h] -> mean, C, diag(cov)
        cov = torch.cov(x.T)
        return x.mean(0), (1 - s) * cov + s * torch.diag(cov.diagonal()), cov.diagonal()

    states = arc.token_states().double()                                        # [tokens, hidden]
    y = q[-1].double()                                                          # [hidden]
    mu, C, var = shrunk(arc.representatives()[arc.counts > 0, -1].double())
    Ci = torch.linalg.inv(C)
    d = y - mu                                                                  # [hidden]
    tok = ((states - mu) @ Ci @ d) / (d @ Ci @ d).sqrt() / ((states - mu) / var.sqrt()).norm(dim=-1)   # [tokens]
    means = torch.stack([states[lo:hi].mean(0) for lo, hi in units.tolist()])   # [n, hidden]
    mu_u, C_u, _ = shrunk(means)
    Ci_u = torch.linalg.inv(C_u)
    x, yu = means - mu_u, y - mu_u
    cos = (x @ Ci_u @ yu) / ((x @ Ci_u * x).sum(-1) * (yu @ Ci_u @ yu)).sqrt()  # [n]
    peak = torch.stack([tok[lo:hi].topk(min(k, hi - lo)).values.mean() for lo, hi in units.tolist()])

    def z(v):
        return (v - v.mean()) / v.std()

    assert torch.allclose(got.double(), z(cos) + z(peak), atol=2e-3)
    plain = archiving_cache(tiny, token_states=False)
    plain.extend(planted(essay))
    with pytest.raises(briefing.BriefingError, match="token_states=True"):
        latent.unit_scores(plain, q, units)
    with pytest.raises(briefing.BriefingError, match="peaks must be at least 1"):
        latent.unit_scores(cache, q, units, peaks=0)


def aim_sentence(cache, query: str) -> tuple[int, int]:
    """Point the token states of the fact's sentence where `query`'s question vector points (ranking mechanics, not
    semantics: a random model has none); returns the sentence's token range."""
    units = sentence_units(cache, latent.UNIT_TOKENS)
    at = cache.text.index(FACT) + FACT.index("4417")
    tok = next(t for t, (a, b) in enumerate(cache.token_spans()) if a <= at < b)
    lo, hi = next((a, b) for a, b in units.tolist() if a <= tok < b)
    q = latent.query_vector(cache, cache.lm.encode(query))                     # [layers, hidden]
    cache.archive.states[lo - cache.archive.states_from:hi - cache.archive.states_from] = q[-1].half()
    return lo, hi


def test_latent_recall_by_sentences_brings_the_aimed_sentence_back_whole(tiny, essay):
    """The sentence whose token states point where the question does ranks first and comes back whole and last
    (nearest the question), its keys and values re-attached or its text pasted; the other picks are whole
    sentences too, and the budget holds them all."""
    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    lo, hi = aim_sentence(cache, PARAPHRASE)
    assert hi <= cache.archive.archived[1]                                     # folded away: a candidate
    rec = LatentRecall(tokens=96, units="sentences")
    assert rec.pad == 0 and LatentRecall().units is None and LatentRecall(units="blocks").pad == 8
    assert LatentRecall(units="sentences", pad=3).pad == 3
    got = rec.recall(cache, PARAPHRASE, 96)
    assert got.how == "latent:attach" and got.blocks is not None
    assert got.blocks.ranges[-1] == (lo, hi) and got.tokens <= 96 and len(got.blocks.ranges) > 1
    starts = {a for a, _ in sentence_units(cache, latent.UNIT_TOKENS).tolist()}
    ends = {b for _, b in sentence_units(cache, latent.UNIT_TOKENS).tolist()}
    assert all(a in starts and b in ends for a, b in got.blocks.ranges)        # whole sentences (merged or not)
    assert "4417" in cache.text[got.ranges[-1][0]:got.ranges[-1][1]]
    found = rec.lookup(cache, PARAPHRASE, 96)                                  # no unit before the sink
    units = found.spans                                                        # [n, 2]
    assert found.floor == cache.fold.sink and (units[:, 0] < found.floor).any()
    assert torch.isinf(found.scores[units[:, 0] < found.floor]).all()
    pasted = LatentRecall(tokens=96, units="sentences", attach=False).recall(cache, PARAPHRASE, 96)
    assert pasted.ranges == got.ranges and FACT.strip() in pasted.text


def test_units_are_checked():
    for bad in ("words", "", 1):
        with pytest.raises(ValueError, match="LatentRecall: units must be"):
            LatentRecall(units=bad)
    with pytest.raises(ValueError, match="units='sentences' .* peaks=0"):
        LatentRecall(units="sentences", peaks=0)
    with pytest.raises(ValueError, match="units='sentences' .* rank='both'"):
        LatentRecall(units="sentences", rank="both")
    with pytest.raises(ValueError, match="LatentRecall: pad must be"):
        LatentRecall(units="sentences", pad=-1)


def test_units_by_model_are_sentences_where_the_recall_attaches_and_blocks_where_it_pastes(tiny, tok, essay):
    """`LatentRecall(units=None)`: sentences (pad 0) where the recall re-attaches keys and values and ranks by the
    hidden states' peaks; blocks (pad 8) where it pastes text (attach=False, a sliding-window model) or ranks
    otherwise; an explicit pad or units wins. The lookup ranks what `unit` names: sentence spans on an attaching
    model, blocks (no spans) where the recall is pasted."""
    gemma = tiny_model("gemma3-hybrid", tok)
    by_model = LatentRecall(units=None)
    assert by_model.pad is None and (by_model.unit(tiny), by_model.padding(tiny)) == ("sentences", 0)
    assert (by_model.unit(gemma), by_model.padding(gemma)) == ("blocks", 8)
    for blocks in (LatentRecall(units=None, attach=False), LatentRecall(units=None, peaks=0),
                   LatentRecall(units=None, rank="both")):
        assert (blocks.unit(tiny), blocks.padding(tiny)) == ("blocks", 8)
    assert LatentRecall(units=None, pad=3).padding(tiny) == 3 and LatentRecall(units="sentences").unit(gemma) == \
        "sentences"
    cache = archiving_cache(tiny)
    cache.extend(planted(essay))
    attached = LatentRecall(tokens=96, units=None).lookup(cache, PARAPHRASE, 96)
    same = LatentRecall(tokens=96, units="sentences").lookup(cache, PARAPHRASE, 96)
    assert attached.spans is not None and torch.equal(attached.spans, same.spans) and attached.ranges == same.ranges
    pasted = LatentRecall(tokens=96, units=None, attach=False).lookup(cache, PARAPHRASE, 96)
    blocks = LatentRecall(tokens=96, attach=False).lookup(cache, PARAPHRASE, 96)
    assert pasted.spans is None and pasted.ranges == blocks.ranges


def test_the_routed_check_reads_as_many_units_as_the_budget_recalls_blocks(tiny, essay):
    """`RoutedRecall(verify=True)` over sentence units: BM25's best chunk agrees with the latent ranking where it
    holds one of the m best units, m the blocks the whole budget recalls (each block with the blocks' pads: here
    16 + 2 x 8 tokens), not one of every unit the budget would recall (three 20-token units fit in 64 tokens; 2 are
    read)."""
    cache = archiving_cache(tiny)
    cache.extend(planted(essay))
    assert cache.archive.policy.block == 16
    routed = RoutedRecall(latent=LatentRecall(units="sentences"))   # the budget: the call's
    spans = torch.tensor([[10, 30], [40, 60], [100, 120], [130, 150]])        # [4, 2]: 20 tokens each
    raw = torch.tensor([2.0, 1.0, 0.5, float("-inf")])                         # the last is not a candidate
    found = latent.Lookup(ranges=[], seconds=0.0, raw=raw, spans=spans)
    chars = cache.token_spans()
    second, third = (chars[45][0], chars[50][1]), (chars[105][0], chars[110][1])
    assert routed._agrees(cache, (chars[12][0], chars[20][1]), found, 32)     # 32 tokens: one block, the best unit
    assert not routed._agrees(cache, second, found, 32)
    assert routed._agrees(cache, second, found, 64)                            # 64: two blocks
    assert not routed._agrees(cache, third, found, 64)                         # three units fit, two are read
    assert routed._agrees(cache, third, found, 96)                             # 96: three blocks
    assert not routed._agrees(cache, (chars[135][0], chars[140][1]), found, 400)   # never an unscored unit


def test_a_worker_recalls_sentences_through_the_archive(tiny, essay):
    """A worker whose routed recall ranks sentences: every recalled and pinned character is in the call's context
    in every head, and the context stays within the cache budget plus the reserve."""
    text = planted(essay)
    rec = RoutedRecall(tokens=64, margin=100, latent=LatentRecall(tokens=64, units="sentences"))
    w = BriefedWorker(lm=tiny, max_new_tokens=2, reserve=160, cache_budget=256, recall=rec,
                      fold=briefing.FoldPolicy(recent=64))
    b = w.brief(PARAPHRASE + " And?", text)
    assert b.cache.folds and b.stats.recall.startswith("latent:attach") and 0 < b.stats.lookup_s <= b.stats.recall_s
    assert b.context.base_length <= w.cache_budget + w.reserve
    for a, z in [*b.recalled.ranges, *b.recalled.pinned]:
        assert b.coverage(a, z) == pytest.approx(1.0, abs=0.02)
