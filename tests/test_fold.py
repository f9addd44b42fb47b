"""Folding the persistent trajectory cache (rolling Attention Matching), on tiny random-weight models."""
from __future__ import annotations

import os

import pytest
import torch

import briefing
from briefing import kv
from briefing.matching import stack_layers
from briefing.context import forward_with_bias
from tests.tiny import FAMILIES, tiny_model

GUIDANCE = [briefing.TaskGuidance(), briefing.SpanGuidance(), briefing.MixGuidance()]
PROMPT = "\n\nQuestion: what does the author say about early users? Answer:"



def folding_cache(tiny, guidance=None, **kw):
    policy = briefing.FoldPolicy(keep=kw.pop("keep", 0.25), sink=4, recent=64, capture_stride=4,
                                 guidance=guidance or briefing.MixGuidance())
    return briefing.TrajectoryCache(tiny, chunk_tokens=64, budget=kw.pop("budget", 256), reserve=64, fold=policy, **kw)


def own_logprobs(cache, prompt_ids, ids):
    """Log-probs of `ids` after the prompt, forwarded directly over (a copy of) the folded cache with its beta."""
    copy = cache.clone()
    logits = forward_with_bias(copy.lm, copy.kv, prompt_ids + ids[:-1], copy.position, copy.store.attention_bias())
    return torch.log_softmax(logits[len(prompt_ids) - 1:], -1)


@pytest.mark.parametrize("guidance", GUIDANCE, ids=lambda g: g.name)
def test_memory_bounded_and_no_text_reprefilled(tiny, pieces, guidance):
    cache = folding_cache(tiny, guidance)
    lengths = []
    for i, piece in enumerate(pieces):
        if i % 5 == 4:  # worker prompts feed task guidance, through the explicit call a worker makes
            cache.remember(cache.compact(PROMPT, briefing.AttentionMatching(tau=1.0)))
        cache.extend(piece)
        lengths.append(cache.length)
    assert cache.tokens > 8 * cache.budget and len(cache.folds) >= 8
    assert max(lengths) <= cache.budget
    # every cut is before a space-letter pretoken: no BPE merge across seams, so each token is forwarded exactly once
    assert cache.prefilled_tokens == cache.tokens == len(tiny.encode(cache.text))
    assert cache.ids == tiny.encode(cache.text)
    assert cache.position < tiny.max_context - cache.reserve and cache.rebases >= 1
    assert cache.kv_bytes() <= 2 * cache.budget * 2 * tiny.num_layers * 2 * 16 * 4  # K, V (+beta): bounded
    names = {f.guidance.split(" ")[0] for f in cache.folds}
    assert names <= {guidance.name, "span"}
    if guidance.name == "task":
        assert any(f.guidance == "task" for f in cache.folds)


def test_compact_leaves_the_cache_and_its_memory_alone_until_remember(tiny, pieces):
    cache = folding_cache(tiny, briefing.TaskGuidance())
    for piece in pieces[:20]:
        cache.extend(piece)
    before = (cache.memory.task, cache.memory.span.clone(), list(cache.memory.span_tokens), cache.length)
    ctx = cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.3))
    assert cache.memory.task is None and torch.equal(cache.memory.span, before[1])
    assert cache.memory.span_tokens == before[2] and cache.length == before[3]
    cache.remember(ctx)
    n = len(ctx.prompt_ids)
    assert cache.memory.task.shape[3] == n and ctx.queries.shape[2] == n * cache.memory.task.shape[2]
    # remembered unrotated: rotating back to the prompt's positions gives the captured queries again
    g = cache.memory.task.shape[2]
    again = kv.rotate(cache.memory.task, torch.arange(ctx.query_position, ctx.query_position + n, dtype=torch.float64),
                      kv.rope_inv_freq(tiny.model))
    L, H = again.shape[:2]
    assert torch.allclose(again.reshape(L, H, g * n, -1), ctx.queries, atol=1e-4)


