"""Query-agnostic importance: how much the model needs each trajectory position to reconstruct the text.

KVzip (Kim et al., 2025, "Query-Agnostic KV Cache Compression with Context Reconstruction") scores each key by the
most attention any query pays to it while the model repeats the context: a question that quotes the text and asks
how it goes on is such a reconstruction, whatever words it uses. KVzip pays 2-3 extra prefills per compression. A
trajectory grows by appends, so here the score is computed ONCE per appended chunk, at extend time, and kept with
the cache (`KVStore.importance`, one float per (held layer, KV head, position)): carried through folds and
re-bases, and handed to every selector in its `Scores` (`importance`).

Per prefilled chunk c (slots [start, stop) of the held layers), one more forward over the cache, rolled back:
    repeat = "Repeat the previous context exactly." (later chunks: "... starting with" + the last 8 tokens before
             the chunk) + the chunk's tokens again
and in each held layer, per KV head, with the repeat's queries q (its query heads stacked) and the subsample of keys
k = [the first SINKS slots, the last `window` slots up to the chunk's end, the repeat's own keys] (KVzip's
subsample; the window, the cache's chunk size, keeps the softmax's width the same for a short append as for a full
chunk, so scores of chunks of any size compare):
    p = softmax(s q k^T + b, causal within the repeat)     [g * r, SINKS + w + r]
    importance[start:stop] = max over the rows of p at the chunk's columns
The extra cost is one forward of the chunk (plus a dozen prompt tokens) over the cache and the score's own attention
over the window: 3-4x the chunk's prefill measured on a CPU (docs/benchmarks.md), so a cache scores only on request.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from briefing import kv
from briefing.attention import BiasState
from briefing.context import run_model

REPEAT_FIRST = "\n\nRepeat the previous context exactly.\n"
REPEAT_NEXT = "\n\nRepeat the part of the previous context exactly, starting with"
PREVIOUS_TOKENS = 8   # tokens before a later chunk that its repeat prompt quotes (KVzip's prev_postfix_size)
SINKS = 4             # first slots in every reconstruction softmax (attention sinks)
ROW_CHUNK = 512       # repeat rows per score block: bounds the [H, g, rows, keys] logits


@dataclass
class Reconstruction:
    """What the attention computes during a reconstruction forward: the held layers to score, the chunk's slots
    [start, stop), the slots [context, stop) in the softmax (context <= start) and the number of sink slots;
    `scores` per layer [kv_heads, stop - start]."""

    layers: set[int]
    start: int
    stop: int
    context: int
    sinks: int
    scores: dict[int, torch.Tensor] = field(default_factory=dict)

    def score(self, layer: int, query: torch.Tensor, key: torch.Tensor, scale: float,
              beta: torch.Tensor | None) -> None:
        """Called by the attention function (`BiasState.reconstruct`) in each held layer: see `score_layer`."""
        score_layer(self, layer, query, key, scale, beta)


def score_layer(rec: Reconstruction, layer: int, query: torch.Tensor, key: torch.Tensor, scale: float,
                beta: torch.Tensor | None) -> None:
    """KVzip's score for one layer: query [1, heads, r, d] of the repeat, key [1, KVH, k, d] (cache + repeat),
    beta [KVH, F] a stored bias on the first F slots (or None). Stores [KVH, stop - start] in rec.scores."""
    _, heads, r, d = query.shape
    kv_heads = key.shape[1]
    g = heads // kv_heads
    s, w, c = rec.sinks, rec.stop - rec.context, rec.stop - rec.start
    sub = torch.cat([key[0, :, :s], key[0, :, rec.context:rec.stop], key[0, :, -r:]], dim=1).float()  # [H, s+w+r, d]
    bias = torch.zeros(kv_heads, s + w + r, device=key.device)                     # [H, s + w + r]
    if beta is not None and beta.numel():   # a folded prefix's stored beta, where the subsample reaches it
        f = beta.shape[-1]
        bias[:, :min(s, f)] = beta[:, :min(s, f)].float()
        if rec.context < f:
            bias[:, s:s + min(w, f - rec.context)] = beta[:, rec.context:min(rec.stop, f)].float()
    q = query[0].float().reshape(kv_heads, g, r, d)                                 # [H, g, r, d]
    keys_t = sub.transpose(-1, -2)[:, None]                                         # [H, 1, d, s+w+r]
    best = torch.zeros(kv_heads, c, device=key.device)                              # [H, c]
    own = torch.arange(r, device=key.device)                                        # the repeat's own keys
    for a in range(0, r, ROW_CHUNK):
        rows = q[:, :, a:a + ROW_CHUNK]                                             # [H, g, n, d]
        n = rows.shape[2]
        logits = (rows @ keys_t).mul_(scale).add_(bias[:, None, None])              # [H, g, n, s+w+r]
        later = own[None, :] > (a + own[:n])[:, None]                               # [n, r] causal within it
        logits[..., s + w:].masked_fill_(later, float("-inf"))
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)                         # [H, g, n, 1]
        p = (logits[..., s + w - c:s + w] - lse).exp_()                             # [H, g, n, c] the chunk
        best = torch.maximum(best, p.amax(dim=(1, 2)))
    rec.scores[layer] = best


@torch.no_grad()
def reconstruction_scores(lm, store, start: int, stop: int, chunk: list[int], before: list[int], position: int,
                          window: int) -> torch.Tensor:
    """Importance [held layers, kv_heads, stop - start] of the chunk just prefilled into slots [start, stop) of
    `store` (its tokens `chunk`; `before`: the tokens preceding it; `position`: the RoPE position after it; `window`:
    slots up to the chunk's end in each softmax, at least the chunk). The store is left as it was."""
    prompt = REPEAT_FIRST if not before else REPEAT_NEXT
    ids = lm.encode(prompt) + (before[-PREVIOUS_TOKENS:] + lm.encode("\n") if before else []) + list(chunk)
    sinks = min(SINKS, start)
    context = max(sinks, min(start, stop - window))
    rec = Reconstruction(layers=set(store.held), start=start, stop=stop, context=context, sinks=sinks)
    state = BiasState(beta=store.attention_bias(), reconstruct=rec)
    marks = kv.marks(store.kv)
    try:
        run_model(lm, store.kv, ids, position, state, last_only=True)
    finally:
        kv.rollback(store.kv, marks)
    return torch.stack([rec.scores[i] for i in store.held])                        # [Lh, H, c]
