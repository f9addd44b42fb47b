"""Every selector, the user-written example included, on synthetic scores and on the tiny random-weight models
(no embedded model needed); constructors refuse bad values with one line naming the argument."""
from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import briefing
from briefing.errors import BriefingError
from tests.tiny import FAMILIES, tiny_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


RecencyWeighted = load_example("custom_selector").RecencyWeighted


@dataclass(kw_only=True)
class EveryOther(briefing.Selector):
    """A select()-based custom selector that asks for the fit: the fit step needs no scores."""

    fit: ClassVar[briefing.Fit | None] = briefing.Fit()

    def select(self, layers, kv_heads, length, scores=None, *, count=None, device=None):
        every = torch.arange(0, length, 2, device=device)[:count]                 # [t]
        return every.view(1, 1, -1).expand(layers, kv_heads, -1)


# name -> (selector, expected kept count for a length T, or None when a threshold decides)
SELECTORS = {
    "attention-matching tau": (lambda: briefing.AttentionMatching(tau=0.0), None),
    "attention-matching ratio": (lambda: briefing.AttentionMatching(ratio=0.3), lambda T: math.ceil(0.3 * T)),
    "attention-matching tokens shared": (lambda: briefing.AttentionMatching(tokens=7, per_head=False), lambda T: 7),
    "topk ratio": (lambda: briefing.TopK(ratio=0.25), lambda T: math.ceil(0.25 * T)),
    "topk, no look-ahead, look-back": (lambda: briefing.TopK(ratio=0.25, look_ahead=0, look_back=3),
                                       lambda T: math.ceil(0.25 * T)),
    "coverage: chunks, recent window": (lambda: briefing.CoverageMatching(ratio=0.3, chunk=4, protect_last=2),
                                        lambda T: math.ceil(0.3 * T)),
    "topk tokens with fit": (lambda: briefing.TopK(tokens=6, fit=briefing.Fit()), lambda T: 6),
    "random": (lambda: briefing.RandomKeep(ratio=0.2, seed=3), lambda T: math.ceil(0.2 * T)),
    "recent": (lambda: briefing.RecentWindow(tokens=9), lambda T: 9),
    "keep-all": (lambda: briefing.KeepAll(), lambda T: T),
    "keep-none": (lambda: briefing.KeepNone(), lambda T: 0),
    "example: recency-weighted": (lambda: RecencyWeighted(ratio=0.3, boost=2.0), lambda T: math.ceil(0.3 * T)),
    "example: recency-weighted with fit": (lambda: RecencyWeighted(tokens=8, fit=briefing.Fit()), lambda T: 8),
    "custom select() with fit": (lambda: EveryOther(), lambda T: (T + 1) // 2),
}


def synthetic_scores(L: int = 3, H: int = 2, T: int = 40, peak: int = 23, seed: int = 0) -> briefing.Scores:
    g = torch.Generator().manual_seed(seed)
    per_head = torch.rand(L, H, T, generator=g) * 0.01                      # [L, H, T]
    per_head[..., peak] = 1.0
    per_head = per_head / per_head.sum(-1, keepdim=True)
    return briefing.Scores(per_head=per_head, shared=per_head.mean(dim=(0, 1)))


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_on_synthetic_scores(name):
    make, expected = SELECTORS[name]
    selector = make()
    L, H, T, peak = 3, 2, 40, 23
    scores = synthetic_scores(L, H, T, peak)
    idx = selector.select(L, H, T, scores if selector.needs_scores else None)  # [L, H, t]
    assert idx.dim() == 3 and idx.shape[:2] == (L, H) and idx.dtype == torch.long
    t = idx.shape[-1]
    if expected is not None:
        assert t == expected(T)
    else:
        assert 0 < t < T
    if t:
        assert bool((idx[..., 1:] > idx[..., :-1]).all()), "rows sorted, no repeats"
        assert int(idx.min()) >= 0 and int(idx.max()) < T
    if isinstance(selector, briefing.SizedSelector):
        assert bool((idx[..., 0] == 0).all()), "the sink is kept"
    if selector.needs_scores:
        assert bool((idx == peak).any(-1).all()), "the planted peak is kept by every head"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_on_tiny_models(family, name):
    make, expected = SELECTORS[name]
    selector = make()
    tiny = tiny_model(family)
    cache = briefing.TrajectoryCache(tiny, "The orchestrator found that the key is 4417.")
    cache.extend(" Then it checked the second file and found nothing.")
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.kv.layers]
    ctx = cache.compact(" Question: what is the key? Answer:", selector)
    T = cache.length
    assert ctx.stats.kept == (expected(T) if expected else ctx.stats.kept) and ctx.stats.original_length == T
    assert ctx.positions.shape[:2] == (len(tiny.held_layers), tiny.config.num_key_value_heads)
    fitted = selector.fit is not None and 0 < ctx.stats.kept < T
    assert (ctx.beta is not None) == fitted and (ctx.stats.fit_error is not None) == fitted
    assert ctx.stats.fallback is None
    out = briefing.generate(ctx, briefing.GenerationConfig(max_new_tokens=3, ignore_eos=True))
    assert len(out.token_ids) == 3 and math.isfinite(briefing.loglikelihood(ctx, " 4417"))
    assert all(torch.equal(k, layer.keys) and torch.equal(v, layer.values)
               for (k, v), layer in zip(before, cache.kv.layers, strict=True)), "the full cache is untouched"