def test_seam_reprefill_is_only_the_recut_tokens(tiny, essay):
    """Arbitrary cut points: only the few tokens a merge across the seam changes are forwarded again."""
    cache = folding_cache(tiny)
    cuts = list(range(0, 9000, 97)) + [9000]
    for a, b in zip(cuts, cuts[1:]):
        cache.extend(essay[a:b])
    assert cache.ids == tiny.encode(essay[:9000])
    assert cache.tokens <= cache.prefilled_tokens <= cache.tokens + 2 * (len(cuts) - 1)
    assert len(cache.folds) >= 3


def test_keep_all_on_folded_cache_reproduces_its_logits(tiny, pieces):
    cache = folding_cache(tiny)
    for piece in pieces[:60]:
        cache.extend(piece)
    assert cache.folds and cache.beta is not None
    ctx = cache.compact(PROMPT, briefing.KeepAll())
    cont = " The author says that startups should"
    ids, got = briefing.token_logprobs(ctx, cont)
    ref = own_logprobs(cache, ctx.prompt_ids, ids)
    assert torch.equal(ref, got) or (ref - got).abs().max() < 1e-5
    # and the stored beta matters: the same cache without it gives other logits
    plain = cache.clone()
    plain.store.beta = None
    assert (own_logprobs(plain, ctx.prompt_ids, ids) - ref).abs().max() > 1e-3
    # a selection that keeps every position carries the stored beta through the composition path
    every = cache.compact(PROMPT, briefing.TopK(ratio=1.0))
    _, got_topk = briefing.token_logprobs(every, cont)
    assert (got_topk - ref).abs().max() < 1e-4


def test_fold_leaves_sink_and_recent_window_bit_for_bit(tiny, pieces):
    cache = folding_cache(tiny, budget=256)
    i = 0
    while cache.length + 40 < cache.budget:
        cache.extend(pieces[i])
        i += 1
    before_k, before_v = (stack_layers(x).clone() for x in kv.layer_kv(cache.kv))
    before_pos = cache.positions().clone()
    P = cache.length
    cache._fold()
    f = cache.folds[-1]
    assert f.span_start == 4 and f.span_stop == P - 64 and f.positions_after == 4 + f.kept + 64
    after_k, after_v = (stack_layers(x) for x in kv.layer_kv(cache.kv))
    assert torch.equal(after_k[:, :, :4], before_k[:, :, :4]) and torch.equal(after_v[:, :, :4], before_v[:, :, :4])
    assert torch.equal(after_k[:, :, -64:], before_k[:, :, -64:]) and torch.equal(after_v[:, :, -64:], before_v[:, :,
                                                                                                                -64:])
    assert torch.equal(cache.positions()[..., -64:], before_pos[..., -64:])
    # kept keys are original keys at their original positions (values are refitted)
    kept_pos = cache.positions()[..., 4:4 + f.kept]
    idx = torch.searchsorted(before_pos[..., 4:P - 64].contiguous(), kept_pos.contiguous()) + 4
    assert torch.equal(before_pos.gather(-1, idx), kept_pos)
    gathered = before_k.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, before_k.shape[-1]))
    assert torch.equal(after_k[:, :, 4:4 + f.kept], gathered)
    assert cache.folded == 4 + f.kept and torch.equal(cache.bias()[..., :4], torch.zeros_like(cache.bias()[..., :4]))


