"""Batched briefing: several worker calls on one trajectory share one scoring forward, one batched fit and one
batched decode, and give what calls one after another give (issue 27.1). Tiny random-weight models of every
family; a folded cache (stored beta) and hybrid / sliding-window attention included."""
from __future__ import annotations

import pytest
import torch

import briefing
from agents.recall import TextRecall
from agents.workers import BriefedWorker
from briefing.matching import fit, fit_problem, solve_fits
from tests.tiny import FAMILIES, tiny_model

TEXT = "".join(f"Line {i}: the tide was low and the gulls were loud over the harbour wall at {i} past. "
               for i in range(24))
PROMPTS = [" Question: what was low? Answer:", " Q: gulls? A:", " Question: what was loud over the wall, and when "
           "was it loudest of all? Answer:"]
GREEDY = briefing.GenerationConfig(max_new_tokens=6, ignore_eos=True)


def folded_cache(lm) -> briefing.TrajectoryCache:
    cache = briefing.TrajectoryCache(lm, chunk_tokens=64, budget=256, reserve=96,
                                     fold=briefing.FoldPolicy(recent=64, capture_stride=4))
    cache.extend(TEXT)
    cache.observe(PROMPTS[0])
    cache.extend(TEXT)
    return cache


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_batch_of_prompts_compacts_and_decodes_as_one_prompt_at_a_time(tok, family):
    """compact_many = compact per prompt (same kept positions, same contexts up to rounding), and generate_batch =
    generate per context (same greedy tokens), on a folded cache and past the sliding window."""
    lm = tiny_model(family, tok, max_positions=1024)
    cache = folded_cache(lm)
    assert cache.folds or cache.store.windowed
    selector = briefing.AttentionMatching(tau=1.0)
    alone = [cache.compact(p, selector) for p in PROMPTS]
    together = cache.compact_many(PROMPTS, selector)
    for a, b in zip(alone, together):
        assert torch.equal(a.positions, b.positions)
        assert (a.last_logits - b.last_logits).abs().max() < 1e-4
        for la, lb in zip(a.kv.layers, b.kv.layers):
            assert la.keys.shape == lb.keys.shape and (la.values - lb.values).abs().max() < 1e-4
    one = [briefing.generate(ctx, GREEDY).token_ids for ctx in alone]
    many = [r.token_ids for r in briefing.generate_batch(together, GREEDY)]
    assert many == one
    # the contexts stay reusable, and the persistent cache is untouched by the batch
    assert [r.token_ids for r in briefing.generate_batch(together, GREEDY)] == one
    assert cache.compact(PROMPTS[1], selector).positions.equal(alone[1].positions)


def test_batched_decoding_follows_each_rows_logits(tok):
    """Each row of a decode batch sees only its own context: its step logits are those of decoding it alone."""
    lm = tiny_model("gemma3-hybrid", tok, max_positions=1024)
    cache = folded_cache(lm)
    ctxs = cache.compact_many(PROMPTS, briefing.AttentionMatching(tau=1.0))
    batch = briefing.generation.RowBatch(ctxs)
    tokens = [11, 12, 13]
    got = batch.step(tokens)                                                        # [B, vocab]
    for b, ctx in enumerate(ctxs):
        want = ctx.forward([tokens[b]], ctx.next_position)[-1]
        ctx.reset()
        assert (got[b] - want).abs().max() < 1e-4


def test_the_batched_fit_solves_each_problem_as_alone():
    """Problems of different query counts and kept sizes, padded and stacked into one solve, give each the fit it
    gets alone."""
    g = torch.Generator().manual_seed(0)
    problems, single = [], []
    for m, t, T in ((12, 5, 40), (30, 17, 40), (7, 9, 40)):
        Q, K, V = (torch.randn(4, 2, n, 8, generator=g) for n in (m, T, T))
        idx = torch.stack([torch.randperm(T, generator=g)[:t] for _ in range(8)]).reshape(4, 2, t).sort(-1).values
        problems.append(fit_problem(Q, K, V, idx, 0.35))
        single.append(fit(Q, K, V, idx, 0.35, ridge=1e-2, beta_max=8.0, nnls_iters=15))
    for a, b in zip(single, solve_fits(problems, ridge=1e-2, beta_max=8.0, nnls_iters=15)):
        assert a.beta.shape == b.beta.shape and (a.beta - b.beta).abs().max() < 1e-4
        assert (a.values - b.values).abs().max() < 1e-3 and abs(a.error - b.error) < 1e-4


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-hybrid"])
def test_answer_batch_equals_answers_one_after_another(tok, family):
    """The briefed worker's batch: same answers, token accounting and kept positions as sequential calls; the
    first answer reports what the sync prefilled; a query whose prompt cannot fit fails alone."""
    lm = tiny_model(family, tok, max_positions=1024)
    opts = dict(lm=lm, max_new_tokens=4, reserve=96, recall=TextRecall(tokens=24),
                fold=briefing.FoldPolicy(recent=48, capture_stride=4), cache_budget=200)
    queries = ["What was low?", "Which birds were loud?", "What was low at 7 past?"]
    seq = BriefedWorker(**opts)
    one = [seq.answer(q, TEXT) for q in queries]
    batch = BriefedWorker(**opts)
    many = batch.answer_batch(queries[:2] + ["x " * 200] + queries[2:], TEXT)
    assert isinstance(many[2], briefing.BriefingError) and "reserve" in str(many[2])
    many = many[:2] + many[3:]
    for a, b in zip(one, many):
        assert isinstance(b, type(a))
        assert (a.text, a.input_tokens, a.output_tokens, a.text_handoff_tokens) == \
            (b.text, b.input_tokens, b.output_tokens, b.text_handoff_tokens)
        assert (a.briefing.kept, a.briefing.recalled_tokens) == (b.briefing.kept, b.briefing.recalled_tokens)
    assert many[0].briefing.prefilled_tokens == one[0].briefing.prefilled_tokens > 0
    assert [m.briefing.prefilled_tokens for m in many[1:]] == [0, 0]
    # the cache remembered every query of the batch, in order, as sequential calls do
    assert torch.allclose(batch._caches[0].memory.task, seq._caches[0].memory.task, atol=1e-4)
