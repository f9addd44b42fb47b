"""The query-agnostic importance score (briefing.importance, issue 28): KVzip's reconstruction score computed once
per appended chunk, equal to a direct reconstruction pass; kept through folds and re-bases; offered to selectors."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import briefing
from briefing import kv
from briefing.attention import BiasState
from briefing.context import run_model
from briefing.importance import PREVIOUS_TOKENS, REPEAT_NEXT, SINKS
from briefing.selection import keep_count
from briefing.trajectory import IMPORTANCE_WINDOW
from tests.tiny import tiny_model

TEXT = "".join(f"Entry {i}: the courier left parcel {i * 37 % 101} at the blue door before noon. " for i in range(12))
PROMPT = " Question: where was parcel 74 left? Answer:"


def reference(lm, ids: list[int], start: int, stop: int, window: int, windowed: bool = True) -> torch.Tensor:
    """KVzip's score of slots [start, stop) by hand, from one uncached forward of (ids[:stop] + the repeat prompt +
    the chunk again): [held layers, KVH, stop - start]. windowed (the cache's way): the repeat's tokens attend only
    to what the score's softmax sees (the sinks, the window up to the chunk's end, the repeat so far); else to all
    of ids[:stop] (KVzip's own forward)."""
    from briefing.context import run_rows

    repeat = lm.encode(REPEAT_NEXT) + ids[start - PREVIOUS_TOKENS:start] + lm.encode("\n") + ids[start:stop]
    fresh = lm.new_cache()
    state = BiasState(capture=True)
    r, g, c = len(repeat), lm.group, stop - start
    context = max(SINKS, min(start, stop - window))
    n = stop + r
    mask = torch.ones(n, n, dtype=torch.bool).tril()                               # [n, n] causal
    if windowed:
        mask[stop:, SINKS:context] = False                                         # the repeat skips the rest
    run_rows(lm, fresh, torch.tensor([ids[:stop] + repeat]), torch.arange(n)[None], state,
             mask=mask[None, None])                                                # one uncached forward
    out = []
    for layer in lm.held_layers:
        q = state.queries[layer][0, :, -r:].float()                                # [heads, r, d]
        k = fresh.layers[layer].keys[0].float()                                    # [KVH, N, d]
        sub = torch.cat([k[:, :SINKS], k[:, context:stop], k[:, -r:]], dim=1)      # [KVH, s + w + r, d]
        q = q.reshape(lm.kv_heads, g, r, -1)                                       # [KVH, g, r, d]
        logits = q @ sub.transpose(-1, -2)[:, None] * lm.scaling                   # [KVH, g, r, s + w + r]
        causal = torch.ones(r, r, dtype=torch.bool).triu(1)
        w = SINKS + stop - context
        logits[..., w:] = logits[..., w:].masked_fill(causal, float("-inf"))
        out.append(torch.softmax(logits, -1)[..., w - c:w].amax(dim=(1, 2)))       # [KVH, c]
    return torch.stack(out)


def test_the_score_equals_a_direct_reconstruction_pass(tok):
    """The stored score is the reconstruction score computed by hand: for a full 48-token chunk, and for a short
    append after it (its softmax reaches back over the 48-token window), and at the default window; its repeat
    attends to what the score's softmax sees. KVzip's own forward (the repeat attending to the whole cache) is kept
    as the reference that the windowed one is measured against (`benchmarks.importance_check`)."""
    from briefing.importance import reconstruction_scores

    lm = tiny_model("qwen3-gqa", tok)
    cache = briefing.TrajectoryCache(lm, TEXT, chunk_tokens=48, fold=None, importance=True, importance_window=48)
    assert cache.store.importance.shape == (len(lm.held_layers), lm.kv_heads, cache.length)
    assert (cache.store.importance[..., 48:96] - reference(lm, cache.ids, 48, 96, 48)).abs().max() < 1e-5
    wide = briefing.TrajectoryCache(lm, TEXT, chunk_tokens=48, fold=None, importance=True)   # the default window
    want = reference(lm, wide.ids, 48, 96, IMPORTANCE_WINDOW)                     # reaches back to the sinks
    assert (wide.store.importance[..., 48:96] - want).abs().max() < 1e-5
    n = cache.extend(" A short note.")                                            # tokens prefilled (seam re-cut)
    start = cache.length - n
    assert 0 < n < 48
    got = cache.store.importance[..., start:cache.length]
    assert (got - reference(lm, cache.ids, start, cache.length, 48)).abs().max() < 1e-5
    assert cache.importance_s > 0
    full = reconstruction_scores(lm, cache.store, start, cache.length, cache.ids[start:], cache.ids[:start],
                                 cache.position, 48, windowed=False)               # [Lh, H, n]
    want = reference(lm, cache.ids, start, cache.length, 48, windowed=False)
    assert (full - want).abs().max() < 1e-5 and (full - got).abs().max() > 1e-4   # they differ past the window


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-hybrid"])
def test_the_repeat_stops_after_the_last_held_layer_and_leaves_the_store_as_it_was(tok, family):
    """Nothing reads the reconstruction forward past its last held layer's score: the last layer's MLP and the final
    norm never run (the first layer's MLP does), for the windowed repeat and for KVzip's own over the whole cache,
    whose store is rolled back to what it held (Gemma 3's sliding layers below the held one included); the scores
    are still the direct pass's (the hand reference is full attention: Llama)."""
    from briefing.archive import decoder_layers
    from briefing.importance import reconstruction_scores

    lm = tiny_model(family, tok)
    cache = briefing.TrajectoryCache(lm, TEXT, chunk_tokens=48, fold=None)
    blocks = decoder_layers(lm)
    assert lm.held_layers[-1] == len(blocks) - 1
    calls = {"first": 0, "last": 0, "norm": 0}
    hooks = [m.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, m in (("first", blocks[0].mlp), ("last", blocks[-1].mlp), ("norm", lm.model.model.norm))]
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.store.kv.layers]
    start = cache.length - 40                                                     # the last 40 slots
    try:
        got = {windowed: reconstruction_scores(lm, cache.store, start, cache.length, cache.ids[start:],
                                               cache.ids[:start], cache.position, 48, windowed=windowed)
               for windowed in (True, False)}                                      # [Lh, H, 40] each
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"first": 2, "last": 0, "norm": 0}
    for windowed, scores in got.items():
        assert scores.shape == (len(lm.held_layers), lm.kv_heads, 40) and torch.isfinite(scores).all()
        if family == "llama-gqa":
            assert (scores - reference(lm, cache.ids, start, cache.length, 48, windowed=windowed)).abs().max() < 1e-5
    for (k, v), layer in zip(before, cache.store.kv.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)


