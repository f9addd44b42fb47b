"""Decoding on a CompactedCache: RoPE positions continue from the trajectory's true length.

transformers' generate() derives positions from the cache length, which is wrong for a compacted cache,
so the loop is written here: greedy or temperature/top-p sampling, max tokens, stop strings, EOS, and an
optional per-token callback. The context is truncated back afterwards, so it can be reused.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from pydantic import BaseModel, Field

from briefing.context import CompactedCache
from briefing.model import LoadedModel


class GenerationConfig(BaseModel):
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # decode through EOS (benchmarks of per-token time)


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "eos"
    prompt_tokens: int
    time_s: float
    time_per_token_s: float


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = {lm.tokenizer.eos_token_id}
    gen = getattr(lm.model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return {i for i in ids if i is not None}


def _pick(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> int:
    if cfg.temperature == 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def generate(ctx: CompactedCache, config: GenerationConfig | None = None, *,
             on_token: Callable[[str], None] | None = None, lm: LoadedModel | None = None) -> GenerationResult:
    """Continue after the context's prompt. `lm`, if given, must be the model the context was built with."""
    ctx.check_model(lm)
    cfg = config or GenerationConfig()
    gen = torch.Generator(device=ctx.lm.device).manual_seed(cfg.seed) if cfg.seed is not None else None
    eos, out, text, reason = _eos_ids(ctx.lm), [], "", "length"
    logits = ctx.last_logits
    t0 = time.perf_counter()
    try:
        for step in range(cfg.max_new_tokens):
            token = _pick(logits, cfg, gen)
            if token in eos and not cfg.ignore_eos:
                reason = "eos"
                break
            out.append(token)
            new_text = ctx.lm.decode(out)
            piece, text = new_text[len(text):], new_text
            hit = min((i for i in (text.find(s) for s in cfg.stop if s) if i >= 0), default=-1)
            if hit >= 0:
                text, reason = text[:hit], "stop"
                break
            if on_token is not None:
                on_token(piece)
            if step + 1 < cfg.max_new_tokens:
                logits = ctx.forward([token], ctx.next_position + step)[-1]
    finally:
        ctx.reset()
    elapsed = time.perf_counter() - t0
    return GenerationResult(text=text, token_ids=out, finish_reason=reason, prompt_tokens=len(ctx.prompt_ids),
                            time_s=elapsed, time_per_token_s=elapsed / max(1, len(out)))


def token_logprobs(ctx: CompactedCache, continuation: str, lm: LoadedModel | None = None) -> tuple[list[int],
                                                                                                   torch.Tensor]:
    """Teacher-forced log-probabilities [len(ids), vocab] of each continuation token given the context."""
    ctx.check_model(lm)
    ids = ctx.lm.encode(continuation)
    if not ids:
        raise ValueError("The continuation is empty: nothing to score.")
    try:
        rest = ctx.forward(ids[:-1], ctx.next_position) if len(ids) > 1 else ctx.last_logits[None][:0]
    finally:
        ctx.reset()
    logits = torch.cat([ctx.last_logits[None], rest], dim=0)
    return ids, torch.log_softmax(logits.float(), dim=-1)


def loglikelihood(ctx: CompactedCache, continuation: str, lm: LoadedModel | None = None) -> float:
    """Sum of log-probabilities of `continuation` (for scoring candidate answers)."""
    ids, logprobs = token_logprobs(ctx, continuation, lm)
    return float(logprobs.gather(-1, torch.tensor(ids, device=logprobs.device)[:, None]).sum())
