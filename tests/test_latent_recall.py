"""The archive of a folding cache and latent recall (issue 29), on tiny random-weight models: what the folds compact
away is archived exactly, survives re-bases, is re-attached where a prefill would put it, stays within its byte
budget; `coverage` counts kept and recalled characters; a worker recalls through the archive."""
from __future__ import annotations

import functools
import json
import types

import pytest
import torch

import briefing
from agents import BriefedWorker
from agents.recall import LatentRecall, Recalled, TextRecall, _token_span, sentence_units
from agents.workers.local import Briefing
from briefing import kv, latent
from briefing.context import forward_with_bias
from tests.tiny import tiny_model, tiny_tokenizer

# latent recall by blocks (`LatentRecall(units="blocks")`): what most tests here pin down; the default ranks sentences
BlockRecall = functools.partial(LatentRecall, units="blocks")


def archiving_cache(lm, dtype="float32", budget_bytes=1 << 30, importance=False, token_states=True, **kw):
    """A small folding cache with an archive (no importance scoring unless asked: it doubles the prefills)."""
    policy = briefing.FoldPolicy(keep=0.25, sink=4, recent=64, capture_stride=4)
    archive = briefing.ArchivePolicy(dtype=dtype, block=16, budget_bytes=budget_bytes, token_states=token_states)
    return briefing.TrajectoryCache(lm, chunk_tokens=64, budget=256, reserve=64, fold=policy, importance=importance,
                                    archive=archive, **kw)