def test_the_score_survives_folds_and_rebases(tok):
    """A folded key keeps the score it had when its token was appended (the origins say which token it is)."""
    lm = tiny_model("llama-gqa", tok, max_positions=512)
    cache = briefing.TrajectoryCache(lm, chunk_tokens=64, budget=256, reserve=64,
                                     fold=briefing.FoldPolicy(recent=64, capture_stride=4), importance=True)
    by_token: dict[int, torch.Tensor] = {}
    pieces = [p + ". " for p in TEXT.split(". ") if p]
    while cache.rebases < 1 or len(cache.folds) < 2:
        for piece in pieces:
            if not cache.folds:   # before the first fold slot == token: record every token's score
                by_token = {i: cache.store.importance[..., i].clone() for i in range(cache.length)}
            cache.extend(piece)
        cache.observe(PROMPT)
    imp, origin = cache.store.importance, cache.store.origins()                      # [Lh, H, P]
    assert imp.shape == origin.shape
    checked = 0
    for layer in range(imp.shape[0]):
        for head in range(imp.shape[1]):
            for slot in range(imp.shape[2]):
                token = int(origin[layer, head, slot])
                if token in by_token:
                    assert imp[layer, head, slot] == by_token[token][layer, head]
                    checked += 1
    assert checked > 0
    assert (imp[..., -8:] > 0).all()   # new text is scored after the folds and re-bases too


@dataclass(kw_only=True)
class ReconstructionOnly(briefing.ScoredSelector):
    """A user's selector that ranks by the importance alone."""

    def score(self, scores: briefing.Scores) -> briefing.Scores:
        imp = scores.importance
        return briefing.Scores(per_head=imp, shared=imp.mean(dim=(0, 1)), keys=scores.keys, importance=imp)