def test_beta_composition(tiny, pieces):
    """A per-call fit on a folded cache matches the block output computed WITH the stored beta, and the context's
    beta is stored beta + fitted beta: dropping the stored part makes the match worse."""
    cache = folding_cache(tiny)
    for piece in pieces[:60]:
        cache.extend(piece)
    bias = cache.bias()
    ctx = cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.3))
    copy = cache.clone()
    _, queries = forward_with_bias(tiny, copy.kv, ctx.prompt_ids, cache.position, copy.store.attention_bias(),
                                   capture=True)
    from briefing.matching import group_queries
    Q = group_queries(queries, cache.store.held, bias.shape[1])                     # [L, H, m, d]
    K, V = cache.store.held_kv()                                                    # [L, H, T, d]
    s = tiny.scaling
    Y = torch.softmax(Q @ K.transpose(-1, -2) * s + bias.unsqueeze(-2), -1) @ V     # with the stored beta
    t = ctx.stats.kept
    C1, C2 = (stack_layers(x)[:, :, :t] for x in kv.layer_kv(ctx.kv))
    beta = torch.stack(ctx.beta)                                                    # [L, H, t]

    def err(b):
        Y_hat = torch.softmax(Q @ C1.transpose(-1, -2) * s + b.unsqueeze(-2), -1) @ C2
        return float(((Y_hat - Y).norm(dim=(-2, -1)) / Y.norm(dim=(-2, -1))).mean())

    assert err(beta) == pytest.approx(ctx.stats.fit_error, rel=1e-3, abs=1e-5)
    assert err(beta - bias.gather(-1, ctx.positions)) > 2 * err(beta)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rope_rotation_is_exact(tok, family):
    """Keys prefilled at positions 0.. and rotated by +delta equal keys prefilled at delta.. (every layer, each with
    its own RoPE base: Gemma's local and global layers differ)."""
    tiny = tiny_model(family, tok, max_positions=512)
    ids = tiny.encode("The safe combination is 4417, said the magazine editor to the piano teacher.")
    caches = []
    for start in (0, 137):
        c = briefing.TrajectoryCache(tiny)
        forward_with_bias(tiny, c.kv, ids, start, None)
        caches.append(torch.cat(kv.layer_kv(c.kv)[0]))                                # [L, H, n, d]
    rotated = torch.cat([kv.rotate(caches[0][i:i + 1], torch.full((len(ids),), 137.0), tiny.inv_freq([i]))
                         for i in range(tiny.num_layers)])
    assert (rotated - caches[1]).abs().max() < 1e-4
    assert (caches[0] - caches[1]).abs().max() > 1e-2  # the rotation is not trivially the identity


def test_rebase_keeps_positions_below_the_trained_maximum(tiny, pieces):
    cache = folding_cache(tiny)
    seen = []
    for piece in pieces:
        cache.extend(piece)
        seen.append(cache.position)
    assert max(seen) <= tiny.max_context - cache.reserve and cache.rebases >= 2
    assert cache.tokens > 3 * tiny.max_context
    # after a re-base the cache's keys sit at their slots: relative order kept, no position past the next one
    pos = cache.positions()
    assert int(pos.max()) < cache.position
    ctx = cache.compact(PROMPT, briefing.AttentionMatching(tau=1.0))
    assert ctx.next_position == cache.position + len(ctx.prompt_ids) <= tiny.max_context
    out = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=4))
    assert out.finish_reason in {"length", "eos", "stop"}


def test_rebase_puts_each_kept_key_exactly_where_a_prefill_at_its_slot_would(tiny, pieces):
    """Layer 0's key of a token depends only on the token and its RoPE position. After folds the kept keys sit at
    scattered positions; a re-base must leave each one equal to the key of its own token prefilled at its slot."""
    cache = folding_cache(tiny)
    i = 0
    while len(cache.folds) < 2:
        cache.extend(pieces[i])
        i += 1
    assert cache.rebases == 0
    pos, org = cache.positions().clone(), cache.origins().clone()                      # [L, H, n]
    n = cache.length
    assert not torch.equal(pos[0], torch.arange(n).expand_as(pos[0]))  # folds left gaps: the re-base rotates
    based = cache.clone()
    based._rebase()
    assert torch.equal(based.positions()[0], torch.arange(n).expand_as(pos[0])) and based.position == n
    keys = kv.layer_kv(based.kv)[0][0][0]                                              # layer 0 [H, n, d]
    before = kv.layer_kv(cache.kv)[0][0][0]                                            # [H, n, d]
    for h in range(keys.shape[0]):
        toks = [cache.ids[int(o)] for o in org[0, h]]  # head h's kept tokens, in slot order
        fresh = briefing.TrajectoryCache(tiny, fold=None)
        forward_with_bias(tiny, fresh.kv, toks, 0, None)
        want = kv.layer_kv(fresh.kv)[0][0][0, h]                                       # [n, d]
        assert (keys[h] - want).abs().max() < 1e-4
        assert (before[h] - want).abs().max() > 1e-2  # before the re-base they sat elsewhere


