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

from briefing import kv
from briefing.attention import BiasState
from briefing.context import CompactedCache, run_rows
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


class _Row:
    """One sequence being decoded: its tokens, text, and why it stopped (stop string, EOS, length)."""

    def __init__(self, lm: LoadedModel, cfg: GenerationConfig, eos: set[int],
                 on_token: Callable[[str], None] | None = None) -> None:
        self.lm, self.cfg, self.eos, self.on_token = lm, cfg, eos, on_token
        self.gen = torch.Generator(device=lm.device).manual_seed(cfg.seed) if cfg.seed is not None else None
        self.out: list[int] = []
        self.text, self.reason, self.done = "", "length", False

    def push(self, logits: torch.Tensor) -> None:
        """Pick the next token from logits [vocab]; mark the row done when it ends the answer."""
        token = _pick(logits, self.cfg, self.gen)
        if token in self.eos and not self.cfg.ignore_eos:
            self.reason, self.done = "eos", True
            return
        self.out.append(token)
        new_text = self.lm.decode(self.out)
        piece, self.text = new_text[len(self.text):], new_text
        hit = min((i for i in (self.text.find(s) for s in self.cfg.stop if s) if i >= 0), default=-1)
        if hit >= 0:
            self.text, self.reason, self.done = self.text[:hit], "stop", True
            return
        if self.on_token is not None:
            self.on_token(piece)
        if len(self.out) >= self.cfg.max_new_tokens:
            self.done = True

    def result(self, prompt_tokens: int, elapsed: float) -> GenerationResult:
        return GenerationResult(text=self.text, token_ids=self.out, finish_reason=self.reason,
                                prompt_tokens=prompt_tokens, time_s=elapsed,
                                time_per_token_s=elapsed / max(1, len(self.out)))


def generate(ctx: CompactedCache, config: GenerationConfig | None = None, *,
             on_token: Callable[[str], None] | None = None, lm: LoadedModel | None = None) -> GenerationResult:
    """Continue after the context's prompt. `lm`, if given, must be the model the context was built with."""
    ctx.check_model(lm)
    cfg = config or GenerationConfig()
    row = _Row(ctx.lm, cfg, _eos_ids(ctx.lm), on_token)
    logits = ctx.last_logits
    t0 = time.perf_counter()
    try:
        for step in range(cfg.max_new_tokens):
            row.push(logits)
            if row.done:
                break
            logits = ctx.forward([row.out[-1]], ctx.next_position + step)[-1]
    finally:
        ctx.reset()
    return row.result(len(ctx.prompt_ids), time.perf_counter() - t0)


def generate_batch(ctxs: list[CompactedCache], config: GenerationConfig | None = None) -> list[GenerationResult]:
    """`generate` on several contexts of one model at once: each step forwards one token of every unfinished row
    as one batch (rows padded to the longest context, a mask per attention kind keeping each row to its own keys
    and window, each row's beta on its own kept keys). Greedy answers equal those of `generate` one context at a
    time (up to float rounding in the batched matmuls); with a seed every row samples from its own generator seeded
    alike. The contexts stay reusable. One context: `generate`."""
    if not ctxs:
        return []
    lm = ctxs[0].lm
    for ctx in ctxs[1:]:
        ctx.check_model(lm)
    cfg = config or GenerationConfig()
    if len(ctxs) == 1:
        return [generate(ctxs[0], cfg)]
    batch = RowBatch(ctxs)
    eos = _eos_ids(lm)
    rows = [_Row(lm, cfg, eos) for _ in ctxs]
    logits = [ctx.last_logits for ctx in ctxs]
    t0 = time.perf_counter()
    for step in range(cfg.max_new_tokens):
        for row, lg in zip(rows, logits):
            if not row.done:
                row.push(lg)
        if all(row.done for row in rows):
            break
        tokens = [row.out[-1] if row.out else 0 for row in rows]   # a finished row repeats its last token, ignored
        logits = list(batch.step(tokens))                          # B x [vocab]
    elapsed = time.perf_counter() - t0
    return [row.result(len(ctx.prompt_ids), elapsed) for row, ctx in zip(rows, ctxs)]