def test_a_custom_selector_reads_the_score_and_agnostic_one_is_the_same_selection(tok):
    lm = tiny_model("llama-gqa", tok)
    cache = briefing.TrajectoryCache(lm, TEXT, fold=None, importance=True)
    imp = cache.store.importance
    mine = cache.compact(PROMPT, ReconstructionOnly(ratio=0.2, sinks=1, smooth_kernel=1, look_ahead=0))
    t = mine.positions.shape[-1]
    ranked = imp.clone()
    ranked[..., :1] = float("inf")
    assert torch.equal(mine.positions, ranked.topk(t, dim=-1).indices.sort(-1).values)
    built_in = cache.compact(PROMPT, briefing.TopK(ratio=0.2, sinks=1, agnostic=1.0))
    assert torch.equal(built_in.positions, mine.positions)
    half = cache.compact(PROMPT, briefing.TopK(ratio=0.2, sinks=1, agnostic=0.5))
    best = ranked.topk(round(0.5 * t), dim=-1).indices                             # the importance's half
    assert all(set(best[i, h].tolist()) <= set(half.positions[i, h].tolist())
               for i in range(best.shape[0]) for h in range(best.shape[1]))
    # a cache built without the score (the default) gives selectors none, and agnostic is then ignored
    plain = briefing.TrajectoryCache(lm, TEXT, fold=None)
    assert plain.store.importance is None
    assert torch.equal(plain.compact(PROMPT, briefing.TopK(ratio=0.2, agnostic=0.5)).positions,
                       plain.compact(PROMPT, briefing.TopK(ratio=0.2)).positions)
    assert kv.cache_length(plain.kv) == kv.cache_length(cache.kv)