@pytest.mark.parametrize("scope", ["read", "span"])
def test_span_guidance_scope_says_whose_queries_guide_a_fold(tiny, pieces, scope):
    """scope "span": every query offered to a fold is of a token inside the folded span, and the recent window's
    queries are all kept until a fold folds them; "read": the trajectory read so far, recent window included."""
    offered = []

    class Recording(briefing.SpanGuidance):
        def pick(self, task, span, limit, gen):
            offered.append(0 if span is None else span.shape[3])
            return super().pick(task, span, limit, gen)

    cache = folding_cache(tiny, Recording(scope=scope), budget=384)
    fold, seen = cache._fold, []

    def watched():
        recent_from = len(cache.ids) - min(cache.recent, cache.length - cache.fold.sink)
        toks = list(cache.memory.span_tokens)
        seen.append((sum(t < recent_from for t in toks), len(toks)))
        fold()
        stride = cache.fold.capture_stride
        captured = {t for t in range(recent_from, len(cache.ids)) if t % stride == 0}
        if scope == "span":  # none of the recent window's queries was dropped by the memory's sampling
            assert captured <= set(cache.memory.span_tokens)

    cache._fold = watched
    for piece in pieces[:120]:
        cache.extend(piece)
    assert len(seen) >= 6 and len(offered) == len(seen)
    inside = [a for a, _ in seen]
    assert offered == (inside if scope == "span" else [n for _, n in seen])
    assert all(a >= cache.fold.max_queries for a in inside[2:]) or scope == "read"  # enough span queries to draw from
    assert any(a < n for a, n in seen)  # the read scope offers the recent window's queries too
    assert all(f.guidance == ("span (span only)" if scope == "span" else "span") for f in cache.folds)
    with pytest.raises(briefing.BriefingError, match="scope must be one of read, span"):
        briefing.SpanGuidance(scope="all")


def test_streaming_llm_is_a_zero_keep_fold(tiny, pieces):
    cache = folding_cache(tiny, keep=0)
    for piece in pieces[:80]:
        cache.extend(piece)
    assert cache.folds and all(f.kept == 0 for f in cache.folds) and cache.beta is None
    assert cache.length <= cache.budget


def test_a_clone_folds_exactly_as_its_original(tiny, pieces):
    """A copy taken after folds (span guidance draws random span queries) goes on as the original would."""
    cache = folding_cache(tiny, briefing.SpanGuidance())
    for piece in pieces[:40]:
        cache.extend(piece)
    assert cache.folds
    copy = cache.clone()
    for c in (cache, copy):
        for piece in pieces[40:60]:
            c.extend(piece)
    assert len(copy.folds) == len(cache.folds) > 1
    assert torch.equal(copy.positions(), cache.positions()) and torch.equal(copy.beta, cache.beta)
    assert all(torch.equal(a, b) for a, b in zip(stack_layers(kv.layer_kv(copy.kv)[0]),
                                                 stack_layers(kv.layer_kv(cache.kv)[0])))


