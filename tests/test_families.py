"""Model families, devices and dtypes on tiny random-weight models: hybrid and sliding-window attention (Gemma 3,
Mistral v0.1 style), every tensor on the model's device (the default device set to "meta" catches any that is not),
bfloat16 caches with float32 solves."""
from __future__ import annotations

import pytest
import torch

import briefing
from briefing import kv
from briefing.context import forward_with_bias
from tests.tiny import FAMILIES, WINDOW, tiny_model

TEXT = "".join(f"Line {i}: the tide was low and the gulls were loud over the harbour wall. " for i in range(30))
PROMPT = " Question: what was low? Answer:"


def own_logprobs(lm, ids: list[int], n_context: int) -> torch.Tensor:
    """The model's own log-probs for positions n_context.. of one uncached forward (its own masks and caches)."""
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0].float()
    return torch.log_softmax(logits[n_context - 1:-1], -1)


def test_a_hybrid_model_holds_the_trajectory_on_its_global_layers_and_its_window_on_the_others(tok):
    """Gemma 3: the global layer holds (and folds) the trajectory, the five sliding layers hold their window as the
    model's own cache would; KeepAll on the folded cache reproduces its own logits, and a re-base puts each window
    key exactly where a prefill at its new position would."""
    lm = tiny_model("gemma3-hybrid", tok, max_positions=512)
    assert lm.held_layers == [5] and lm.window_layers == [0, 1, 2, 3, 4] and lm.sliding_window == WINDOW
    cache = briefing.TrajectoryCache(lm, chunk_tokens=64, budget=256, reserve=64,
                                     fold=briefing.FoldPolicy(recent=64, capture_stride=4))
    while cache.rebases < 2:
        cache.extend(TEXT)
    assert cache.folds and cache.length <= cache.budget and cache.tokens > lm.max_context
    for i in lm.window_layers:   # the window (and its margin for a token seam), never more
        layer = cache.kv.layers[i]
        assert layer.keys.shape[-2] == WINDOW - 1 + kv.WINDOW_MARGIN and layer.cumulative_length == cache.tokens
    # KeepAll on the folded cache: the folded cache's own logits (stored beta on the global layer)
    ctx = cache.compact(PROMPT, briefing.KeepAll())
    ids, got = briefing.token_logprobs(ctx, " The tide")
    copy = cache.clone()
    logits = forward_with_bias(lm, copy.kv, ctx.prompt_ids + ids[:-1], copy.position, copy.store.attention_bias())
    ref = torch.log_softmax(logits[len(ctx.prompt_ids) - 1:], -1)
    assert (ref - got).abs().max() < 1e-5
    # a re-base rotated the window layers' keys: layer 0's key of a token depends on the token and its position only
    n = WINDOW - 1
    fresh = briefing.TrajectoryCache(lm, fold=None)
    start = cache.position - n
    forward_with_bias(lm, fresh.kv, cache.ids[-n:], start, None)
    want = fresh.kv.layers[0].keys[..., -n:, :]
    assert (cache.kv.layers[0].keys[..., -n:, :] - want).abs().max() < 1e-4
    # a per-call compaction compacts the global layer only
    am = cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.3))
    assert am.positions.shape[0] == 1 and am.stats.kept < cache.length
    assert briefing.generate(am, briefing.GenerationConfig(max_new_tokens=3, ignore_eos=True)).token_ids