def test_fit_is_a_separate_step():
    """AttentionMatching without its fit is TopK; TopK with the fit is AttentionMatching at the same size."""
    tiny = tiny_model("llama-gqa")
    cache = briefing.TrajectoryCache(tiny, "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu")
    prompt = " Which letter? Answer:"
    topk = cache.compact(prompt, briefing.TopK(ratio=0.4))
    am_nofit = cache.compact(prompt, briefing.AttentionMatching(ratio=0.4, fit=None))
    am = cache.compact(prompt, briefing.AttentionMatching(ratio=0.4))
    topk_fit = cache.compact(prompt, briefing.TopK(ratio=0.4, fit=briefing.Fit()))
    assert torch.equal(topk.positions, am.positions) and torch.equal(topk.positions, am_nofit.positions)
    logprobs = {name: briefing.token_logprobs(ctx, " beta gamma")[1]
                for name, ctx in dict(topk=topk, am_nofit=am_nofit, am=am, topk_fit=topk_fit).items()}
    assert am_nofit.beta is None and torch.equal(logprobs["topk"], logprobs["am_nofit"])
    assert am.beta is not None and torch.allclose(logprobs["am"], logprobs["topk_fit"])
    assert not torch.allclose(logprobs["am"], logprobs["topk"])
    custom = cache.compact(prompt, EveryOther())
    assert custom.beta is not None and custom.stats.fit_error < custom.stats.fit_error_topk + 1e-6


def test_capability_flags():
    assert briefing.KeepAll.keeps_all and not briefing.KeepNone.keeps_all
    assert briefing.TopK.needs_scores and not briefing.RandomKeep.needs_scores
    assert briefing.AttentionMatching().fit == briefing.Fit() and briefing.TopK().fit is None
    assert not briefing.RecentWindow().reuse_prompt_kv and briefing.TopK().reuse_prompt_kv
    assert briefing.AttentionMatching().tau == 1.0 and briefing.AttentionMatching(ratio=0.2).tau is None
    assert briefing.TopK().ratio == 0.1 and briefing.TopK(tokens=3).ratio is None


@pytest.mark.parametrize("cls", [briefing.TopK, briefing.AttentionMatching, briefing.RandomKeep,
                                 briefing.RecentWindow, RecencyWeighted])
def test_positional_arguments_are_refused(cls):
    with pytest.raises(TypeError):
        cls(50)