def fresh_layer0(lm, ids: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's keys and values [H, n, d] of `ids`, each prefilled alone at its position: layer 0's key of a token
    depends only on the token and its RoPE position, its value only on the token."""
    ks, vs = [], []
    for t, p in zip(ids, positions):
        c = lm.new_cache()
        forward_with_bias(lm, c, [t], p, None)
        k, v = kv.layer_kv(c)
        ks.append(k[0][0]), vs.append(v[0][0])
    return torch.cat(ks, -2), torch.cat(vs, -2)


def test_the_archive_keeps_every_folded_token_through_folds_and_rebases(tiny, pieces):
    """Every token a fold compacted is archived once, in order, with the keys and values it was read with; after
    re-bases, tokens re-attached after the cache carry exactly the keys a prefill at their new positions gives."""
    cache = archiving_cache(tiny)
    for piece in pieces:
        cache.extend(piece)
    arc = cache.archive
    assert cache.rebases >= 2 and len(cache.folds) >= 8
    a, z = arc.archived
    tail_first = int(cache.origins()[0, 0, cache.folded])
    assert a == 4 and z == tail_first   # from the sink to the unfolded tail, nothing missing
    assert [s.first for s in arc.segments[1:]] == [s.last for s in arc.segments[:-1]]
    assert arc.tokens == cache.tokens and int(arc.counts.sum()) == cache.tokens
    # blocks from the archive, from across its end into the unfolded tail, and from the tail alone
    ranges = [(20, 40), (z - 10, z + 6), (cache.tokens - 12, cache.tokens)]
    att = latent.attach(cache, ranges)
    toks = [cache.ids[t] for lo, hi in ranges for t in range(lo, hi)]
    assert att.origins.tolist() == [t for lo, hi in ranges for t in range(lo, hi)]
    want_k, want_v = fresh_layer0(tiny, toks, list(range(cache.position, cache.position + len(toks))))
    assert (att.keys[0] - want_k).abs().max() < 1e-4 and (att.values[0] - want_v).abs().max() < 1e-4
    # the archive is the cache's own: a clone folds on with its own copy and the original is left as it was
    other = cache.clone()
    other.extend(pieces[0])
    assert other.archive.tokens > arc.tokens == cache.tokens and other.archive.archived[0] == a


def test_int8_archive_is_a_quarter_and_close(tiny, pieces):
    full, small = archiving_cache(tiny), archiving_cache(tiny, dtype="int8")
    for piece in pieces[:20]:
        full.extend(piece)
        small.extend(piece)
    assert full.archive.archived == small.archive.archived != (0, 0)
    ratio = small.archive.nbytes() / full.archive.nbytes()
    assert 0.25 < ratio < 0.3   # int8 plus a float16 scale per vector of 16
    ranges = [(8, 60)]
    k0, v0, p0 = full.archive.fetch(full.store, ranges)
    k1, v1, p1 = small.archive.fetch(small.store, ranges)
    assert torch.equal(p0, p1) and k1.dtype == k0.dtype == torch.float32
    assert (k1 - k0).abs().max() <= k0.abs().amax(-1, keepdim=True).max() / 127 + 1e-6
    assert (v1 - v0).abs().max() <= v0.abs().amax(-1, keepdim=True).max() / 127 + 1e-6


def test_the_archive_stays_within_its_byte_budget(tiny, pieces, tmp_path):
    """Past the budget the oldest blocks go first; what is gone is never offered; memory-mapped blocks live in files
    that go with them."""
    big = archiving_cache(tiny)
    for piece in pieces:
        big.extend(piece)
    budget = big.archive.nbytes() // 3
    for path in (None, str(tmp_path)):
        cache = briefing.TrajectoryCache(tiny, chunk_tokens=64, budget=256, reserve=64, importance=False,
                                         fold=briefing.FoldPolicy(keep=0.25, sink=4, recent=64, capture_stride=4),
                                         archive=briefing.ArchivePolicy(dtype="float32", block=16,
                                                                        budget_bytes=budget, path=path))
        for piece in pieces:
            cache.extend(piece)
            assert cache.archive.nbytes() <= budget
            # what a service's byte budget counts (agents.service.store): the cache's KV and its whole archive
            assert cache.kv_bytes() + cache.archive.representative_bytes() <= cache.held_bytes() <= \
                cache.kv_bytes() + cache.archive.representative_bytes() + budget
        a, z = cache.archive.archived
        assert a > 4 and a % 16 == 0 and z == big.archive.archived[1]   # the oldest blocks went, whole
        ok = cache.archive.available(cache.store, 4)
        assert not ok[:a // 16].any() and ok[a // 16:z // 16].all()
        with pytest.raises(briefing.BriefingError, match="neither archived nor held"):
            cache.archive.fetch(cache.store, [(a - 8, a)])
        k, _, _ = cache.archive.fetch(cache.store, [(a, a + 16)])
        k_big, _, _ = big.archive.fetch(big.store, [(a, a + 16)])
        assert torch.equal(k, k_big)
        # a recall's ranges, padded, never reach into the dropped blocks: every one can be fetched
        found = latent.lookup(cache, tiny.encode("Question: what came first? Answer:"), None, 10_000, pad=24, sink=4)
        assert found.floor == a and found.ranges and min(lo for lo, _ in found.ranges) >= a
        cache.archive.fetch(cache.store, found.ranges)
        # the dropped blocks' token states went with their keys and values; the rest are the unbounded archive's
        arc = cache.archive
        assert arc.states_from == a and arc.token_states().shape[0] == arc.tokens - a
        assert torch.equal(arc.token_states(), big.archive.token_states()[a:])
        assert arc.representative_bytes() < big.archive.representative_bytes()
        q = latent.query_vector(cache, tiny.encode("Question: what came first? Answer:"))
        peaks = latent.block_scores(cache, q, peaks=4)                                 # [nb]
        read = arc.counts > 0
        assert torch.isfinite(peaks[read]).all()   # a block without states ranks by its mean alone
        ref = arc.representatives()[read, -1]                                          # [m, hidden]
        kept = latent.peak_scores(arc, q[-1], ref, latent.SHRINK, 4)                   # [nb] from token a on
        whole = latent.token_peaks(big.archive.token_states(), q[-1], ref, latent.SHRINK, 4, 16, arc.sums.shape[0])
        assert torch.isinf(kept[:a // 16]).all() and torch.allclose(kept[a // 16:], whole[a // 16:])   # in place
        found = latent.lookup(cache, tiny.encode("Question: what came first? Answer:"), None, 10_000, pad=24, sink=4,
                              peaks=4)
        assert found.ranges and min(lo for lo, _ in found.ranges) >= a
        if path is not None:
            files = list(tmp_path.glob("archive-*.bin"))
            assert files and sum(f.stat().st_size for f in files) <= 2 * budget
            del cache, k, arc   # the archive (and its memory-mapped files) with them
            import gc

            gc.collect()
            assert len(list(tmp_path.glob("archive-*.bin"))) < len(files) or not files


def test_representatives_read_in_pieces_equal_one_prefill(tiny, essay):
    """A block's representative is its tokens' mean hidden state, whether the text came in one extend or in pieces
    whose seams were re-cut (a BPE merge across a cut: the re-cut tokens' hidden states are taken back)."""
    text = essay[:2500]
    one = archiving_cache(tiny)
    one.extend(text)
    cuts = [0, 301, 302, 777, 1200, 1201, 1999, len(text)]   # cuts inside words: the seam re-cuts tokens
    parts = archiving_cache(tiny)
    for lo, hi in zip(cuts, cuts[1:]):
        parts.extend(text[lo:hi])
    assert parts.ids == one.ids and parts.prefilled_tokens > one.prefilled_tokens
    assert torch.equal(parts.archive.counts, one.archive.counts)
    assert (parts.archive.representatives() - one.archive.representatives()).abs().max() < 1e-4


def test_token_states_are_each_token_s_last_layer_state_through_re_cut_seams(tiny, essay):
    """`Archive.token_states`: every token's hidden state at the last representative layer, unit length, float16,
    whether the text came in one extend or in pieces whose seams were re-cut; counted in the representatives' bytes;
    a clone keeps its own; ArchivePolicy(token_states=False) keeps none."""
    text = essay[:2500]
    one = archiving_cache(tiny)
    one.extend(text)
    states = one.archive.token_states()                                          # [tokens, hidden]
    with briefing.archive.hidden_states(tiny, one.archive.layers[-1:]) as out:
        forward_with_bias(tiny, tiny.new_cache(), one.ids[:64], 0, None)           # the first chunk, uncached
    want = torch.nn.functional.normalize(out[one.archive.layers[-1]][0].float(), dim=-1)   # [tokens, hidden]
    assert states.dtype == torch.float16 and states.shape[0] == len(one.ids) and states.shape[1] == want.shape[1]
    assert one.folds and (states[:64].float() - want).abs().max() < 2e-3   # the first chunk: no fold before it
    cuts = [0, 301, 302, 777, 1200, 1201, 1999, len(text)]
    parts = archiving_cache(tiny)
    for lo, hi in zip(cuts, cuts[1:]):
        parts.extend(text[lo:hi])
    assert parts.ids == one.ids and parts.prefilled_tokens > one.prefilled_tokens
    assert (parts.archive.token_states().float() - states.float()).abs().max() < 2e-3
    plain = archiving_cache(tiny, token_states=False)
    plain.extend(text)
    assert plain.archive.token_states() is None
    assert one.archive.representative_bytes() - plain.archive.representative_bytes() == one.archive.states.numel() * 2
    assert one.archive.states.numel() >= states.numel()   # the buffer's spare rows are counted too
    twin = one.archive.clone()
    one.extend(" and more words after it")
    assert twin.token_states().shape[0] == states.shape[0] < one.archive.token_states().shape[0]
    assert torch.equal(twin.token_states(), states[:twin.tokens])


def test_peaks_add_a_block_s_best_tokens_to_its_mean(tiny, essay):
    """`block_scores(peaks=k)`: the standardised mean score plus the standardised mean of the block's k best token
    scores, each token's the whitened dot product with the question over its standardised length, computed here
    with an explicit inverse in float64; a cache without token states is refused, and so is the option that needs
    them."""
    cache = archiving_cache(tiny)
    cache.extend(planted(essay))
    arc, B, k = cache.archive, cache.archive.policy.block, 3
    q = latent.query_vector(cache, tiny.encode(PARAPHRASE))                     # [layers, hidden]
    got = latent.block_scores(cache, q, peaks=k)                                # [nb]
    reps = arc.representatives()                                                # [nb, layers, hidden]
    read = arc.counts > 0
    ref = reps[read, -1].double()                                               # [m, hidden]
    mu = ref.mean(0)
    cov = torch.cov(ref.T)                                                      # [hidden, hidden]
    C = (1 - latent.SHRINK) * cov + latent.SHRINK * torch.diag(cov.diagonal())
    Ci = torch.linalg.inv(C)
    y = q[-1].double() - mu                                                     # [hidden]
    x = arc.token_states().double() - mu                                        # [tokens, hidden]
    tok = (x @ Ci @ y) / (y @ Ci @ y).sqrt() / (x / cov.diagonal().sqrt()).norm(dim=-1)   # [tokens]
    peak = torch.stack([tok[j * B:(j + 1) * B].topk(min(k, len(tok[j * B:(j + 1) * B]))).values.mean()
                        for j in range(reps.shape[0])])                         # [nb]
    mean = latent.block_scores(cache, q).double()                               # [nb]

    def z(v):
        return (v - v[read].mean()) / v[read].std()

    want = z(mean) + z(peak)
    assert torch.allclose(got[read].double(), want[read], atol=1e-3)
    assert not torch.equal(got[read].argsort(), mean[read].argsort())           # the peaks move the ranking
    plain = archiving_cache(tiny, token_states=False)
    plain.extend(planted(essay))
    with pytest.raises(briefing.BriefingError, match="token_states=True"):
        latent.block_scores(plain, q, peaks=k)
    assert LatentRecall().archive(tiny).token_states and not BlockRecall(peaks=0).archive(tiny).token_states
    assert briefing.ArchivePolicy().token_states   # what the default recall ranks by
    with pytest.raises(ValueError, match="LatentRecall: peaks=4 .* keeps no token states"):
        LatentRecall(peaks=4, archive_policy=briefing.ArchivePolicy(token_states=False))
    for bad in (-1, 1.5, "4", True):
        with pytest.raises(ValueError, match="LatentRecall: peaks must be"):
            LatentRecall(peaks=bad)


def test_coverage_against_a_hand_computed_case():
    """One token per character (a byte-level tokenizer). The trajectory is 40 characters; the context keeps, per
    (layer, KV head), given token positions; recalled text and pasted text count for every head."""
    lm = tiny_model("llama-gqa", tiny_tokenizer(), max_positions=128)    # 2 layers, 2 KV heads
    text = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"
    cache = briefing.TrajectoryCache(lm, fold=None)
    cache.extend(text)
    kept = torch.tensor([[[0, 1, 2, 3], [0, 10, 11, 12]],
                         [[2, 3, 4, 5], [30, 31, 32, 33]]])                      # [L=2, H=2, t=4]
    ctx = types.SimpleNamespace(positions=kept)
    b = Briefing(context=ctx, query="q", input_tokens=0, text_handoff_tokens=0, cache=cache)
    # [0, 8): heads hold 4, 1, 4, 0 of the 8 characters -> (4 + 1 + 4 + 0) / 32
    assert b.coverage(0, 8) == pytest.approx(9 / 32)
    # [10, 14): 0 + 3 + 0 + 0 of 4 each
    assert b.coverage(10, 14) == pytest.approx(3 / 16)
    # a global allocation's rows keep different counts, right-padded with -1 (no token): the same figures
    b.context = types.SimpleNamespace(positions=torch.tensor([[[0, 1, 2, 3, -1], [0, 10, 11, 12, -1]],
                                                              [[2, 3, 4, 5, 6], [30, 31, 32, -1, -1]]]))
    assert b.coverage(0, 8) == pytest.approx(10 / 32) and b.coverage(10, 14) == pytest.approx(3 / 16)
    b.context = ctx
    # recalled text [6, 12) counts in every head: [0, 8) now holds characters 6 and 7 in each head too
    b.recalled = Recalled("ghijkl\n", [(6, 12)], "bm25")
    assert b.coverage(0, 8) == pytest.approx((6 + 3 + 6 + 2) / 32)
    # re-attached keys and values count through the slots the context kept, not through their ranges
    b.recalled = Recalled("", [(6, 12)], "latent:attach", blocks=types.SimpleNamespace(ranges=[(6, 8)]), tokens=6)
    b.origins = torch.cat([cache.origins(), torch.tensor([6, 7]).view(1, 1, -1).expand(2, 2, -1)], -1)
    attached = torch.tensor([40, 41]).view(1, 1, -1).expand(2, 2, -1)
    b.context = types.SimpleNamespace(positions=torch.cat([kept, attached], -1))
    assert b.coverage(0, 8) == pytest.approx((6 + 3 + 6 + 2) / 32)
    assert b.coverage(8, 10) == 0.0
    # both (RoutedRecall below its margin): the attached ranges come first, the pasted text's [12, 14) counts in
    # every head: [10, 14) holds 2 + 4 + 2 + 2 of 4 each
    b.recalled = Recalled("mn\n", [(6, 12), (12, 14)], "latent:attach+bm25",
                          blocks=types.SimpleNamespace(ranges=[(6, 8)]), tokens=8)
    assert b.recalled.pasted == [(12, 14)] and b.coverage(10, 14) == pytest.approx(10 / 16)
    # pasted text (a text worker's) counts as recalled text does; the offset moves trajectory ranges into the cache
    b.pasted = [(36, 40)]
    assert b.coverage(34, 40) == pytest.approx((0 + 0 + 0 + 0 + 4 * 4) / 24)
    assert b.held(0, 40) == 1.0


FACT = " The vault under the old mill opens with the number 4417."
PARAPHRASE = "Digits unlocking strongbox?"   # no word shared with FACT (nor stopwords BM25 would count)


def planted(essay: str, at: int = 900, n: int = 3500) -> str:
    cut = essay.rindex(" ", 0, at)
    return essay[:cut] + FACT + essay[cut:cut + n]


def fact_block(cache, text: str, block: int) -> int:
    """The block of the fact's first content token ("vault")."""
    spans = cache.lm.tokenizer(cache.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    at = cache.text.index(text) + text.index("vault")
    return next(i for i, (a, b) in enumerate(spans) if a <= at < b) // block


def aim_at(cache, block: int, query: str) -> torch.Tensor:
    """Make block `block`'s representative point where `query`'s does (ranking mechanics, not semantics: a random
    model has none). Returns the latent scores of the blocks for `query`."""
    ids = cache.lm.encode(query)
    q = latent.query_vector(cache, ids)                                        # [layers, hidden]
    arc = cache.archive
    arc.sums[block] = q * arc.counts[block]
    return latent.rank_blocks(cache, latent.query_vector(cache, ids), 4)


def test_the_question_vector_forwards_only_up_to_the_question(tiny, essay, monkeypatch):
    """`query_vector` of a span forwards the prompt only up to the span's end: the same vector as the mean hidden
    state of the span read from a forward of the whole prompt (causal attention), for fewer tokens."""
    from briefing.archive import hidden_states
    from briefing.attention import BiasState
    from briefing.context import run_model

    cache = archiving_cache(tiny)
    cache.extend(planted(essay)[:1500])
    ids = tiny.encode("Question: " + PARAPHRASE + " Answer in one word, then stop.")
    lo, hi = 2, 2 + len(tiny.encode(PARAPHRASE))
    marks = kv.marks(cache.store.kv)
    with hidden_states(tiny, cache.archive.layers) as out:
        run_model(tiny, cache.store.kv, ids, cache.position, BiasState(beta=cache.store.attention_bias()))
    kv.rollback(cache.store.kv, marks)
    h = torch.stack([out[i][0, lo:hi] for i in cache.archive.layers], 1).mean(0)        # [layers, hidden]
    want = torch.nn.functional.normalize(h, dim=-1)
    forwarded = []
    real = latent.run_model
    monkeypatch.setattr(latent, "run_model",
                        lambda lm, c, x, *a, **k: forwarded.append(len(x)) or real(lm, c, x, *a, **k))
    got = latent.query_vector(cache, ids, (lo, hi))
    assert forwarded == [hi] and hi < len(ids)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("shrink", [1.0, latent.SHRINK])
def test_rank_blocks_whitens_the_representatives_and_skips_the_unfolded_tail(tiny, essay, monkeypatch, shrink):
    """`rank_blocks`: the cosine after whitening by the representatives' covariance shrunk toward its diagonal
    (shrink 1: standardising each dimension by its mean and spread; shrink < 1 against an eigendecomposition of the
    shrunk covariance), averaged over layers; a direction every representative and the question share changes no
    score (raw cosine would rank by it); blocks the cache holds whole (its unfolded tail) and the sink are -inf."""
    cache = archiving_cache(tiny)
    cache.extend(planted(essay))
    arc, B = cache.archive, cache.archive.policy.block
    q = latent.query_vector(cache, tiny.encode(PARAPHRASE))                     # [layers, hidden]
    got = latent.rank_blocks(cache, q, 4, shrink=shrink)                        # [nb]
    reps = arc.representatives()                                                # [nb, layers, hidden]
    mu, sd = reps.mean(0), reps.std(0)
    unit = torch.nn.functional.normalize
    if shrink == 1.0:
        want = (unit((reps - mu) / sd, dim=-1) * unit((q - mu) / sd, dim=-1)[None]).sum(-1).mean(-1)   # [nb]
    else:
        per = []
        for layer in range(reps.shape[1]):
            cov = torch.cov(reps[:, layer].T.double())                          # [hidden, hidden]
            e, V = torch.linalg.eigh((1 - shrink) * cov + shrink * torch.diag(cov.diagonal()))
            W = V @ torch.diag(e.rsqrt()) @ V.T                                 # shrunk covariance ^ -1/2
            x, y = (reps[:, layer] - mu[layer]).double() @ W, (q[layer] - mu[layer]).double() @ W
            per.append(unit(x, dim=-1) @ unit(y, dim=0))                        # [nb]
        want = torch.stack(per, -1).mean(-1).float()                            # [nb]
    tail = arc.unfolded_from(cache.store)
    assert 0 < tail < arc.tokens and cache.folds
    for j in range(reps.shape[0]):
        if j * B >= tail or (j + 1) * B <= 4:
            assert got[j] == float("-inf")
        elif torch.isfinite(got[j]):
            assert float(got[j]) == pytest.approx(float(want[j]), abs=1e-5)
    assert torch.isfinite(got).sum() >= 4
    # tail_skip n: the unfolded tail's blocks are candidates too, less those reaching into the last n tokens
    skip = 2 * B
    wide = latent.rank_blocks(cache, q, 4, shrink=shrink, tail_skip=skip)      # [nb]
    for j in range(reps.shape[0]):
        if (j + 1) * B > arc.tokens - skip and j * B >= tail or (j + 1) * B <= 4:
            assert wide[j] == float("-inf")
        else:
            assert float(wide[j]) == pytest.approx(float(want[j]), abs=1e-5)
    assert torch.isfinite(wide).sum() > torch.isfinite(got).sum()
    ranges = latent.lookup(cache, tiny.encode(PARAPHRASE), None, 10 ** 6, pad=0, sink=4, shrink=shrink,
                           tail_skip=skip).ranges
    assert max(hi for _, hi in ranges) > tail and max(hi for _, hi in ranges) <= arc.tokens - skip
    got_kv = latent.attach(cache, ranges)                                      # tail tokens fetched from the store
    assert got_kv.length == sum(hi - lo for lo, hi in ranges)
    shift = 5 * torch.randn(reps.shape[1:], generator=torch.Generator().manual_seed(0))   # [layers, hidden]
    monkeypatch.setattr(type(arc), "representatives", lambda self: reps + shift)
    moved = latent.rank_blocks(cache, q + shift, 4, shrink=shrink)
    assert torch.allclose(moved[torch.isfinite(got)], got[torch.isfinite(got)], atol=1e-4)
    raw = ((reps + shift) * unit(q + shift, dim=-1)[None]).sum(-1).mean(-1)
    assert not torch.equal(raw.argsort(), (reps * q[None]).sum(-1).mean(-1).argsort())


def test_latent_recall_finds_a_block_bm25_cannot(tiny, essay):
    """A question sharing no word with the fact: BM25 cannot reach the fact's text, latent recall ranks blocks by the
    representatives and brings back the one whose representative the question's hidden states point at, as keys and
    values re-attached after the cache, or as text."""
    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    assert cache.folds
    B = cache.archive.policy.block
    j = fact_block(cache, text, B)
    assert j * B > cache.fold.sink and (j + 1) * B <= cache.archive.archived[1]   # archived, not in the tail
    before = latent.rank_blocks(cache, latent.query_vector(cache, tiny.encode(PARAPHRASE)), 4)
    scores = aim_at(cache, j, PARAPHRASE)
    assert int(scores.argmax()) == j and scores[j] > 0.999 and int(before.argmax()) != j
    s, e = text.index(FACT), text.index(FACT) + len(FACT)
    bm25 = TextRecall(tokens=64).recall(cache, PARAPHRASE, 64)
    assert bm25.how == "bm25" and not any(a < e and s < b for a, b in bm25.ranges)   # no chunk shares a word
    got = BlockRecall(tokens=64, pad=8).recall(cache, PARAPHRASE, 32)   # the call's room: one block
    assert got.how == "latent:attach" and got.blocks is not None and got.text == "" and not got.pasted
    (lo, hi), = got.blocks.ranges               # one block, widened by the pad on both sides
    assert (lo, hi) == (j * B - 8, (j + 1) * B + 8) and got.tokens == hi - lo == got.blocks.length
    (a, b), = got.ranges
    assert a <= s + 1 < b                        # its characters hold the fact's start
    text_got = BlockRecall(tokens=64, pad=8, attach=False).recall(cache, PARAPHRASE, 32)
    assert text_got.pasted and text_got.ranges == got.ranges
    assert text_got.text.strip() == tiny.decode(cache.ids[lo:hi]).strip() and "vault" in text_got.text
    # nothing to recall before the first fold, or under the smallest budget
    assert not BlockRecall(tokens=64).recall(archiving_cache(tiny), PARAPHRASE, 64)


def test_both_fuses_latent_and_bm25_ranks(tiny, essay):
    """rank="both": reciprocal rank fusion of the latent and BM25 rankings over the same blocks: a block first in
    both is first; the fused score is the sum of 1 / (61 + rank) and an unavailable block stays out."""
    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    B = cache.archive.policy.block
    j = fact_block(cache, text, B)
    own = "What number opens the vault under the old mill?"
    scores = aim_at(cache, j, own)
    scores[0] = float("-inf")                    # as for a block that cannot be fetched
    fused = BlockRecall(rank="both")._fused(cache, own, scores)
    assert int(fused.argmax()) == j and fused[0] == float("-inf")
    assert fused[j] == pytest.approx(2 / 61)     # rank 0 in both
    got = BlockRecall(tokens=32, pad=8, rank="both").recall(cache, own, 64)
    assert got.how == "both:attach" and got.blocks.ranges == [(j * B - 8, (j + 1) * B + 8)]


def test_routed_recall_takes_bm25_where_a_chunk_stands_out_and_latent_where_none_does(tiny, essay, monkeypatch):
    """RoutedRecall: a question in the fact's words singles out its chunk (BM25's best score well over the
    runner-up's): BM25's recall, no lookup; a question sharing no word with any chunk: latent recall, with the
    margin that sent it there (all of the budget where no chunk shares a word with it, else BM25's best chunks keep
    a quarter); margin=1 always takes BM25; a bad margin is refused by name."""
    from agents import RoutedRecall

    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    j = fact_block(cache, text, cache.archive.policy.block)
    aim_at(cache, j, PARAPHRASE)
    own = "What number opens the vault under the old mill?"
    bm25 = TextRecall(tokens=64).recall(cache, own, 64)
    assert bm25.margin is not None and bm25.margin > 2       # "vault", "mill" occur in the fact's chunk only
    # chunks of whole sentences recall the fact's sentence whole, and route as chunks of one length do
    sentences = TextRecall(tokens=64, chunks="sentences").recall(cache, own, 64)
    assert (sentences.margin, sentences.overlap) == (bm25.margin, bm25.overlap) and FACT.strip() in sentences.text
    s = text.index(FACT)
    looked = []
    real = latent.lookup
    monkeypatch.setattr(latent, "lookup", lambda *a, **k: looked.append(1) or real(*a, **k))
    # BM25's confident route unchecked here (verify=False); the default's check has its own test below
    routed = RoutedRecall(tokens=64, verify=False, latent=BlockRecall(tokens=64, pad=8))
    got = routed.recall(cache, own, 64)
    # its default text recall cuts whole sentences (round 24): the confident route's recall is theirs
    assert got == sentences and not looked and any(a <= s + 1 < b for a, b in got.ranges)
    para = TextRecall(tokens=64).recall(cache, PARAPHRASE, 64)
    assert para.margin < routed.margin                         # no word shared: nothing stands out
    got = routed.recall(cache, PARAPHRASE, 32)   # a quarter of 32 is below a recall's minimum: latent takes it all
    assert looked == [1] and got.how == "latent:attach" and got.margin == para.margin
    assert got.blocks.ranges == BlockRecall(tokens=64, pad=8).recall(cache, PARAPHRASE, 32).blocks.ranges
    # no chunk shares a word with it: BM25 pastes nothing, latent recall takes the whole budget
    got = routed.recall(cache, PARAPHRASE, 64)
    assert got.how == "latent:attach" and not got.text and got.margin == para.margin
    assert got.blocks.ranges == BlockRecall(tokens=64, pad=8).recall(cache, PARAPHRASE, 64).blocks.ranges
    weak = PARAPHRASE + " And?"   # a word most chunks share: nothing stands out, and BM25 keeps its quarter
    wpara = TextRecall(tokens=64).recall(cache, weak, 64)
    weak_margin = wpara.margin
    assert 1 < weak_margin < routed.margin
    # at 64, BM25's best chunks keep a quarter (16 tokens), pasted before the question; latent recall the rest
    lexical = TextRecall(tokens=64).recall(cache, weak, 16)
    n = tiny.count_tokens(lexical.text)
    got = routed.recall(cache, weak, 64)
    rest = BlockRecall(tokens=64, pad=8).recall(cache, weak, 64 - n)
    assert got.how == "latent:attach+bm25" and got.text == lexical.text and got.margin == weak_margin
    assert got.blocks.ranges == rest.blocks.ranges and got.ranges == [*rest.ranges, *lexical.ranges]
    assert got.pasted == lexical.ranges and got.tokens == n + rest.tokens <= 64
    # the default pins (the tail's best blocks kept whole) come within the whole budget, before BM25's share
    whole = BlockRecall(tokens=64, pad=8).recall(cache, weak, 64 - n, pin=64)
    assert got.pinned and got.pinned == whole.pinned and got.blocks.pinned == whole.blocks.pinned
    pins, spy = [], latent.lookup
    monkeypatch.setattr(latent, "lookup", lambda *a, **k: pins.append(k["pin"]) or real(*a, **k))
    routed.recall(cache, weak, 64)
    BlockRecall(tokens=64, pad=8).recall(cache, weak, 64 - n)
    assert pins == [64, 64 - n] and sum(hi - lo for lo, hi in got.blocks.pinned) <= 64
    explicit = RoutedRecall(tokens=64, latent=BlockRecall(tokens=64, pad=8, pin=64)).recall(cache, weak, 64)
    assert explicit.pinned == got.pinned and explicit.ranges == got.ranges   # the long suite's fold-routed-pin-full
    monkeypatch.setattr(latent, "lookup", spy)
    alone = RoutedRecall(tokens=64, share=0, latent=BlockRecall(tokens=64, pad=8)).recall(cache, weak, 64)
    assert alone.how == "latent:attach" and alone.blocks.ranges == BlockRecall(tokens=64, pad=8).recall(
        cache, weak, 64).blocks.ranges
    # overlap: below the margin BM25 keeps its share only where its best chunk holds that share of the question's
    # content words; the paraphrase shares none with it, so latent recall takes the whole budget
    assert wpara.overlap < 0.5
    gate = RoutedRecall(tokens=64, min_overlap=0.5, latent=BlockRecall(tokens=64, pad=8))
    gated = gate.recall(cache, weak, 64)
    assert gated.how == "latent:attach" and gated.ranges == alone.ranges and gated.margin == weak_margin
    assert gated.overlap == wpara.overlap                                 # carried, as the margin is
    loose = RoutedRecall(tokens=64, min_overlap=wpara.overlap, latent=BlockRecall(tokens=64, pad=8))
    assert loose.recall(cache, weak, 64).ranges == got.ranges   # at its own overlap: BM25 keeps its share
    gate = RoutedRecall(tokens=64, min_overlap=1.0, verify=False)
    assert gate.recall(cache, own, 64) == sentences   # the confident route is untouched
    # re-prefilled latent text goes first, BM25's chunks last, nearest the question; every range pasted
    both = RoutedRecall(tokens=64, latent=BlockRecall(tokens=64, pad=8, attach=False)).recall(cache, weak, 64)
    assert both.how == "latent:prefill+bm25" and both.blocks.length == 0 and both.text.endswith(lexical.text)
    assert both.pinned and both.blocks.pinned   # no keys or values attached: only the pins go to the compaction
    assert both.pasted == both.ranges and both.ranges[-len(lexical.ranges):] == lexical.ranges
    assert RoutedRecall(tokens=64, margin=1, verify=False).recall(cache, weak, 64).how == "bm25"
    # confident_share below 1: above the margin BM25's best chunks keep that part, latent recall takes the rest
    looked.clear()
    kept = TextRecall(tokens=64, chunks="sentences").recall(cache, own, 48)   # the default `text`: whole sentences
    n = tiny.count_tokens(kept.text)
    hedged = RoutedRecall(tokens=64, confident_share=0.75, verify=False,
                          latent=BlockRecall(tokens=64, pad=8)).recall(cache, own, 64)
    assert looked == [1] and hedged.how == "latent:attach+bm25" and hedged.text == kept.text
    assert hedged.margin == bm25.margin and hedged.blocks.ranges == BlockRecall(tokens=64, pad=8).recall(
        cache, own, 64 - n).blocks.ranges and hedged.tokens <= 64
    # confident_pin: above the margin BM25's recall is the call's text, and the lookup pins the tail's best blocks
    looked.clear()
    sure = RoutedRecall(tokens=64, confident_pin=True, verify=False,
                        latent=BlockRecall(tokens=64, pad=8)).recall(cache, own, 64)
    only = BlockRecall(tokens=64, pad=8).recall(cache, own, 0, pin=64)
    assert looked == [1, 1] and sure.text == sentences.text and sure.ranges == sentences.ranges == sure.pasted
    assert sure.how == "bm25+latent:attach-pins" and sure.margin == bm25.margin and sure.tokens == sentences.tokens
    assert sure.pinned and sure.pinned == only.pinned and sure.blocks.length == 0 and only.ranges == []
    assert sure.lookup_s > 0   # the lookup the pins were found by, made by the latent recall here (verify=False)
    assert RoutedRecall(tokens=64, confident_pin=True, verify=False, latent=BlockRecall(tokens=64, pin=0)).recall(
        cache, own, 64) == sentences                                 # no pin budget: BM25's recall alone
    with pytest.raises(ValueError, match="confident_pin"):
        RoutedRecall(confident_pin=1)
    assert not RoutedRecall().recall(archiving_cache(tiny), own, 64)   # nothing before the first fold
    assert RoutedRecall().archive(tiny) == LatentRecall().archive(tiny)   # the worker's caches keep latent's archive
    for bad in (0.5, float("inf"), "2", True):
        with pytest.raises(ValueError, match="RoutedRecall: margin must be"):
            RoutedRecall(margin=bad)
    for bad in (-0.1, 1.5, "0.25"):
        with pytest.raises(ValueError, match="RoutedRecall: share must be"):
            RoutedRecall(share=bad)
        with pytest.raises(ValueError, match="RoutedRecall: confident_share must be"):
            RoutedRecall(confident_share=bad)
        with pytest.raises(ValueError, match="RoutedRecall: min_overlap must be"):
            RoutedRecall(min_overlap=bad)
    with pytest.raises(ValueError, match="RoutedRecall: latent must be"):
        RoutedRecall(latent=TextRecall())


def test_routed_recall_shared_cuts_bm25s_share_below_the_margin_its_own_way(tiny, essay):
    """RoutedRecall(shared=...): at or above the margin BM25's recall is `text`'s (whole sentences here); below it,
    BM25's share comes from `shared` (side-by-side chunks), exactly as a router whose `text` is `shared`; None: `text`
    with side-by-side chunks, and by default `text` cuts whole sentences (round 22's probe, the default since round
    23); a wrong type is refused by name."""
    from agents import RoutedRecall

    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    aim_at(cache, fact_block(cache, text, cache.archive.policy.block), PARAPHRASE)
    own, weak = "What number opens the vault under the old mill?", PARAPHRASE + " And?"
    sentences, words = TextRecall(tokens=64, chunks="sentences"), TextRecall(tokens=64)
    for k in (64, 48):                                                            # the cuts differ here
        assert sentences.recall(cache, own, k).text != words.recall(cache, own, k).text
    assert sentences.recall(cache, weak, 16).text != words.recall(cache, weak, 16).text

    def router(**kw):
        return RoutedRecall(tokens=64, verify=False, latent=BlockRecall(tokens=64, pad=8), **kw)

    def same(a, b):   # everything but the lookup's time
        return (a.text, a.ranges, a.how, a.margin, a.blocks and a.blocks.ranges) == \
            (b.text, b.ranges, b.how, b.margin, b.blocks and b.blocks.ranges)

    mixed = router(text=sentences, shared=words)
    assert mixed.recall(cache, own, 64) == sentences.recall(cache, own, 64)    # confident: BM25's, whole sentences
    hedged = router(text=sentences, shared=words, confident_share=0.75).recall(cache, own, 64)
    assert hedged.text.endswith(sentences.recall(cache, own, 48).text)        # above the margin: `text` still
    below = mixed.recall(cache, weak, 64)
    assert below.how == "latent:attach+bm25" and below.text.endswith(words.recall(cache, weak, 16).text)
    assert same(below, router(text=words).recall(cache, weak, 64))             # the share's chunks are `shared`'s
    assert not same(below, router(text=sentences, shared=sentences).recall(cache, weak, 64))   # sentences below
    # None: `text` with side-by-side chunks below the margin, the default since round 24 (whole sentences above it)
    default = router()
    assert default.shared is None and default.text == sentences and default.share_recall() == words
    assert same(default.recall(cache, weak, 64), below)
    assert default.recall(cache, own, 64) == mixed.recall(cache, own, 64)
    side = router(text=words)
    assert side.share_recall() is side.text                                   # side by side already: `text` itself
    odd = RoutedRecall(text=TextRecall(tokens=32, chunks="overlap", tail=False, ranked=False), verify=False)
    assert odd.share_recall() == TextRecall(tokens=32, tail=False, ranked=False)   # `text`'s other settings kept
    assert router(text=sentences, shared=sentences).share_recall() == sentences   # sentences on both routes: named
    with pytest.raises(ValueError, match="RoutedRecall: shared must be"):
        RoutedRecall(shared="words")


def test_routed_recall_verify_checks_bm25s_best_chunk_against_the_latent_ranking(tiny, essay, monkeypatch):
    """RoutedRecall(verify=True): at or above the margin the lookup runs once; where BM25's best chunk holds one of
    the latent ranking's m best blocks (m: the picks the whole budget makes), BM25's recall stands alone; where it
    does not, BM25's best chunk stays, whole and alone, and latent recall takes the rest, picking from the same
    lookup (no second forward). `LatentRecall.recall(found=...)` re-picks a lookup within its own budget."""
    from agents import RoutedRecall

    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    B = cache.archive.policy.block
    own = "What number opens the vault under the old mill?"
    bm25 = TextRecall(tokens=64, chunks="sentences").recall(cache, own, 64)   # the default `text` (round 24)
    assert bm25.margin > 2                                                 # confident: BM25's route
    lo, hi = bm25.ranges[-1]                                               # its best chunk (ranked: last)
    toks = [i for i, (a, b) in enumerate(cache.token_spans()) if a < hi and b > lo]
    inside = set(range(toks[0] // B, toks[-1] // B + 1))                   # the blocks it reaches
    real, calls, rank_of_chunk = latent.lookup, [], []

    def rigged(*a, **k):   # the real lookup, its raw scores set so that the chunk's best block has a given rank
        found = real(*a, **k)
        calls.append(1)
        raw = torch.arange(found.raw.shape[0], 0, -1, dtype=torch.float32)   # block 0 best, then 1, ...
        others = [j for j in range(raw.shape[0]) if j not in inside]
        order = others[:rank_of_chunk[0]] + sorted(inside) + others[rank_of_chunk[0]:]
        found.raw = torch.empty_like(raw)
        found.raw[torch.tensor(order)] = raw.sort(descending=True).values
        return found

    monkeypatch.setattr(latent, "lookup", rigged)
    routed = RoutedRecall(tokens=64, verify=True, latent=BlockRecall(tokens=64, pad=8))
    m = -(-64 // (B + 2 * 8))                                              # picks the whole budget makes
    rank_of_chunk.append(m - 1)                                            # the chunk's block is the m-th best
    agreed = routed.recall(cache, own, 64)
    assert agreed == bm25 and calls == [1]                                 # agreed: BM25 alone, one lookup,
    assert agreed.lookup_s > 0                                             # whose time the recall reports
    assert bm25.lookup_s == 0                                              # (BM25 alone makes none)
    calls.clear()
    rank_of_chunk[0] = m                                                   # just outside the m best: disagreed
    got = routed.recall(cache, own, 64)
    assert calls == [1]                                                    # the split reuses the lookup
    best = cache.text[lo:hi] + "\n"                                        # BM25's best chunk alone, whole
    n = tiny.count_tokens(best)
    monkeypatch.setattr(latent, "lookup", real)
    rest = BlockRecall(tokens=64, pad=8).recall(cache, own, 64 - n, pin=64)   # pins within the whole budget
    assert got.how == "latent:attach+bm25" and got.text == best and got.pasted == [(lo, hi)]
    assert got.margin == bm25.margin and got.ranges == [*rest.ranges, (lo, hi)] and got.lookup_s > 0
    assert got.blocks.ranges == rest.blocks.ranges and got.pinned == rest.pinned and got.tokens == n + rest.tokens
    # found=: a lookup at one budget, re-picked within another, picks what a lookup at that budget picks
    whole = BlockRecall(tokens=64, pad=8).lookup(cache, own, 64, pin=0)
    for k in (64, 40, 20):
        assert BlockRecall(tokens=64, pad=8).recall(cache, own, k, pin=0, found=whole).ranges == \
            BlockRecall(tokens=64, pad=8).recall(cache, own, k, pin=0).ranges
    assert RoutedRecall().verify                                           # the default since round 15
    assert RoutedRecall().recall(archiving_cache(tiny), own, 64).how == "bm25"   # no fold: nothing to check
    with pytest.raises(ValueError, match="RoutedRecall: verify must be"):
        RoutedRecall(verify=1)
    with pytest.raises(ValueError, match="ranked=False"):
        RoutedRecall(verify=True, text=TextRecall(ranked=False))


def test_briefed_worker_recalls_through_the_archive(tiny, essay):
    """A worker with LatentRecall keeps an archive, re-attaches the recalled blocks (or re-prefills their text, or,
    routed below its margin, re-attaches some and pastes BM25's best chunks), compacts over them keeping them all,
    and reports what it recalled; its context stays within the cache budget plus the reserve."""
    from agents import RoutedRecall

    text = planted(essay)
    policy = briefing.ArchivePolicy(block=16)
    peaks = briefing.ArchivePolicy(block=16, token_states=True)
    weak = PARAPHRASE + " And?"   # a word many chunks share: BM25 keeps its part of a routed recall
    for how, rec, query in [
            ("latent:attach", BlockRecall(tokens=64, pad=8, archive_policy=policy), PARAPHRASE),
            ("latent:attach", BlockRecall(tokens=64, pad=8, peaks=4, archive_policy=peaks), PARAPHRASE),
            ("latent:prefill", BlockRecall(tokens=64, pad=8, attach=False, archive_policy=policy), PARAPHRASE),
            ("latent:attach+bm25", RoutedRecall(tokens=64, margin=100, latent=LatentRecall(
                tokens=64, pad=8, archive_policy=policy)), weak)]:
        w = BriefedWorker(lm=tiny, max_new_tokens=2, reserve=160, cache_budget=256, recall=rec,
                          fold=briefing.FoldPolicy(recent=64))
        b = w.brief(query, text)
        cache = b.cache
        assert cache.archive is not None and cache.folds and b.stats.archive_bytes == cache.archive.nbytes() > 0
        assert b.stats.recall == how
        assert 0 < b.stats.recalled_tokens <= 64 and b.stats.recalled == b.recalled.ranges and b.stats.recall_s > 0
        assert 0 < b.stats.lookup_s <= b.stats.recall_s   # the latent lookup, a part of the recall's time
        assert b.context.base_length <= w.cache_budget + w.reserve
        for a, z in b.recalled.ranges:           # every recalled character is in the call's context, all heads
            assert a < z
            assert b.coverage(a, z) == pytest.approx(1.0, abs=0.02)
            assert text[a:z] in text and z <= len(text)
        for a, z in b.recalled.pinned:           # the default pins: the tail's best blocks whole, all heads
            assert b.coverage(a, z) == pytest.approx(1.0, abs=0.02)
        if b.recalled.blocks is not None and b.recalled.blocks.ranges:
            m = b.recalled.blocks.length         # re-attached positions; pasted chunks are in the prompt
            assert m == b.stats.recalled_tokens - (tiny.count_tokens(b.recalled.text) if b.recalled.text else 0)
            assert b.origins is not None and b.origins.shape[-1] == cache.length + m
            assert b.stats.kept >= m and b.stats.total == cache.length + m
        out = b.generate(briefing.GenerationConfig(max_new_tokens=2, stop=w.stop))
        assert w.answer(query, text).text == out.text   # answer() is brief() then generate, greedy


def test_archived_keys_carry_their_importance_back(tiny, pieces):
    """Each key's query-agnostic importance (`KVStore.importance`, scored at extend) is archived with it when a fold
    compacts it, and comes back with the re-attached key: the view a recalled call compacts over holds the cache's
    importance then the attached keys', so a selector mixing in importance ranks them as the cache would."""
    cache = archiving_cache(tiny, dtype="int8", importance=True)
    seen: dict[int, torch.Tensor] = {}     # token -> its importance [Lh, H] while it sat raw in the cache
    for piece in pieces[:14]:
        cache.extend(piece)
        F, org = cache.folded, cache.origins()[0, 0]
        for slot in range(F, cache.length):
            seen[int(org[slot])] = cache.store.importance[..., slot].clone()
    assert cache.store.importance is not None and cache.folds
    a, z = cache.archive.archived
    ranges = [(a + 3, a + 30), (z - 8, z + 8)]          # archived, and across into the unfolded tail
    att = latent.attach(cache, ranges)
    want = torch.stack([seen[t] for lo, hi in ranges for t in range(lo, hi)], -1)      # [Lh, H, m]
    assert att.importance.shape == want.shape and want.abs().sum() > 0
    assert (att.importance - want).abs().max() <= 1e-3 * want.abs().max()            # float16 in the archive
    view = latent.View(cache, att)
    assert torch.equal(view.store.importance[..., :cache.length], cache.store.importance)
    assert torch.equal(view.store.importance[..., cache.length:], att.importance)
    ctx, _ = latent.compact_attached(cache, att, "Question: what then? Answer:",
                                     briefing.AttentionMatching(tau=1.0, agnostic=0.5))
    assert ctx.stats.kept >= att.length
    seg = cache.archive.segments[0]
    assert seg.importance is not None and seg.importance.dtype == torch.float16


def test_latent_recall_reprefills_on_a_model_with_sliding_layers(tiny, tok, essay):
    """LatentRecall's default: re-attach the blocks' keys and values where the cache holds every layer; on a model
    with sliding-window layers (Gemma 3), whose window layers would never see re-attached blocks, put their text
    before the question instead, and keep the representatives alone (no keys or values archived that no call reads),
    and pin nothing (`pin_budget`). attach=True or False overrides; a bad value is refused by name."""
    gemma = tiny_model("gemma3-hybrid", tok)
    assert gemma.window_layers and not tiny.window_layers
    assert LatentRecall().attaches(tiny) and not LatentRecall().attaches(gemma)
    assert LatentRecall(attach=True).attaches(gemma) and not LatentRecall(attach=False).attaches(tiny)
    assert LatentRecall().archive(tiny).budget_bytes > 0 and LatentRecall().archive(gemma).budget_bytes == 0
    assert LatentRecall(attach=False).archive(tiny).budget_bytes == 0
    assert LatentRecall().pin_budget(tiny, 64) == 64 and LatentRecall().pin_budget(gemma, 64) == 0
    assert LatentRecall(pin=16).pin_budget(gemma, 64) == 16 and LatentRecall(pin=0).pin_budget(tiny, 64) == 0
    reps = briefing.ArchivePolicy(block=16, budget_bytes=0)
    assert not LatentRecall(archive_policy=reps).attaches(tiny)     # nothing archived to re-attach: the text
    text = planted(essay)
    seen = {}
    for name, lm, policy in [("gemma", gemma, None), ("gemma, keys kept", gemma, briefing.ArchivePolicy()),
                             ("llama, representatives alone", tiny, reps)]:   # the default block: 32
        means = dict(peaks=0) if lm is gemma else {}   # the block means (gemma: a cache without token states)
        w = BriefedWorker(lm=lm, max_new_tokens=2, reserve=160, cache_budget=256,
                          recall=BlockRecall(tokens=64, pad=8, archive_policy=policy, **means),
                          fold=briefing.FoldPolicy(recent=64))
        b = w.brief(PARAPHRASE, text)
        assert b.cache.folds and b.stats.recall == "latent:prefill" and b.recalled.text
        if lm is gemma:   # no pins by default on sliding layers: nothing goes to the compaction but the prompt
            assert b.recalled.blocks is None and not b.recalled.pinned
        else:             # every layer held: the tail's best blocks pinned, no keys or values attached
            assert b.recalled.blocks.length == 0 and b.recalled.pinned
        assert all(b.coverage(a, z) == pytest.approx(1.0, abs=0.02) for a, z in b.recalled.ranges if a < z)
        seen[name] = b.recalled.ranges, b.cache.archive.nbytes()
        if name == "gemma":   # nothing archived; a fork keeps such a cache only for a recall that needs no more
            assert not b.cache.archive.segments and b.cache.archive.archive_s == 0
            assert w.fork(recall=BlockRecall(tokens=64, peaks=0))._caches
            assert not w.fork(recall=LatentRecall(attach=True, archive_policy=briefing.ArchivePolicy()))._caches
            peaks = w.fork(recall=BlockRecall(tokens=64, pad=8, peaks=4))   # no token states: rebuilt from the text
            assert not peaks._caches
            pb = peaks.brief(PARAPHRASE, text)   # its text re-prefilled, ranked with the states the new cache keeps
            assert pb.stats.recall == "latent:prefill" and pb.cache.archive.token_states() is not None
            assert pb.cache.archive.policy.budget_bytes == 0 and pb.recalled.text
            with pytest.raises(briefing.BriefingError, match="kv=True fetches archived keys and values, but"):
                latent.lookup(b.cache, gemma.encode(PARAPHRASE), None, 64, pad=8, sink=4, kv=True)
        if name == "gemma, keys kept":   # forked to a recall that re-prefills: its keys and values dropped
            forked = w.fork(recall=BlockRecall(tokens=64, pad=8, peaks=0))
            assert forked._caches[0].archive.policy.budget_bytes == 0 and not forked._caches[0].archive.segments
            assert b.cache.archive.segments                  # the original keeps its own
            again = forked.brief(PARAPHRASE, text)
            assert again.stats.recall == "latent:prefill" and again.recalled.ranges == b.recalled.ranges
    assert seen["gemma"][0] == seen["gemma, keys kept"][0]            # the same blocks, with or without their keys
    assert seen["gemma"][1] == 0 < seen["gemma, keys kept"][1] and seen["llama, representatives alone"][1] == 0
    with pytest.raises(ValueError, match="LatentRecall: attach must be True, False or None"):
        LatentRecall(attach="yes")
    with pytest.raises(ValueError, match="LatentRecall: attach=True re-attaches archived keys and values, but"):
        LatentRecall(attach=True, archive_policy=reps)


def test_latent_recall_shrink_is_checked_and_defaults_to_the_ranking_s():
    assert LatentRecall().shrink == latent.SHRINK
    assert LatentRecall().tail_skip is None
    for bad in (-1, 1.5, "512", True):
        with pytest.raises(ValueError, match="LatentRecall: tail_skip must be"):
            LatentRecall(tail_skip=bad)
    for bad in (0, 1.5, float("nan"), "0.8"):
        with pytest.raises(ValueError, match="LatentRecall: shrink must be a number in \\(0, 1\\]"):
            LatentRecall(shrink=bad)


def test_whiten_falls_back_to_the_diagonal_where_the_shrunk_covariance_is_singular():
    """Fewer blocks than dimensions and almost no shrinkage: Cholesky fails, the diagonal (standardising) is used."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 2, 16, generator=g)                                          # [m, layers, hidden]
    q = torch.randn(2, 16, generator=g)                                               # [layers, hidden]
    got = latent.whiten(ref, q, ref, 1e-9)
    want = latent.whiten(ref, q, ref, 1.0)
    assert all(torch.allclose(a, b) for a, b in zip(got, want, strict=True))
    x, y = latent.whiten(ref, q, ref, 0.5)
    assert torch.isfinite(x).all() and not torch.allclose(x, want[0])


def test_token_peaks_equal_the_standardised_cosine_and_the_shared_spread():
    """With one token per block, k=1 and the diagonal alone (shrink=1), a block's peak is its token's standardised
    cosine with the question (`whiten`'s), from any offset, in chunks or not (1,100 tokens: more than one of the CPU
    pass's chunks); a spread computed by the caller gives the same scores as one computed inside; the states are not
    modified."""
    g = torch.Generator().manual_seed(0)
    n, h = 1100, 24
    states = torch.nn.functional.normalize(torch.randn(n, h, generator=g) + 2, dim=-1).half()   # [n, h]
    ref = torch.nn.functional.normalize(torch.randn(40, h, generator=g) + 2, dim=-1)   # [m, h]
    q = torch.nn.functional.normalize(torch.randn(h, generator=g), dim=-1)             # [h]
    before = states.clone()
    got = latent.token_peaks(states, q, ref, 1.0, 1, 1, n)                             # [n]
    x, y = latent.whiten(states.float()[:, None], q[None], ref[:, None], 1.0)           # [n, 1, h], [1, h]
    assert torch.allclose(got, (x[:, 0] * y[0]).sum(-1), atol=1e-5)
    assert torch.equal(states, before)
    late = latent.token_peaks(states[96:], q, ref, 1.0, 1, 1, n, offset=96)            # the first 96 have none
    assert torch.isinf(late[:96]).all() and torch.allclose(late[96:], got[96:])
    spread = latent.shrunk_covariance(ref[:, None], latent.SHRINK)
    four = latent.token_peaks(states, q, ref, latent.SHRINK, 4, 16, n // 16)            # [n // 16] (the last part off)
    assert torch.equal(latent.token_peaks(states, q, ref, latent.SHRINK, 4, 16, n // 16, spread=spread), four)


def test_recall_rank_offline_ranks_a_dumped_question_s_block(tmp_path):
    """`benchmarks.recall_rank --offline` on a hand-made dump: the block whose tokens share the question's direction
    (among random ones) comes first for every candidate, and the fact's tokens are held within the budget."""
    from benchmarks.recall_rank import main, offline

    g = torch.Generator().manual_seed(0)
    T, h = 32 * 40, 24
    H = torch.randn(T, 3, h, generator=g)                                              # [T, layers, hidden]
    q = torch.randn(3, 3, h, generator=g)                                              # [m, layers, hidden]
    H[32 * 7:32 * 8] += 6 * q.mean(0)                                                  # block 7 points at it
    fact = list(range(32 * 7 + 4, 32 * 7 + 20))
    blocks = list(range(1, 40))
    dump = dict(H=H, T=T, sink=4, questions=[dict(form="paraphrase", fact=fact, cand=blocks, folded=blocks, q=q,
                                                  shipped=torch.arange(40.0))])   # the last blocks first
    torch.save(dump, tmp_path / "ep.pt")
    got = {s["ranker"]: s for s in offline([str(tmp_path)], budgets=(96,))["summary"]}
    for name in ("standardised", "diag0.8", "drop5", "iso0.1", "sub8max/diag0.6", "prf3/0.3", "neighbours0.15",
                 "zlayers"):
        assert got[name]["median_rank"] == 1 and got[name]["available"] == 1.0, name
    assert got["shipped-at-dump"]["available"] == 0.0 and got["shipped-at-dump"]["median_rank"] == 33
    assert main(["--offline", str(tmp_path), "--offline-budgets", "96", "32", "--out", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "offline.json").read_text())
    assert sorted({s["budget"] for s in written["summary"]}) == [32, 96]
    with pytest.raises(SystemExit):
        main(["--offline", str(tmp_path), "--offline-budgets", "0", "--out", str(tmp_path / "out")])
    # a dump with the call prompt's states, random but for its last token, which points where the question does
    P = torch.randn(10, 3, h, generator=g)                                             # [n, layers, hidden]
    P[-1] = q.mean(0)
    dump["questions"][0].update(prompt=P, span=(2, 5))
    torch.save(dump, tmp_path / "ep.pt")
    got = {s["ranker"]: s for s in offline([str(tmp_path)], budgets=(96,))["summary"]}
    assert got["last/whiten"]["median_rank"] == 1 and got["last/whiten"]["available"] == 1.0
    assert got["after/whiten"]["median_rank"] > 1 and got["prompt/whiten"]["median_rank"] > 1
    # a dump with the trajectory's sentences (round 25): the fact's sentence, whose states point at the question, is
    # the best unit and comes back whole within a budget that the block and its pads would not fit
    dump["units"] = torch.tensor([[0, 4]] + [[lo, min(lo + 16, T)] for lo in range(4, T, 16)])   # the fact's: one
    torch.save(dump, tmp_path / "ep.pt")
    got = {s["ranker"]: s for s in offline([str(tmp_path)], budgets=(16, 48))["summary"] if s["budget"] == 16}
    assert got["units/peaks4"]["median_rank"] == 1 and got["units/peaks4"]["available"] == 1.0
    assert got["peaks4/pick"]["available"] == 0.0 and got["peaks4/pick"]["median_rank"] == 1


def test_recall_rank_block_means_average_each_block_and_the_short_last_one():
    from benchmarks.recall_rank import block_means

    X = torch.randn(70, 3, 5, generator=torch.Generator().manual_seed(0))            # [T, layers, hidden]
    m = block_means(X, 32)                                                            # [3, layers, hidden]
    assert m.shape == (3, 3, 5)
    assert torch.allclose(m[1], X[32:64].mean(0)) and torch.allclose(m[2], X[64:].mean(0))


def test_recall_options_make_no_tensor_off_the_model_s_device(tiny, essay):
    """With the default device set to meta, a tensor made without the model's device would land there and fail:
    latent recall ranking the unfolded tail (`tail_skip`), pinning its best blocks (`pin`, through the call's
    compaction), a hedged routed recall and a recall of sentences run on the cache's device."""
    from agents import RoutedRecall

    cache = archiving_cache(tiny)
    cache.extend(planted(essay))
    torch.set_default_device("meta")
    try:
        got = BlockRecall(tokens=64, pad=8, tail_skip=32).recall(cache, PARAPHRASE, 64)
        assert got.blocks is not None and got.blocks.keys.device.type == "cpu" and got.tokens <= 64
        pins = BlockRecall(tokens=64, pad=8, pin=32, attach=False).recall(cache, PARAPHRASE, 64)
        assert pins.pinned and pins.blocks.length == 0 and pins.blocks.keys.device.type == "cpu"
        ctx, origins = latent.compact_attached(cache, pins.blocks, "Question: " + PARAPHRASE,
                                               briefing.AttentionMatching(tau=1.0))
        assert ctx.positions.device.type == "cpu" and origins.device.type == "cpu"
        hedged = RoutedRecall(tokens=64, margin=1, confident_share=0.75, latent=BlockRecall(tokens=64, pad=8))
        both = hedged.recall(cache, PARAPHRASE + " And?", 64)   # a word many chunks share: BM25 keeps its part
        assert both.how == "latent:attach+bm25" and both.blocks.keys.device.type == "cpu"
        units = LatentRecall(tokens=64, units="sentences", pin=32).recall(cache, PARAPHRASE, 64)   # round 25
        assert units.blocks is not None and units.blocks.keys.device.type == "cpu" and units.tokens <= 64
    finally:
        torch.set_default_device(None)


def test_keep_attached_keeps_the_pins_in_every_head_and_pads_on_the_right():
    """`KeepAttached` keeps the selection over the cache's positions, every attached position and every pinned one;
    rows that keep different counts are right-padded with PAD (what the fit and the cache build read), also when the
    selection itself is padded (a global allocation), which a plain concatenation would leave in the middle."""
    from briefing.matching import PAD
    from briefing.selection import Selector

    class Fixed(Selector):
        def __init__(self, idx):
            self.idx = idx

        def select(self, layers, kv_heads, length, scores, *, count=None, device=None):
            return self.idx

    idx = torch.tensor([[[0, 2, 5], [1, 2, PAD]]])                             # [1, 2, 3]: a padded selection
    got = latent.KeepAttached(Fixed(idx), attached=2).select(1, 2, 8, None)     # cache 6 + 2 attached
    assert got.tolist() == [[[0, 2, 5, 6, 7], [1, 2, 6, 7, PAD]]]
    pins = torch.zeros(1, 2, 6, dtype=torch.bool)
    pins[..., 3:5] = True                                                      # tokens 3, 4 in both heads
    got = latent.KeepAttached(Fixed(idx), attached=2, pinned=pins).select(1, 2, 8, None)
    assert got.tolist() == [[[0, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 6, 7, PAD]]]
    regular = torch.tensor([[[0, 2], [1, 5]]])
    assert latent.KeepAttached(Fixed(regular), attached=1).select(1, 2, 7, None).tolist() == [[[0, 2, 6], [1, 5, 6]]]
    pins_only = latent.KeepAttached(Fixed(regular), attached=0, pinned=pins).select(1, 2, 6, None)
    assert pins_only.tolist() == [[[0, 2, 3, 4], [1, 3, 4, 5]]]


def test_pinned_tail_blocks_are_kept_whole_in_every_head(tiny, essay):
    """`LatentRecall(pin=n)`: the lookup also picks, within n tokens, the unfolded tail's blocks the question ranks
    best (`block_scores` over `pinnable` blocks, each widened by the pad within the tail), the worker's call keeps
    their tokens in every (layer, KV head) without fetching them or spending the recall budget, and reports them as
    `pinned` character ranges; pin=0 leaves the call's context as it was."""
    text = planted(essay)
    policy = briefing.ArchivePolicy(block=16)

    def worker(pin):
        return BriefedWorker(lm=tiny, max_new_tokens=2, reserve=160, cache_budget=256, fold=briefing.FoldPolicy(
            recent=64), recall=BlockRecall(tokens=64, pad=4, pin=pin, archive_policy=policy))

    plain, pinned = worker(0).brief(PARAPHRASE, text), worker(40).brief(PARAPHRASE, text)
    cache = pinned.cache
    arc, B = cache.archive, cache.archive.policy.block
    tail = arc.unfolded_from(cache.store)
    assert plain.recalled.pinned == [] and pinned.recalled.pinned and cache.folds
    assert pinned.stats.pinned == pinned.recalled.pinned and plain.stats.pinned == []
    # the lookup's pins: the best tail blocks by the same scores the recall ranks by, within the pin budget
    prompt = worker(40).prompts().call_prompt(PARAPHRASE)
    ids, question = _token_span(tiny, prompt, prompt.rindex(PARAPHRASE), len(PARAPHRASE))
    found = latent.lookup(cache, ids, question, 64, pad=4, sink=cache.fold.sink, pin=40)
    raw = latent.block_scores(cache, latent.query_vector(cache, ids, question))  # [nb]
    best = max((j for j in range(raw.shape[0]) if j * B >= tail and arc.counts[j] > 0), key=lambda j: float(raw[j]))
    assert found.pinned and any(lo <= best * B and (best + 1) * B <= hi for lo, hi in found.pinned)
    assert all(lo >= tail for lo, _ in found.pinned) and sum(hi - lo for lo, hi in found.pinned) <= 40
    assert found.ranges == latent.lookup(cache, ids, question, 64, pad=4, sink=cache.fold.sink).ranges
    # the call keeps every pinned token in every head, and recalls the same blocks with the same budget
    assert pinned.recalled.ranges == plain.recalled.ranges
    assert pinned.stats.recalled_tokens == plain.stats.recalled_tokens
    for a, z in pinned.recalled.pinned:
        assert pinned.coverage(a, z) == pytest.approx(1.0, abs=0.02)
    assert pinned.stats.kept >= plain.stats.kept
    assert pinned.context.base_length <= 256 + 160
    assert not torch.equal(pinned.context.positions, plain.context.positions)
    # text recall (attach=False): the pins still reach the call's compaction, with no keys or values attached
    text_w = BriefedWorker(lm=tiny, max_new_tokens=2, reserve=160, cache_budget=256, fold=briefing.FoldPolicy(
        recent=64), recall=BlockRecall(tokens=64, pad=4, pin=40, attach=False, archive_policy=policy))
    b = text_w.brief(PARAPHRASE, text)
    assert b.recalled.blocks is not None and b.recalled.blocks.length == 0 and b.recalled.text
    assert b.recalled.pasted == b.recalled.ranges and b.recalled.pinned
    for a, z in b.recalled.pinned:
        assert b.coverage(a, z) == pytest.approx(1.0, abs=0.02)


def test_a_budget_too_small_to_fetch_pins_only_when_asked(tiny, essay, monkeypatch):
    """Below a recall's minimum (16 tokens), or at a budget a full reserve leaves negative, the default pins nothing
    and no lookup runs, as before pins existed; an explicit pin budget still pins, fetching nothing."""
    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    looked = []
    real = latent.lookup
    monkeypatch.setattr(latent, "lookup", lambda *a, **k: looked.append(1) or real(*a, **k))
    for k in (-5, 0, 1, 15):
        got = LatentRecall(pad=8).recall(cache, PARAPHRASE, k)
        assert not got and got.pinned == [] and not looked
    got = LatentRecall(pad=8).recall(cache, PARAPHRASE, 15, pin=40)
    assert looked == [1] and got.ranges == [] and got.blocks.length == 0 and got.pinned
    assert all(lo < hi for lo, hi in got.pinned)


def test_latent_recall_pin_is_checked():
    with pytest.raises(ValueError, match="pin"):
        LatentRecall(pin=-1)
    with pytest.raises(ValueError, match="pin"):
        LatentRecall(pin=1.5)


def test_lookup_cost_benchmark_writes_its_figures(tmp_path, capsys):
    """`benchmarks.lookup_cost` times the ranking on random archives of both workers' shapes: a JSON row per shape and
    length, a table and a plot; a bad length is refused with a line naming the argument."""
    import json

    from benchmarks.lookup_cost import main

    main(["--tokens", "64", "128", "--repeats", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "lookup_cost.json").read_text())["rows"]
    assert [(r["shape"], r["tokens"]) for r in rows] == [(s, t) for s in ("SmolLM2-135M", "Gemma-3-270M")
                                                         for t in (64, 128)]
    assert all(r["default_s"] > 0 and r["means_s"] > 0 and r["token_peaks_s"] > 0 for r in rows)
    assert (tmp_path / "lookup_cost.png").stat().st_size > 0 and "| Gemma-3-270M | 128 |" in (
        tmp_path / "lookup_cost.md").read_text()
    with pytest.raises(SystemExit) as e:
        main(["--tokens", "100", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--tokens: got 100" in capsys.readouterr().err


def test_a_tail_margin_fetches_only_what_scores_near_the_tail_s_best(tiny, essay):
    """`lookup(tail_margin=m)` picks only candidates scoring at least the unfolded tail's best less m (that tail is in
    view), and reports the gap between the two sides with or without the bar; `echo` (the question's own words in
    the trajectory) does not count as the tail's best."""
    text = planted(essay)
    cache = archiving_cache(tiny)
    cache.extend(text)
    arc, B = cache.archive, cache.archive.policy.block
    ids = tiny.encode(PARAPHRASE)

    def find(**kw):
        return latent.lookup(cache, ids, None, 64, pad=4, sink=cache.fold.sink, **kw)

    def tail_best(raw, skip=()):
        tail = latent.pinnable(cache) & ~latent.candidates(cache, cache.fold.sink)   # [nb]
        return max(float(raw[j]) for j in range(raw.shape[0]) if tail[j] and j not in skip)

    free = find()
    assert len(free.ranges) >= 2 and cache.folds
    assert free.tail_gap == pytest.approx(tail_best(free.raw) - float(free.scores.max()), abs=1e-5)
    assert find(tail_margin=1e9).ranges == free.ranges
    top = free.scores.topk(2).values                                                 # [2] the two best candidates
    between = tail_best(free.raw) - float(top.mean())   # a bar between them: the best alone passes
    for m in (1e9, between, tail_best(free.raw) - float(top[0]) - 1.0):
        barred = find(tail_margin=m)
        assert barred.tail_gap == free.tail_gap
        bar = tail_best(free.raw) - m
        kept = free.scores.masked_fill(free.raw < bar, float("-inf"))                 # [nb] above the bar
        assert barred.ranges == latent.pick(kept, B, 4, 64, arc.tokens, free.floor)
    trimmed = find(tail_margin=between).ranges
    assert trimmed and sum(hi - lo for lo, hi in trimmed) < sum(hi - lo for lo, hi in free.ranges)
    assert find(tail_margin=tail_best(free.raw) - float(top[0]) - 1.0).ranges == []   # above every candidate
    # a tail block that the question ranks first: the gap is positive and a bar at 0 fetches nothing
    first_tail = int(arc.unfolded_from(cache.store)) // B + 1
    aim_at(cache, first_tail, PARAPHRASE)
    aimed = find(tail_margin=0.0)
    assert aimed.tail_gap > 0 and aimed.ranges == [] and find().ranges
    # the same block as the question's echo: it is not the tail's best, and the bar lets the fetch through again
    echo = (first_tail * B, (first_tail + 1) * B)
    echoed = find(tail_margin=0.0, echo=echo)
    assert echoed.tail_gap == pytest.approx(tail_best(echoed.raw, skip={first_tail}) - float(echoed.scores.max()),
                                            abs=1e-5)
    assert echoed.tail_gap < aimed.tail_gap and echoed.ranges
    # over units (sentences): a unit overlapping the echo is left out, one that ends where it starts is not
    units = sentence_units(cache, latent.UNIT_TOKENS)                                 # [n, 2]
    tail_units = latent.within(units, latent.pinnable(cache) & ~latent.candidates(cache, cache.fold.sink), B)   # [n]
    j = int(torch.nonzero(tail_units)[1])                                             # a tail unit, not its first
    lo, hi = (int(x) for x in units[j])
    found = latent.lookup(cache, ids, None, 64, pad=0, sink=cache.fold.sink, peaks=4, units=units, echo=(lo, hi))
    seen = tail_units.clone()
    seen[j] = False
    assert found.tail_gap == pytest.approx(float(found.raw[seen].max()) - float(found.scores.max()), abs=1e-5)
    assert int(units[j + 1][0]) == hi                                                 # units lie side by side
    after = latent.lookup(cache, ids, None, 64, pad=0, sink=cache.fold.sink, peaks=4, units=units, echo=(hi, hi + 1))
    seen = tail_units.clone()
    seen[j + 1] = False                                                               # unit j ends where it starts
    assert after.tail_gap == pytest.approx(float(after.raw[seen].max()) - float(after.scores.max()), abs=1e-5)


def test_latent_recall_tail_margin_is_checked_and_reported(tiny, essay):
    """`LatentRecall(tail_margin=...)` is checked; a recall reports its lookup's `tail_gap`, with the question's own
    words (where the trajectory ends with them) left out of the tail's best, and a worker's call carries it."""
    with pytest.raises(ValueError, match="tail_margin"):
        LatentRecall(tail_margin="1")
    text = planted(essay) + " " + PARAPHRASE
    cache = archiving_cache(tiny)
    cache.extend(text)
    got = BlockRecall(pad=4, tail_margin=0.0).recall(cache, PARAPHRASE, 64)
    at = cache.text.rindex(PARAPHRASE)
    spans = cache.token_spans()
    echo = (min(i for i, (a, b) in enumerate(spans) if b > at),
            max(i for i, (a, b) in enumerate(spans) if a < at + len(PARAPHRASE)) + 1)
    ids, question = _token_span(tiny, PARAPHRASE, 0, len(PARAPHRASE))
    want = latent.lookup(cache, ids, question, 64, pad=4, sink=cache.fold.sink, tail_margin=0.0, echo=echo, peaks=4)
    unechoed = latent.lookup(cache, ids, question, 64, pad=4, sink=cache.fold.sink, tail_margin=0.0, peaks=4)
    assert want.tail_gap is not None and got.tail_gap == pytest.approx(want.tail_gap, abs=1e-5)
    assert unechoed.tail_gap != pytest.approx(want.tail_gap, abs=1e-3)   # the question's own words left out
    worker = BriefedWorker(lm=tiny, max_new_tokens=2, reserve=160, cache_budget=256, fold=briefing.FoldPolicy(
        recent=64), recall=BlockRecall(tokens=64, pad=4, archive_policy=briefing.ArchivePolicy(block=16)))
    b = worker.brief(PARAPHRASE, planted(essay))
    assert b.cache.folds and b.recalled.tail_gap is not None