def test_a_model_that_slides_on_every_layer_holds_its_window_and_compacts_within_it(tok):
    lm = tiny_model("mistral-sliding", tok, max_positions=512)
    assert lm.held_layers == [0, 1] and not lm.window_layers
    cache = briefing.TrajectoryCache(lm)
    for _ in range(20):
        cache.extend(TEXT)
    assert cache.store.windowed and cache.length == WINDOW - 1 and not cache.folds and cache.rebases >= 1
    assert cache.kv_bytes() < 3 * (WINDOW + kv.WINDOW_MARGIN) * 2 * lm.num_layers * 16 * 4 * lm.kv_heads
    ctx = cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.5))
    assert ctx.stats.original_length == WINDOW - 1 and ctx.stats.kept == 12
    assert int(cache.origins().min()) == cache.tokens - (WINDOW - 1)   # the latest tokens
    out = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=3, ignore_eos=True))
    assert len(out.token_ids) == 3


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_keep_all_reproduces_the_models_own_logits_past_the_window(tok, family):
    """Every family, on a trajectory longer than the sliding window (and than the tiny context's fold budget for the
    global layers is not reached: the reference is one uncached forward)."""
    lm = tiny_model(family, tok, max_positions=1024)
    cache = briefing.TrajectoryCache(lm, TEXT[:1200], fold=None)
    assert cache.tokens > 4 * WINDOW
    ctx = cache.compact(PROMPT, briefing.KeepAll())
    ids = lm.encode(" The tide was")
    got = briefing.token_logprobs(ctx, " The tide was")[1]
    ref = own_logprobs(lm, cache.ids + ctx.prompt_ids + ids, cache.tokens + len(ctx.prompt_ids))
    assert (got - ref).abs().max() < 1e-4


SELECTORS = [briefing.AttentionMatching(), briefing.AttentionMatching(ratio=0.3, per_head=False),
             briefing.TopK(ratio=0.2), briefing.CoverageMatching(ratio=0.3, chunk=4), briefing.RandomKeep(ratio=0.2),
             briefing.RecentWindow(tokens=9), briefing.KeepAll(), briefing.KeepNone()]


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-hybrid", "mistral-sliding"])
def test_the_whole_path_makes_every_tensor_on_the_models_device(tok, family):
    """The model on the CPU, the default device "meta": a tensor made without the model's device would be on
    "meta" and fail the first operation that mixes it with the model's. Extend, fold, re-base, compaction with every
    selector, generation, log-likelihood, and the workers."""
    from agents import BriefedWorker, LocalChatBackend, TextRecall, TextWorker

    lm = tiny_model(family, tok, max_positions=512)
    torch.set_default_device("meta")
    try:
        cache = briefing.TrajectoryCache(lm, chunk_tokens=64, budget=256, reserve=64,
                                         fold=briefing.FoldPolicy(recent=64, capture_stride=4))
        while cache.rebases < 1 or not (cache.folds or cache.store.windowed):
            cache.extend(TEXT)
        for selector in SELECTORS:
            ctx = cache.compact(PROMPT, selector)
            cache.remember(ctx)
            assert briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=2, temperature=0.7, top_p=0.9,
                                                                     seed=1)).token_ids
            assert briefing.loglikelihood(ctx, " The tide") < 0
        assert briefing.plain_context(lm, PROMPT).last_logits.device.type == "cpu"
        worker = BriefedWorker(lm=lm, max_new_tokens=2, reserve=96, recall=TextRecall(tokens=24),
                               fold=briefing.FoldPolicy(recent=48, capture_stride=4))
        assert worker.answer("What was low?", TEXT).briefing.trajectory_tokens > 256
        text = TextWorker(backend=LocalChatBackend(lm), max_new_tokens=2)
        assert text.answer("What was low?", TEXT[:300]).text is not None
    finally:
        torch.set_default_device(None)