def test_bad_budget_and_policy_errors(tiny):
    policy = briefing.FoldPolicy(sink=4, recent=64)
    assert briefing.TrajectoryCache(tiny, budget=256, reserve=64, fold=briefing.FoldPolicy()).recent == 128  # half
    with pytest.raises(briefing.BriefingError, match="smaller than sink"):
        briefing.TrajectoryCache(tiny, budget=100, reserve=64, fold=policy)
    with pytest.raises(briefing.BriefingError, match="exceed"):
        briefing.TrajectoryCache(tiny, budget=500, reserve=64, fold=policy)
    with pytest.raises(briefing.BriefingError, match="keep ratio"):
        briefing.FoldPolicy(keep=1.0)
    with pytest.raises(briefing.BriefingError, match="guidance"):
        briefing.FoldPolicy(guidance="task")
    with pytest.raises(briefing.BriefingError, match="task_share"):
        briefing.MixGuidance(task_share=2.0)
    nofold = briefing.TrajectoryCache(tiny, budget=64, reserve=64, fold=None)
    with pytest.raises(briefing.BriefingError, match="past the cache budget"):
        nofold.extend("word " * 200)
    cache = briefing.TrajectoryCache(tiny, "some text", reserve=64, fold=policy)
    with pytest.raises(briefing.BriefingError, match="append-only"):
        cache.sync("other text")
    with pytest.raises(briefing.BriefingError, match="fold must be a briefing.FoldPolicy"):
        briefing.TrajectoryCache(tiny, fold="mix")
    with pytest.raises(briefing.BriefingError, match="token range"):
        cache.held(0, 10_000)


def test_a_bare_cache_folds_by_default_past_the_window(tiny, pieces):
    """No policy given: the default FoldPolicy, a budget of the window minus the reserve, and folds instead of
    an error; each cache holds its own copy of the policy."""
    cache = briefing.TrajectoryCache(tiny, chunk_tokens=64)
    assert cache.fold == briefing.FoldPolicy() and cache.fold is not briefing.TrajectoryCache(tiny).fold
    assert cache.budget == tiny.max_context - cache.reserve
    for piece in pieces:
        cache.extend(piece)
        if cache.tokens > 2 * tiny.max_context:
            break
    assert cache.folds and cache.length <= cache.budget and cache.tokens > 2 * tiny.max_context


def test_held_reports_which_tokens_the_folds_kept(tiny, pieces):
    """`origins` follows every kept key to its token; the sink and the recent window are held whole, a
    zero-keep fold holds nothing of its span, and a folded span holds about its keep share."""
    for keep in (0, 0.25):
        cache, rest = folding_cache(tiny, keep=keep), iter(pieces)
        cache.extend(next(rest))
        assert cache.held(0, cache.tokens) == 1.0 and torch.equal(cache.origins()[0, 0], torch.arange(cache.length))
        while not cache.folds:
            cache.extend(next(rest))
        first = cache.folds[0]
        o = cache.origins()                                                             # [L, H, length]
        assert o.shape == cache.positions().shape and bool((o.diff(dim=-1) > 0).all())  # kept in token order
        assert cache.held(0, 4) == 1.0 and cache.held(cache.tokens - 64, cache.tokens) == 1.0
        span = cache.held(4, first.span_stop)
        assert span == pytest.approx(first.kept / first.span, abs=1e-9)
        assert (span == 0.0) == (keep == 0)
        clone = cache.clone()
        assert torch.equal(clone.origins(), o) and clone.origins() is not o