BAD = [
    (briefing.TopK, dict(ratio=1.5), "ratio must be a number in \\(0, 1\\]"),
    (briefing.TopK, dict(ratio=0.0), "ratio"),
    (briefing.TopK, dict(ratio=float("nan")), "ratio"),
    (briefing.TopK, dict(ratio=True), "ratio"),
    (briefing.TopK, dict(tokens=0), "tokens must be an integer >= 1"),
    (briefing.TopK, dict(tokens=2.5), "tokens"),
    (briefing.TopK, dict(ratio=0.2, tokens=5), "ratio or tokens, not both"),
    (briefing.TopK, dict(smooth_kernel=4), "smooth_kernel must be an odd integer"),
    (briefing.TopK, dict(sinks=-1), "sinks must be an integer >= 0"),
    (briefing.TopK, dict(per_head="yes"), "per_head must be True or False"),
    (briefing.TopK, dict(reuse_prompt_kv=None), "reuse_prompt_kv"),
    (briefing.TopK, dict(fit=True), "fit must be a briefing.Fit or None"),
    (briefing.AttentionMatching, dict(tau=float("nan")), "tau must be a finite number"),
    (briefing.AttentionMatching, dict(tau=float("inf")), "tau"),
    (briefing.AttentionMatching, dict(tau=1.0, ratio=0.2), "one of tau, ratio or tokens"),
    (briefing.AttentionMatching, dict(ratio=-0.2), "ratio"),
    (briefing.AttentionMatching, dict(tokens=-3), "tokens"),
    (briefing.RandomKeep, dict(seed=-1), "seed must be an integer >= 0"),
    (briefing.RandomKeep, dict(ratio=2), "ratio"),
    (briefing.RecentWindow, dict(tokens=0), "KeepNone"),
    (briefing.Fit, dict(ridge=0.0), "ridge must be a finite number > 0"),
    (briefing.Fit, dict(beta_max=float("inf")), "beta_max"),
    (briefing.Fit, dict(nnls_iters=0), "nnls_iters must be an integer >= 1"),
    (RecencyWeighted, dict(boost=-1.0), "boost must be a finite number >= 0"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD, ids=[f"{c.__name__}-{k}" for c, k, _ in BAD])
def test_constructors_refuse_bad_values(cls, kwargs, match):
    with pytest.raises(BriefingError, match=match) as info:
        cls(**kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(cls.__name__)


def test_compact_refuses_a_non_selector():
    tiny = tiny_model("llama-gqa")
    cache = briefing.TrajectoryCache(tiny, "some trajectory text")
    with pytest.raises(BriefingError, match="selector must be a briefing.Selector"):
        cache.compact(" Question?", 0.1)


def test_custom_selector_example_runs_as_written(capsys):
    stats = load_example("custom_selector").main(tiny_model("qwen3-gqa"))
    printed = capsys.readouterr().out
    assert [s.method for s in stats] == ["TopK", "RecencyWeighted", "RecencyWeighted"]
    assert stats[0].kept == stats[1].kept and stats[2].fit_error is not None
    assert "RecencyWeighted(ratio=0.3" in printed and "log-prob gap to full" in printed
    assert "with RecencyWeighted:" in printed and "folded" in printed


def test_a_custom_selector_drives_the_folds():
    """The fold keeps what the policy's selector chooses: the example's recency prior, strong, keeps later tokens of
    each folded span than the default selector does on the same text, and every fold records the selector."""
    tiny = tiny_model("llama-gqa")
    text = "".join(f"Line {i}: the tide was low and the gulls were loud over the harbour. " for i in range(40))
    held = {}
    for name, selector in (("default", None), ("recency", RecencyWeighted(boost=50.0, sinks=0, fit=briefing.Fit()))):
        fold = briefing.FoldPolicy(selector=selector, recent=48, keep=0.25)
        cache = briefing.TrajectoryCache(tiny, budget=200, reserve=32, fold=fold)
        cache.extend(text[:1200])
        first = None
        while not cache.folds:
            cache.extend(text[len(cache.text):len(cache.text) + 40])
        first = cache.folds[0]
        assert first.selector.startswith("RecencyWeighted" if selector else "AttentionMatching")
        span = cache.origins()[..., first.span_start:first.span_start + first.kept].float()   # [L, H, kept]
        held[name] = float(span.mean())
    assert held["recency"] > held["default"] + 5   # later tokens of the span, on average