def test_a_narrower_window_scores_each_chunk_in_pieces(tok):
    """importance_window w below the prefill chunk: each chunk is scored in pieces of w, as a cache prefilling in
    chunks of w scores it (the same repeats and softmaxes; the prefill differs by rounding only); it changes the
    score; a bad window is refused by name."""
    lm = tiny_model("llama-gqa", tok)
    whole = briefing.TrajectoryCache(lm, TEXT, 64, fold=None, importance=True, importance_window=None)
    pieces = briefing.TrajectoryCache(lm, TEXT, 64, fold=None, importance=True, importance_window=16)
    small = briefing.TrajectoryCache(lm, TEXT, 16, fold=None, importance=True, importance_window=None)
    assert pieces.length == small.length > 64 and pieces.importance_window == 16
    torch.testing.assert_close(pieces.store.importance, small.store.importance, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(pieces.store.importance, whole.store.importance, atol=1e-3)
    chunk = briefing.TrajectoryCache(lm, TEXT, 64, fold=None, importance=True, importance_window=64)
    torch.testing.assert_close(chunk.store.importance, whole.store.importance, atol=0, rtol=0)   # None: the chunk
    default = briefing.TrajectoryCache(lm, TEXT, 64, fold=None, importance=True)
    assert default.importance_window == IMPORTANCE_WINDOW == 512
    wide = briefing.TrajectoryCache(lm, TEXT, 64, fold=None, importance=True, importance_window=512)
    torch.testing.assert_close(default.store.importance, wide.store.importance, atol=0, rtol=0)
    assert not torch.allclose(default.store.importance, whole.store.importance, atol=1e-3)   # a wider softmax
    for bad in (0, -3, 2.5, "16"):
        with pytest.raises(briefing.BriefingError, match="importance_window"):
            briefing.TrajectoryCache(lm, fold=None, importance=True, importance_window=bad)


def test_the_benchmarks_window_sets_the_reconstruction_window(tok):
    """selection_bench's --importance-window: the cache scores every token in pieces of that window (the prefill chunk
    is the cache's own); None keeps the cache's default window."""
    from benchmarks.selection_bench import scored_cache

    lm = tiny_model("llama-gqa", tok)
    small = scored_cache(lm, TEXT, 16)
    assert small.importance_window == 16 and small.store.importance.shape[-1] == small.length > 16
    direct = briefing.TrajectoryCache(lm, TEXT, fold=None, importance=True, importance_window=16)
    assert small.chunk_tokens == direct.chunk_tokens
    torch.testing.assert_close(small.store.importance, direct.store.importance, atol=0, rtol=0)
    assert scored_cache(lm, TEXT).importance_window == IMPORTANCE_WINDOW


def test_the_worker_scores_only_where_a_selector_reads_the_score(tok):
    from agents import BriefedWorker

    lm = tiny_model("llama-gqa", tok)
    plain = BriefedWorker(lm=lm, max_new_tokens=2, reserve=64)
    plain.answer("What?", TEXT)
    mixed = BriefedWorker(lm=lm, max_new_tokens=2, reserve=64, selector=briefing.AttentionMatching(agnostic=0.5))
    mixed.answer("What?", TEXT)
    assert plain._caches[0].store.importance is None and mixed._caches[0].store.importance is not None


def test_global_allocation_keeps_the_uniform_total_with_masked_padding(tok):
    """allocation="global" (KVzip's allocation): a different count per (layer, KV head), the same total as the uniform
    selection; padded slots get no attention weight (the biased attention equals a softmax over each head's real kept
    slots alone) and the fit leaves them alone."""
    from types import SimpleNamespace

    from briefing.attention import active, briefing_attention
    from briefing.compaction import reduced
    from briefing.matching import MASKED_BETA, PAD, fit

    lm = tiny_model("llama-gqa", tok)
    cache = briefing.TrajectoryCache(lm, TEXT, fold=None, importance=True)
    L, H, T = cache.store.importance.shape
    uniform = cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.2))
    t = uniform.positions.shape[-1]
    for sel in (briefing.AttentionMatching(ratio=0.2, allocation="global"),
                briefing.TopK(ratio=0.2, allocation="global", agnostic=1.0, sinks=4, allocation_scale="layer"),
                briefing.AttentionMatching(ratio=0.2, allocation="global", agnostic=0.5, head_min=0.5, head_max=1.5)):
        ctx = cache.compact(PROMPT, sel)
        idx = ctx.positions                                                        # [L, H, t_max]
        counts = (idx >= 0).sum(-1)                                                # [L, H]
        assert int(counts.sum()) == L * H * t and ctx.stats.kept == t
        assert idx.shape[-1] == int(counts.max()) > t and int(counts.min()) < t   # the counts differ between heads
        assert all(idx[i, h, :counts[i, h]].diff().gt(0).all() and (idx[i, h, counts[i, h]:] == PAD).all()
                   for i in range(L) for h in range(H))                           # sorted, right-padded
        assert (idx[..., :sel.sinks] == torch.arange(sel.sinks)).all()            # every row keeps the sinks
        if sel.head_max is not None:
            assert int(counts.min()) >= t // 2 and int(counts.max()) <= int(1.5 * t)
        assert torch.isfinite(briefing.token_logprobs(ctx, " the blue door")[1]).all()

    # the importance decides the counts: a head whose importance is spread over more positions keeps more of them
    imp = torch.full((L, H, T), 1e-3)
    imp[0, 0, : T // 2] = 1.0
    imp[-1, -1, : T // 10] = 1.0
    imp[..., 0] = 1.0                                                              # the sink
    scores = briefing.Scores(per_head=torch.rand(L, H, T), shared=torch.rand(T), importance=imp)
    idx = briefing.TopK(ratio=0.2, allocation="global", agnostic=1.0, look_ahead=0).select(L, H, T, scores)
    counts = (idx >= 0).sum(-1)                                                    # [L, H]
    t = keep_count(0.2, None, T)
    assert int(counts.sum()) == L * H * t and counts[0, 0] >= T // 2 > t and T // 10 <= counts[-1, -1] < t
    assert idx.device == imp.device

    # masked slots get zero attention weight: the compacted attention equals one without those slots, per head
    sel = briefing.AttentionMatching(ratio=0.2, allocation="global")
    ctx = cache.compact(PROMPT, sel)
    idx = ctx.positions
    K, V = cache.store.held_kv(0, T)                                               # [L, H, T, d]
    Q = torch.randn(L, H, 6, K.shape[-1])                                          # [L, H, m, d] guidance queries
    fitted = fit(Q, K, V, idx, lm.scaling, ridge=1e-2, beta_max=8.0, nnls_iters=15)
    red = reduced(idx, K, V, fitted, None)
    assert torch.isfinite(fitted.beta).all() and torch.isfinite(fitted.values).all()
    assert (red.beta[idx < 0] == MASKED_BETA).all() and (red.values[idx < 0] == 0).all()
    assert (red.keys[idx < 0] == 0).all()
    group, heads = lm.group, lm.group * H
    query = torch.randn(1, heads, 3, K.shape[-1])                                  # [1, heads, q, d]
    for layer in range(L):
        module = SimpleNamespace(layer_idx=layer, num_key_value_groups=group, is_causal=False)
        with active(briefing.attention.BiasState(beta=[red.beta[i] for i in range(L)])):
            out, _ = briefing_attention(module, query, red.keys[layer:layer + 1], red.values[layer:layer + 1], None,
                                        scaling=lm.scaling)                        # [1, q, heads, d]
        for head in range(H):
            real = idx[layer, head] >= 0
            k, v = red.keys[layer, head, real], red.values[layer, head, real]      # [t_lh, d]
            q = query[0, head * group:(head + 1) * group]                          # [g, q, d]
            p = torch.softmax(q @ k.T * lm.scaling + red.beta[layer, head, real], -1)   # [g, q, t_lh]
            want = (p @ v).transpose(0, 1)                                         # [q, g, d]
            got = out[0, :, head * group:(head + 1) * group]                       # [q, g, d]
            assert (got - want).abs().max() < 1e-5

    # the fit ignores masked slots: the same fit on a row's real slots alone gives the same beta and values
    i, h = divmod(int(((idx >= 0).sum(-1)).argmin()), H)                           # a row with padding
    real = idx[i, h] >= 0
    alone = fit(Q[i:i + 1, h:h + 1], K[i:i + 1, h:h + 1], V[i:i + 1, h:h + 1], idx[i:i + 1, h:h + 1, real],
                lm.scaling, ridge=1e-2, beta_max=8.0, nnls_iters=15)
    assert (alone.beta[0, 0] - fitted.beta[i, h, real]).abs().max() < 1e-4
    assert (alone.values[0, 0] - fitted.values[i, h, real]).abs().max() < 1e-4

    # solved by width (rows sorted into pieces, each cut to its widest real row) = each row solved alone on its real
    # slots; rows of very different widths over several layer chunks, so pieces are cut and solved apart
    from briefing.matching import PAD, fit_problem, solve_fits

    gen = torch.Generator().manual_seed(0)
    L, H, T, d = 9, 2, 160, 8
    Q, K, V = (torch.randn(L, H, n, d, generator=gen) for n in (12, T, T))        # [L, H, *, d]
    widths = 3 + (torch.rand(L, H, generator=gen) ** 3 * (T - 3)).long()           # [L, H] mostly narrow
    widths[0, 0] = T
    idx = torch.full((L, H, T), PAD)                                               # [L, H, T] right-padded rows
    for i in range(L):
        for h in range(H):
            idx[i, h, :widths[i, h]] = torch.randperm(T, generator=gen)[:widths[i, h]].sort().values
    problem = fit_problem(Q, K, V, idx, 0.35)
    assert problem.order is not None
    ordered = widths.flatten()[problem.order]                                      # the counts in the rows' order
    assert (ordered.diff() >= 0).all()
    assert [a.shape[-1] for a in problem.A] == [int(ordered[g:g + H].max()) for g in range(0, L * H, H)]
    assert len({a.shape[-1] for a in problem.A}) > 1                               # pieces of different widths
    options = dict(ridge=1e-2, beta_max=8.0, nnls_iters=15)
    ragged = solve_fits([problem], **options)[0]
    assert ragged.beta.shape == (L, H, T) and ragged.values.shape == (L, H, T, d)
    errors = []
    for i in range(L):
        for h in range(H):
            n = int(widths[i, h])
            alone = solve_fits([fit_problem(Q[i:i + 1, h:h + 1], K[i:i + 1, h:h + 1], V[i:i + 1, h:h + 1],
                                            idx[i:i + 1, h:h + 1, :n], 0.35)], **options)[0]
            assert (alone.beta[0, 0] - ragged.beta[i, h, :n]).abs().max() < 1e-4
            assert (alone.values[0, 0] - ragged.values[i, h, :n]).abs().max() < 1e-4
            assert (ragged.beta[i, h, n:] == 0).all() and (ragged.values[i, h, n:] == 0).all()
            errors.append(alone.error)
    assert abs(ragged.error - sum(errors) / len(errors)) < 1e-5


def test_a_global_allocation_context_holds_each_layer_at_its_own_width(tok):
    """The per-call context of a global allocation keeps each layer at its widest row (`compaction.by_layer`), not
    every layer at the widest row of all; that is exact: the prompt's logits, the answer's log-probabilities and
    batched decoding equal those over the context padded to one width."""
    from briefing.compaction import by_layer, context_cache, reduced
    from briefing.matching import fit

    lm = tiny_model("llama-gqa", tok)
    cache = briefing.TrajectoryCache(lm, TEXT, fold=None, importance=True)
    sel = briefing.AttentionMatching(ratio=0.2, allocation="global", agnostic=1.0, sinks=4, reuse_prompt_kv=False)
    ctx = cache.compact(PROMPT, sel)
    idx = ctx.positions                                                            # [L, H, t_max]
    widths = (idx >= 0).sum(-1).amax(-1)                                           # [L] each layer's widest row
    held = [ctx.kv.layers[i].keys.shape[-2] - len(ctx.prompt_ids) for i in cache.store.held]
    assert held == widths.tolist() and min(held) < idx.shape[-1] == max(held)     # layers differ, none padded past
    assert ctx.base_length == idx.shape[-1] + len(ctx.prompt_ids)

    # the same selection and fit, padded to one width as a [L, H, t_max, d] context: the same logits
    K, V = cache.store.held_kv(0, cache.length)                                    # [L, H, T, d]
    fitted = fit(ctx.queries, K, V, idx, lm.scaling, ridge=sel.fit.ridge, beta_max=sel.fit.beta_max,
                 nnls_iters=sel.fit.nnls_iters)
    red = reduced(idx, K, V, fitted, None)
    padded = context_cache(cache.store, red.keys, red.values, None)
    ids = lm.encode(PROMPT)
    want = run_model(lm, padded, ids, cache.position, BiasState(beta=cache.store.per_layer(red.beta)))  # [n, V]
    keys, values, beta = by_layer(idx, K, V, fitted, None)                         # per layer [H, t_l, *]
    assert [k.shape[-2] for k in keys] == widths.tolist()
    got = run_model(lm, context_cache(cache.store, keys, values, None), ids, cache.position,
                    BiasState(beta=cache.store.per_layer(beta)))
    assert (got - want).abs().max() < 1e-4
    assert (ctx.last_logits - want[-1]).abs().max() < 1e-3

    # decoding: one context at a time, and two contexts of different widths per layer as one batch
    other = cache.compact(" Question: what did the courier leave? Answer:", sel)
    greedy = briefing.GenerationConfig(max_new_tokens=6, temperature=0.0)
    one = [briefing.generate(c, greedy).token_ids for c in (ctx, other)]
    assert [r.token_ids for r in briefing.generate_batch([ctx, other], greedy)] == one
    lp = briefing.token_logprobs(ctx, " the blue door")[1]
    assert torch.isfinite(lp).all()


def test_hybrid_allocation_keeps_each_rows_guidance_share_and_the_importance_overall():
    """allocation="hybrid": every (layer, KV head) keeps its own (1 - a) t best by the guidance (what the uniform
    selection keeps first), the importance's best entries of all rows fill the rest of L H t; with no importance in
    the scores it is the uniform selection."""
    from briefing.matching import PAD
    from briefing.selection.base import top_positions

    torch.manual_seed(0)
    L, H, T = 3, 2, 60
    guidance = torch.rand(L, H, T)
    imp = 1e-3 * (1 + torch.rand(L, H, T))                                         # distinct: no ties decide a row
    imp[1, 0] = 0.0
    imp[1, 0, 20:50] = 1.0                                                         # one row's importance stands out
    scores = briefing.Scores(per_head=guidance, shared=guidance.mean((0, 1)), importance=imp)
    sel = briefing.TopK(ratio=0.2, allocation="hybrid", agnostic=0.75, sinks=2, look_ahead=0, smooth_kernel=1)
    idx = sel.select(L, H, T, scores)                                              # [L, H, t_max]
    t = keep_count(0.2, None, T)                                                   # 12
    g = t - round(0.75 * t)                                                        # 3 by the guidance, sinks included
    counts = (idx != PAD).sum(-1)                                                  # [L, H]
    assert int(counts.sum()) == L * H * t
    own = top_positions(guidance, g, 2)                                            # [L, H, 3] each row's guidance best
    assert all(set(own[i, h].tolist()) <= set(idx[i, h].tolist()) for i in range(L) for h in range(H))
    # the importance's 54 entries go first to the 30 positions where it stands out (those not already the row's own),
    # the other 24 to the other rows' best importance; row (1, 0) gets nothing more (its importance is 0 elsewhere)
    mine = len([p for p in own[1, 0].tolist() if 20 <= p < 50])
    assert int(counts[1, 0]) == g + 30 - mine and set(range(20, 50)) <= set(idx[1, 0].tolist())
    assert (counts >= g).all()
    plain = briefing.Scores(per_head=guidance, shared=guidance.mean((0, 1)))
    uniform = briefing.TopK(ratio=0.2, sinks=2, look_ahead=0, smooth_kernel=1).select(L, H, T, plain)
    assert torch.equal(sel.select(L, H, T, plain), uniform)


def test_global_allocation_options_are_checked(tok):
    import pytest

    with pytest.raises(briefing.BriefingError, match="allocation must be one of uniform, global"):
        briefing.AttentionMatching(allocation="ragged")
    with pytest.raises(briefing.BriefingError, match="needs per_head=True"):
        briefing.TopK(allocation="global", per_head=False)
    with pytest.raises(briefing.BriefingError, match="head_max must be"):
        briefing.TopK(allocation="global", head_max=0.5)
    with pytest.raises(briefing.BriefingError, match="allocation_scale must be one of"):
        briefing.TopK(allocation="global", allocation_scale="max")
    with pytest.raises(briefing.BriefingError, match="a fold keeps the same count"):
        briefing.FoldPolicy(selector=briefing.AttentionMatching(allocation="global"))
    with pytest.raises(briefing.BriefingError, match="a fold keeps the same count"):
        briefing.FoldPolicy(selector=briefing.AttentionMatching(allocation="hybrid", agnostic=0.5))


def test_the_fused_normaliser_equals_the_blocked_one():
    """`row_lse` (torch's fused CPU kernel) equals the portable blocks and a direct logsumexp, with a bias and with
    the causal mask, over more rows than a block."""
    from briefing.importance import ROW_CHUNK, lse_blocked, row_lse
    torch.manual_seed(0)
    H, g, r, d = 2, 3, ROW_CHUNK + 37, 16
    q, k, own = torch.randn(H, g, r, d), torch.randn(H, 50, d), torch.randn(H, r, d)
    bias = torch.randn(H, 50)
    direct = torch.logsumexp((q @ k.transpose(-1, -2)[:, None]) * 0.25 + bias[:, None, None], dim=-1)
    logits = (q @ own.transpose(-1, -2)[:, None]) * 0.25
    causal = torch.logsumexp(logits.masked_fill(torch.ones(r, r, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
    for fn in (row_lse, lse_blocked):
        assert (fn(q, k, 0.25, bias, causal=False) - direct).abs().max() < 1e-4
        assert (fn(q, own, 0.25, None, causal=True) - causal).abs().max() < 1e-4


def test_the_split_attention_equals_one_masked_softmax():
    """`attend_split` (a reconstruction's forward on a CPU: the earlier keys and the new tokens' own keys as two
    unmasked flash calls, merged by their normalisers) gives the output and the normaliser of one softmax over every
    key, the new tokens causal among themselves, with grouped KV heads and a bias on the first earlier keys."""
    from briefing.attention import attend_split
    torch.manual_seed(0)
    kv_heads, g, r, p, d, scale = 2, 3, 37, 50, 16, 0.25
    q = torch.randn(1, kv_heads * g, r, d)
    k, v = torch.randn(1, kv_heads, p + r, d), torch.randn(1, kv_heads, p + r, d)
    beta = torch.randn(kv_heads, 20)
    out, lse = attend_split(q, k, v, scale, beta)                                   # [1, r, H, d], [1, H, r]
    logits = q @ k.repeat_interleave(g, dim=1).transpose(-1, -2) * scale            # [1, H, r, p + r]
    logits[..., :20] += beta.repeat_interleave(g, dim=0)[None, :, None]
    logits[..., p:] = logits[..., p:].masked_fill(torch.ones(r, r, dtype=torch.bool).triu(1), float("-inf"))
    want = torch.softmax(logits, -1) @ v.repeat_interleave(g, dim=1)               # [1, H, r, d]
    assert (out - want.transpose(1, 2)).abs().max() < 1e-5
    assert (lse - torch.logsumexp(logits, -1)).abs().max() < 1e-4


def test_the_score_without_the_fused_kernel_is_the_same(tok, monkeypatch):
    """Where torch's CPU flash kernel does not serve (another device), the forward attends as usual and the score
    computes the softmax's normaliser itself: the same importance, over a folded cache whose stored beta the
    subsample reaches."""
    from briefing import attention, importance
    lm = tiny_model("llama-gqa", tok, max_positions=512)
    cache = briefing.TrajectoryCache(lm, chunk_tokens=64, budget=256, reserve=64,
                                     fold=briefing.FoldPolicy(recent=64, capture_stride=4))
    while not cache.folds:
        cache.extend(TEXT)
    n = cache.extend(" A short note on parcel 74.")                                 # tokens prefilled
    start = cache.length - n
    assert cache.store.attention_bias()[0].shape[-1] > cache.length - 160          # the window reaches the beta
    args = (lm, cache.store, start, cache.length, cache.ids[-n:], cache.ids[:-n], cache.position, 160)
    fused = importance.reconstruction_scores(*args)                                 # [Lh, H, n]
    monkeypatch.setattr(attention, "flash_cpu", lambda x: None)
    monkeypatch.setattr(importance, "flash_cpu", lambda x: None)
    apart = importance.reconstruction_scores(*args)
    assert (fused - apart).abs().max() < 1e-5 and fused.abs().max() > 1e-4


@pytest.mark.parametrize("given", [False, True])
def test_a_layers_score_is_its_softmax_with_a_bias_on_every_column(given):
    """`score_layer` on made-up tensors: the most over the repeat's rows of one softmax over the sinks, the window and
    the repeat's own keys (causal), a stored bias on every slot the softmax sees (the chunk's columns too), with the
    normaliser computed apart or given (as the fused forward gives it)."""
    from briefing.importance import Reconstruction, score_layer
    torch.manual_seed(1)
    kv_heads, g, r, d, scale = 2, 3, 9, 8, 0.3
    rec = Reconstruction(layers={0}, start=14, stop=30, context=10, sinks=2)
    query, key = torch.randn(1, kv_heads * g, r, d), torch.randn(1, kv_heads, 30 + r, d)
    beta = torch.randn(kv_heads, 30)                                                # on every stored slot
    seen = torch.cat([torch.arange(2), torch.arange(10, 30), torch.arange(30, 30 + r)])   # the softmax's keys
    logits = query[0].reshape(kv_heads, g, r, d) @ key[0][:, seen].transpose(-1, -2)[:, None] * scale
    logits[..., :22] += torch.cat([beta[:, :2], beta[:, 10:30]], dim=1)[:, None, None]
    logits[..., 22:] = logits[..., 22:].masked_fill(torch.ones(r, r, dtype=torch.bool).triu(1), float("-inf"))
    want = torch.softmax(logits, -1)[..., 6:22].amax(dim=(1, 2))                   # [KVH, 16]: slots 14..29
    lse = torch.logsumexp(logits, -1).reshape(1, kv_heads * g, r) if given else None
    score_layer(rec, 0, query, key, scale, beta, lse)
    assert (rec.scores[0] - want).abs().max() < 1e-5


def test_global_positions_take_the_best_overall_within_each_rows_floor_and_cap():
    """`global_positions`: the `total` best entries of all rows together, each row's sinks among them; with no floor
    and no cap (the hybrid's default) nothing else, and with them every row keeps between its floor and its cap."""
    from briefing.selection.base import PAD, global_positions
    torch.manual_seed(2)
    key = torch.rand(3, 2, 50)
    key[0] *= 3                                                                    # layer 0 outranks the others
    kept = global_positions(key.clone(), 60, 0, 50, 2)                             # [3, 2, w], PAD-padded
    got = {(i, h, int(p)) for i in range(3) for h in range(2) for p in kept[i, h] if p != PAD}
    forced = key.clone()
    forced[..., :2] = float("inf")
    flat = forced.reshape(-1).topk(60).indices
    assert got == {(int(f) // 100, int(f) // 50 % 2, int(f) % 50) for f in flat}
    assert all(kept[i, h, :2].tolist() == [0, 1] for i in range(3) for h in range(2))
    counts = (global_positions(key.clone(), 60, 5, 12, 2) != PAD).sum(-1)          # [3, 2]
    assert int(counts.sum()) == 60 and int(counts.min()) >= 5 and int(counts.max()) <= 12
    assert int((kept != PAD).sum(-1).max()) > 12                                   # the cap is what held layer 0


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-hybrid"])
def test_importance_and_a_global_allocation_make_every_tensor_on_the_models_device(tok, family):
    """The model on the CPU, the default device "meta" (a tensor made without the model's device fails): the
    reconstruction pass over its subsample (a hybrid model's window layers beside it), a global allocation's
    per-layer context, one and batched decoding."""
    lm = tiny_model(family, tok)
    torch.set_default_device("meta")
    try:
        cache = briefing.TrajectoryCache(lm, TEXT, chunk_tokens=48, fold=None, importance=True)
        assert cache.store.importance.device.type == "cpu" and bool((cache.store.importance > 0).any())
        sel = briefing.AttentionMatching(ratio=0.2, allocation="global", agnostic=0.9, sinks=4, head_min=0.2)
        ctxs = [cache.compact(PROMPT, sel), cache.compact(" Question: who left the parcels? Answer:", sel)]
        greedy = briefing.GenerationConfig(max_new_tokens=3, temperature=0.0)
        one = [briefing.generate(c, greedy).token_ids for c in ctxs]
        assert [r.token_ids for r in briefing.generate_batch(ctxs, greedy)] == one
    finally:
        torch.set_default_device(None)