def test_run_log_keeps_the_full_text_and_the_worker_call_event_reports_folds(tiny, essay, tmp_path):
    """A run past the worker's window: the trajectory and the JSONL log keep every event; the worker_call events
    say what the folds did and that each call forwarded only new tokens."""
    from agents import BriefedWorker, ScriptedPolicy, Step
    from rlm import RLM, read_log
    from tests.fakes import fake_factory

    from agents import TextRecall

    worker = BriefedWorker(lm=tiny, max_new_tokens=2, reserve=112, recall=TextRecall(tokens=24),
                           fold=briefing.FoldPolicy(recent=64, capture_stride=4))
    steps = [Step(code=f"print(context[{i * 1500}:{(i + 1) * 1500}])\nr = worker('What is this part about?')")
             for i in range(4)] + [Step(code="FINAL_VAR('r')")]
    log = tmp_path / "run.jsonl"
    res = RLM(ScriptedPolicy(steps), worker, sandbox_factory=fake_factory, sandbox_config=None,
              log_path=str(log)).run("Summarise the essay.", essay[:6000])
    calls = res.worker_events()
    assert len(calls) == 4 and all(c.answer is not None for c in calls)
    stats = [c.result.briefing for c in calls]   # the worker's own record, embedded in the event
    assert any(b.folds for b in stats)
    fold = next(f for b in stats for f in b.folds)
    assert fold.kept < fold.span and fold.guidance and fold.time_s > 0
    cache = worker._caches[0]
    # every trajectory token forwarded once in all: the calls' counts add up to the text's tokens (a seam re-cut
    # forwards a token or two again)
    assert cache.tokens <= sum(b.prefilled_tokens for b in stats) <= cache.tokens + 2 * len(calls)
    assert all(b.cache_positions <= cache.budget for b in stats) and cache.tokens > cache.budget
    assert essay[4000:4500] in res.trajectory  # nothing the user gave is lost: only the cache is compacted
    logged = [e for e in read_log(log) if e.type == "worker_call"]
    assert [e.result for e in logged] == [c.result for c in calls]   # the log holds the same typed record
    assert any(b.recalled_tokens for b in stats) and all(b.recalled_tokens <= 24 for b in stats)


@pytest.mark.parametrize(("kept", "old", "old_tokens", "new"), [(10, 0, 0, 50), (10, 20, 100, 30), (10, 4, 1000, 30),
                                                                 (10, 30, 10, 2), (0, 5, 50, 5), (9, 9, 1, 1)])
def test_split_kept_stays_within_both_parts(kept, old, old_tokens, new):
    from briefing.fold import split_kept

    t_head = split_kept(kept, old, old_tokens, new)
    assert max(0, kept - new) <= t_head <= min(old, kept)
    if old and kept - new <= round(kept * old_tokens / (old_tokens + new)) <= min(old, kept):
        assert t_head == round(kept * old_tokens / (old_tokens + new))  # the proportional split where it fits


@pytest.mark.parametrize("share", ["uniform", "recency"])
def test_second_fold_splits_by_tokens_under_the_uniform_share(tiny, pieces, share):
    """After two folds, the kept keys whose token came from the first fold's span are exactly the old part's
    share: kept * (tokens the first fold stood for) / (those + the new span), per layer and KV head."""
    from briefing.fold import split_kept

    policy = briefing.FoldPolicy(keep=0.25, sink=4, recent=64, capture_stride=4, share=share)
    cache, rest = briefing.TrajectoryCache(tiny, chunk_tokens=64, budget=256, reserve=64, fold=policy), iter(pieces)
    while len(cache.folds) < 2:
        cache.extend(next(rest))
    first, second = cache.folds
    assert len(cache.folds) == 2 and cache.folded_tokens == first.span + second.span - first.kept
    old = (cache.origins() < first.span_stop).sum(-1) - first.span_start           # [L, H] kept from fold 1's span
    want = split_kept(second.kept, first.kept, first.span, second.span - first.kept)
    if share == "uniform":
        assert bool((old == want).all())
    else:  # scores alone decide: the old part's count varies by head
        assert int(old.min()) >= 0 and int(old.max()) <= first.kept
    with pytest.raises(briefing.BriefingError, match="share must be one of"):
        briefing.FoldPolicy(share="newest")