def test_keep_all_in_bfloat16_matches_the_models_own_bfloat16_forward(tok):
    lm = tiny_model("qwen3-gqa", tok)
    lm.model.to(torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    cache = briefing.TrajectoryCache(lm, TEXT[:600], fold=None)
    ctx = cache.compact(PROMPT, briefing.KeepAll())
    ids = lm.encode(" The tide was")
    got = briefing.token_logprobs(ctx, " The tide was")[1]
    ref = own_logprobs(lm, cache.ids + ctx.prompt_ids + ids, cache.tokens + len(ctx.prompt_ids))
    assert (got - ref).abs().max() < 5e-2   # one bf16 forward against another: the same kernels, other chunking
    assert cache.kv.layers[0].keys.dtype == torch.bfloat16


def test_the_fit_beats_top_k_in_bfloat16(tok):
    """The solves run in float32 whatever the cache's dtype: in bf16 the fit still matches the block output better
    than the kept keys alone, and the fitted values come back in bf16."""
    lm = tiny_model("llama-gqa", tok, max_positions=1024)
    lm.model.to(torch.bfloat16)
    cache = briefing.TrajectoryCache(lm, TEXT[:1500], fold=None)
    ctx = cache.compact(PROMPT, briefing.AttentionMatching(ratio=0.2))
    assert ctx.stats.fit_error is not None and ctx.stats.fit_error < 0.8 * ctx.stats.fit_error_topk
    assert ctx.kv.layers[0].values.dtype == torch.bfloat16 and ctx.stats.fallback is None


def test_device_and_dtype_choices_and_their_errors(monkeypatch):
    from briefing.errors import ModelLoadError
    from briefing.model import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype(torch.float32) == torch.float32
    with pytest.raises(ModelLoadError, match="device='cuda': CUDA is not available here.*use device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(ModelLoadError, match="dtype=float16 on the CPU"):
        resolve_dtype(torch.float16, torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="dtype='half' is not a dtype"):
        resolve_dtype("half")
    with pytest.raises(ModelLoadError, match="device='gpu3' is not a device"):
        resolve_device("gpu3")
    with pytest.raises(ModelLoadError,
                       match=r"'no-such-model' is not a known model \(smollm2-135m, gemma3-270m\).*local folder"):
        briefing.load_model("no-such-model")


def test_sliding_window_models_say_which_transformers_they_need(monkeypatch):
    """Below the transformers that records a sliding-window cache's past, a sliding model is refused in one line."""
    import briefing.model as model
    from briefing.errors import ModelLoadError
    from transformers import AutoModelForCausalLM, MistralConfig

    from tests.tiny import tiny_tokenizer

    monkeypatch.setattr(model, "window_layers_supported", lambda: False)
    cfg = MistralConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=16)
    with pytest.raises(ModelLoadError, match=r"need transformers >= 5\.24.*pip install 'transformers>=5\.24,<6'"):
        briefing.LoadedModel(model=AutoModelForCausalLM.from_config(cfg), tokenizer=tiny_tokenizer(), name="old")


def test_global_allocation_and_latent_recall_make_every_tensor_on_the_models_device(tok):
    """The importance, a global and a hybrid allocation's padded selection and fit, and latent recall (archive,
    representatives, lookup, re-attached blocks) with the default device "meta": every tensor follows the model's
    device."""
    from agents import BriefedWorker, LatentRecall

    lm = tiny_model("llama-gqa", tok, max_positions=512)
    torch.set_default_device("meta")
    try:
        cache = briefing.TrajectoryCache(lm, TEXT[:600], fold=None, importance=True)
        for sel in (briefing.AttentionMatching(ratio=0.2, allocation="global", agnostic=1.0, sinks=4),
                    briefing.AttentionMatching(ratio=0.2, allocation="hybrid", agnostic=0.9, sinks=4)):
            ctx = cache.compact(PROMPT, sel)
            assert briefing.loglikelihood(ctx, " The tide") < 0
        worker = BriefedWorker(lm=lm, max_new_tokens=2, reserve=96, cache_budget=192, recall=LatentRecall(tokens=32),
                               fold=briefing.FoldPolicy(recent=48, capture_stride=4))
        b = worker.brief("What was low?", TEXT + TEXT)
        assert b.cache.folds and b.stats.recalled_tokens > 0 and b.recalled.how == "latent:attach"
        assert b.loglikelihood(" The tide") < 0
    finally:
        torch.set_default_device(None)