class RowBatch:
    """Several contexts as one batch of rows for decoding: per model layer, each row's keys and values [1, H, len, d]
    right-padded to the longest row (the layers become plain held layers, copied: the contexts are not touched), the
    tokens of each step appended after the padding. The mask of a full-attention layer lets a row see its own
    keys and its own new tokens; a sliding-window layer's also drops what is `sliding_window` tokens back or more in
    the row's own token order (its keys are consecutive tokens: the window, then the prompt), as the model's mask
    does in `generate`. Each row's beta [H, t] sits on its first t keys. A mask per layer (`BiasState.masks`): the
    layers of one context may hold different counts (a global allocation, `compaction.by_layer`)."""

    def __init__(self, ctxs: list[CompactedCache]) -> None:
        lm = ctxs[0].lm
        self.lm, self.ctxs, dev = lm, ctxs, lm.device
        self.kinds = lm.layer_types
        self.lengths: list[torch.Tensor] = []                                   # per layer: [B] keys per row
        layers = []
        for i in range(len(self.kinds)):
            rows = [(ctx.kv.layers[i].keys, ctx.kv.layers[i].values) for ctx in ctxs]   # [1, H, len_b, d]
            lengths = torch.tensor([k.shape[-2] for k, _ in rows], device=dev)  # [B]
            self.lengths.append(lengths)
            width = int(lengths.max())
            keys = torch.cat([_pad_keys(k, width) for k, _ in rows])            # [B, H, width, d]
            values = torch.cat([_pad_keys(v, width) for _, v in rows])          # [B, H, width, d]
            layers.append(kv.held_layer(keys, values))
        self.cache = kv.assemble(layers)
        self.width = [int(n.max()) for n in self.lengths]                       # padded keys per layer
        self.window = lm.sliding_window
        self.beta = _batch_beta([ctx.beta for ctx in ctxs], len(self.kinds))
        self.positions = torch.tensor([ctx.next_position for ctx in ctxs], device=dev)   # [B]
        self.steps = 0

    def mask(self, layer: int) -> torch.Tensor:
        """[B, 1, 1, keys]: True where the row's next token attends in `layer`."""
        n, width, dev = self.lengths[layer], self.width[layer], self.lm.device
        col = torch.arange(width + self.steps + 1, device=dev)[None, :]          # [1, keys]
        own = col < n[:, None]                                                   # [B, keys] the row's context
        new = col >= width                                                       # [1, keys] tokens of the steps
        seen = own | new                                                         # [B, keys]
        if self.kinds[layer] == "sliding_attention" and self.window is not None:
            order = torch.where(own, col, n[:, None] + col - width)               # [B, keys] token order in the row
            seen = seen & (n[:, None] + self.steps - order < self.window)
        return seen[:, None, None, :]                                            # [B, 1, 1, keys]

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Forward one token per row; returns logits [B, vocab]."""
        dev = self.lm.device
        ids = torch.tensor(tokens, device=dev)[:, None]                          # [B, 1]
        positions = (self.positions + self.steps)[:, None]                       # [B, 1]
        masks = {i: self.mask(i) for i in range(len(self.kinds))}
        logits = run_rows(self.lm, self.cache, ids, positions, BiasState(beta=self.beta, masks=masks), keep=1)
        self.steps += 1
        return logits[:, -1]                                                     # [B, vocab]


def _pad_keys(x: torch.Tensor, width: int) -> torch.Tensor:
    """[1, H, n, d] -> [1, H, width, d], zeros after."""
    return torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[-2]))


def _batch_beta(betas: list[list[torch.Tensor | None] | None], layers: int) -> list[torch.Tensor | None] | None:
    """Per layer, the rows' beta [H, t_b] as [B, H, max t] (zeros past a row's t; a row without beta: zeros)."""
    if all(b is None for b in betas):
        return None
    out: list[torch.Tensor | None] = []
    for i in range(layers):
        rows = [b[i] if b is not None and i < len(b) else None for b in betas]
        real = [r for r in rows if r is not None and r.numel()]
        if not real:
            out.append(None)
            continue
        t = max(r.shape[-1] for r in real)
        ref = real[0]
        out.append(torch.stack([torch.nn.functional.pad(r, (0, t - r.shape[-1])) if r is not None and r.numel()
                                else torch.zeros(ref.shape[0], t, dtype=ref.dtype, device=ref.device)
                                for r in rows]))                                 # [B, H, t]
    return out


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