def test_a_failed_fold_breaks_only_that_cache_and_the_worker_rebuilds(tiny, pieces, monkeypatch):
    """An extend that fails half-way leaves text and ids disagreeing: the cache says so on every later use, and a
    BriefedWorker drops it and rebuilds a cache from the trajectory text (correct, only slower)."""
    import briefing.trajectory as trajectory
    from agents import BriefedWorker

    worker = BriefedWorker(lm=tiny, max_new_tokens=2, reserve=112, recall=None,
                           fold=briefing.FoldPolicy(recent=64, capture_stride=4))
    text = "".join(pieces[:12])
    worker.answer("What is this about?", text[:400])
    real = trajectory.fold
    monkeypatch.setattr(trajectory, "fold", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("LAPACK said no")))
    with pytest.raises(RuntimeError, match="LAPACK"):
        worker.answer("What is this about?", text)
    broken = worker._caches[-1]
    assert broken.broken and "LAPACK" in broken.broken
    with pytest.raises(briefing.BriefingError, match="unusable"):
        broken.extend(" more")
    monkeypatch.setattr(trajectory, "fold", real)
    ans = worker.answer("What is this about?", text + " And then.")
    assert broken not in worker._caches and ans.briefing.folds and not worker._caches[-1].broken


def test_solve_values_returns_nan_only_for_a_non_finite_block():
    from briefing.matching import solve_values

    g = torch.Generator().manual_seed(0)
    X = torch.rand(3, 4, 6, generator=g)                                              # [B, m, t]
    Y, V = torch.randn(3, 4, 5, generator=g), torch.randn(3, 6, 5, generator=g)
    X[1, 0, 0] = float("nan")
    C2 = solve_values(X, Y, V, 1e-2)                                                  # [B, t, d]
    assert torch.isnan(C2[1]).all() and torch.isfinite(C2[0]).all() and torch.isfinite(C2[2]).all()
    assert torch.allclose(C2[0], solve_values(X[:1], Y[:1], V[:1], 1e-2)[0])


def test_solve_values_matches_the_normal_equations():
    from briefing.matching import solve_values

    g = torch.Generator().manual_seed(1)
    X = torch.rand(2, 7, 9, generator=g, dtype=torch.float64)                          # [B, m, t]
    Y = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)                         # [B, m, d]
    V = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)                         # [B, t, d]
    gram = X @ X.transpose(-1, -2)                                                     # [B, m, m]
    lam = 1e-2 * gram.diagonal(dim1=-2, dim2=-1).mean(-1)                              # [B]
    want = V + X.transpose(-1, -2) @ torch.linalg.inv(gram + lam[:, None, None] * torch.eye(7, dtype=X.dtype)) @ (
        Y - X @ V)                                                                     # [B, t, d]
    assert torch.allclose(solve_values(X, Y, V, 1e-2), want, atol=1e-9)


def test_solve_values_does_not_hang_with_threads_after_a_matmul():
    """MKL's batched LU (torch.linalg.solve) hung here once a matmul had started MKL's threads and torch ran two:
    the value fit of every fold with about 192 queries. Cholesky does not."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); a = torch.randn(1000, 1000); a @ a\n"
            "from briefing.matching import solve_values\n"
            "X = torch.rand(30, 192, 418); Y = torch.randn(30, 192, 64); V = torch.randn(30, 418, 64)\n"
            "assert torch.isfinite(solve_values(X, Y, V, 1e-2)).all()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_clone_with_a_new_budget_takes_the_recent_window_a_new_cache_of_that_budget_would():
    """A branch with another budget folds as a new cache of that budget would: a fold policy with no recent window
    (None) takes half the NEW budget, not the original's (which a smaller budget could not even hold with its
    reserve); an explicit recent window is kept."""
    tiny = tiny_model("llama-gqa")
    cache = briefing.TrajectoryCache(tiny, budget=400, reserve=40, fold=briefing.FoldPolicy())
    assert cache.recent == 200
    assert cache.clone(budget=240).recent == 120
    assert cache.clone(fold=briefing.FoldPolicy(), budget=240).recent == 120
    assert cache.clone(fold=briefing.FoldPolicy(recent=64), budget=240).recent == 64
    assert cache.clone(reserve=60).recent == 200   # the budget unchanged: the window too
