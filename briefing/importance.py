"""Query-agnostic importance: how much the model needs each trajectory position to reconstruct the text.

KVzip (Kim et al., 2025, "Query-Agnostic KV Cache Compression with Context Reconstruction") scores each key by the
most attention any query pays to it while the model repeats the context: a question that quotes the text and asks
how it goes on is such a reconstruction, whatever words it uses. KVzip pays 2-3 extra prefills per compression. A
trajectory grows by appends, so here the score is computed ONCE per appended chunk, at extend time, and kept with
the cache (`KVStore.importance`, one float per (held layer, KV head, position)): carried through folds and
re-bases, and handed to every selector in its `Scores` (`importance`).

Per prefilled chunk c (slots [start, stop) of the held layers), one more forward:
    repeat = "Repeat the previous context exactly." (later chunks: "... starting with" + the last 8 tokens before
             the chunk) + the chunk's tokens again
and in each held layer, per KV head, with the repeat's queries q (its query heads stacked) and the subsample of keys
k = [the first SINKS slots, the last `window` slots up to the chunk's end, the repeat's own keys] (KVzip's
subsample; the window, `TrajectoryCache.importance_window` (512 tokens by default; a chunk longer than the window is
scored in pieces of it), keeps the softmax's width the same for a short append as for a full chunk, so
scores of chunks of any size compare):
    p = softmax(s q k^T + b, causal within the repeat)     [g * r, SINKS + w + r]
    importance[start:stop] = max over the rows of p at the chunk's columns
The repeat's forward attends to that subsample only (a copy of those slots: `subsample_cache`), so p is the forward's
own attention: on a CPU, torch's flash kernel gives the layer's output and p's normaliser in two unmasked parts, the
subsample and the repeat's own keys, causal (`attention.attend_split`), and only the chunk's columns are formed
(`score_layer`); the forward stops once its last held layer is scored (`Scored`: nothing reads what comes after).
KVzip's own forward attends to the whole cache (`windowed=False`,
kept as the reference this estimate is measured against: `benchmarks.importance_check --windowed`). The extra cost
is about one forward of the chunk over a window, flat in the trajectory's length: docs/benchmarks.md ("Round 6").
A cache scores only on request.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from briefing import kv
from briefing.attention import BiasState, flash_cpu, with_bias
from briefing.context import run_model

REPEAT_FIRST = "\n\nRepeat the previous context exactly.\n"
REPEAT_NEXT = "\n\nRepeat the part of the previous context exactly, starting with"
PREVIOUS_TOKENS = 8   # tokens before a later chunk that its repeat prompt quotes (KVzip's prev_postfix_size)
SINKS = 4             # first slots in every reconstruction softmax (attention sinks)
ROW_CHUNK = 512       # rows (query heads x repeat tokens) per score block: bounds the [H, rows, keys] logits


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
    whole: bool = False   # the softmax spans every key of the forward: its own normaliser serves (`attend_split`)
    scores: dict[int, torch.Tensor] = field(default_factory=dict)

    def score(self, layer: int, query: torch.Tensor, key: torch.Tensor, scale: float,
              beta: torch.Tensor | None, lse: torch.Tensor | None = None) -> None:
        """Called by the attention function (`BiasState.reconstruct`) in each held layer: see `score_layer`. Raises
        `Scored` once the last held layer is scored: the rest of the forward feeds no score."""
        score_layer(self, layer, query, key, scale, beta, lse)
        if layer == max(self.layers):   # the layers run in order: this one is the forward's last score
            raise Scored


class Scored(Exception):
    """The reconstruction forward's last held layer is scored: what the forward would compute after it (that layer's
    output and MLP, the layers above it, the final norm) is read by nothing, so `reconstruction_scores` stops the
    forward there. The cache it ran on is a discarded copy or rolled back."""


def score_layer(rec: Reconstruction, layer: int, query: torch.Tensor, key: torch.Tensor, scale: float,
                beta: torch.Tensor | None, lse: torch.Tensor | None = None) -> None:
    """KVzip's score for one layer: query [1, heads, r, d] of the repeat, key [1, KVH, k, d] (cache + repeat),
    beta [KVH, F] a stored bias on the first F slots (or None), lse [1, heads, r] the softmax's normaliser when the
    forward's attention computed it over the same keys (None: computed here). Stores [KVH, stop - start] in
    rec.scores.

    Only the chunk's c columns are formed, in one product whose two extra columns carry the bias and the row's
    normaliser (`normaliser` where the forward gave none), and their most over the rows is taken before the exp (exp
    is monotonic: one exp per key, not per row and key):
        log p[i, j] = [s q_i, 1, -lse_i] . [k_j, b_j, 1] = s q_i . k_j + b_j - lse_i   for j in the chunk."""
    _, heads, r, d = query.shape
    kv_heads = key.shape[1]
    g, c = heads // kv_heads, rec.stop - rec.start
    beta = beta if beta is not None and beta.numel() else None   # a folded prefix's stored beta on its first F slots
    q = query[0].float().reshape(kv_heads, g, r, d)                                     # [H, g, r, d]
    if lse is not None:
        lse = lse[0].reshape(kv_heads, g, r)                                            # [H, g, r]
    else:
        lse = normaliser(rec, q, key, scale, beta)                                      # [H, g, r]
    cols = torch.zeros(kv_heads, c, 2, device=key.device)                              # [H, c, 2]: bias, 1
    cols[..., 1] = 1.0
    if beta is not None and rec.start < beta.shape[-1]:
        f = min(rec.stop, beta.shape[-1])
        cols[:, :f - rec.start, 0] = beta[:, rec.start:f].float()
    keys_t = torch.cat([key[0, :, rec.start:rec.stop].float(), cols], dim=-1).transpose(-1, -2)   # [H, d + 2, c]
    rows = torch.cat([q * scale, torch.ones_like(q[..., :1]), -lse[..., None]], dim=-1)  # [H, g, r, d + 2]
    rows = rows.reshape(kv_heads, g * r, d + 2)                                         # [H, g r, d + 2]
    best = torch.full((kv_heads, c), float("-inf"), device=key.device)                  # [H, c] log p, the most
    for a in range(0, g * r, ROW_CHUNK):
        log_p = rows[:, a:a + ROW_CHUNK] @ keys_t                                       # [H, n, c] s q.k + b - lse
        best = torch.maximum(best, log_p.amax(dim=1))
    rec.scores[layer] = best.exp()   # exp is monotonic: the most of p is exp of the most of log p (one exp per key)


def normaliser(rec: Reconstruction, q: torch.Tensor, key: torch.Tensor, scale: float,
               beta: torch.Tensor | None) -> torch.Tensor:
    """The reconstruction softmax's normaliser [H, g, r] where the forward did not compute it: in two parts, the
    prefix [sinks, window] (no mask; beta on the slots it reaches) and the repeat's own keys (causal), each by
    `row_lse`. q [H, g, r, d], key [1, H, k, d] (cache + repeat)."""
    kv_heads, _, r, _ = q.shape
    s, w = rec.sinks, rec.stop - rec.context
    prefix = torch.cat([key[0, :, :s], key[0, :, rec.context:rec.stop]], dim=1).float()    # [H, s + w, d]
    bias = None
    if beta is not None:
        f = beta.shape[-1]
        bias = torch.zeros(kv_heads, s + w, device=key.device)                          # [H, s + w]
        bias[:, :min(s, f)] = beta[:, :min(s, f)].float()
        if rec.context < f:
            bias[:, s:s + min(w, f - rec.context)] = beta[:, rec.context:min(rec.stop, f)].float()
    return torch.logaddexp(row_lse(q, prefix, scale, bias, causal=False),
                           row_lse(q, key[0, :, -r:].float(), scale, None, causal=True))   # [H, g, r]


def row_lse(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """logsumexp over the keys of each query row: q [H, g, r, d], k [H, K, d], bias [H, K] or None; causal: row i
    sees keys 0..i (K == r). Returns [H, g, r] in fp32. On a CPU, torch's fused flash kernel (it returns the
    normaliser; the bias rides on one extra head dimension, as in `briefing.attention`); elsewhere, blocks of rows."""
    kv_heads, g, r, d = q.shape
    if k.shape[1] == 0:
        return q.new_full((kv_heads, g, r), float("-inf"))                              # [H, g, r]
    op = flash_cpu(q)
    if op is None:
        return lse_blocked(q, k, scale, bias, causal)
    if bias is not None:   # the query heads of KV head h as a batch row of their own: [1, H g, r, d], [1, H, K, d]
        q, k, _ = with_bias(q.reshape(1, kv_heads * g, r, d), k[None], None, bias, scale)
        q, k = q.view(kv_heads, g, r, d + 1), k[0]                                      # [H, g, r, d+1], [H, K, d+1]
    keys = k[:, None].expand(kv_heads, g, *k.shape[1:])                                 # [H, g, K, d']
    _, lse = op(q.contiguous(), keys, keys, 0.0, causal, scale=scale)                   # [H, g, r]
    return lse.float()


def lse_blocked(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None,
                causal: bool) -> torch.Tensor:
    """`row_lse` on any device, by blocks of ROW_CHUNK rows: [H, g, r]."""
    kv_heads, g, r, d = q.shape
    keys_t = k.transpose(-1, -2)[:, None]                                               # [H, 1, d, K]
    out = []
    for a in range(0, r, ROW_CHUNK):
        logits = (q[:, :, a:a + ROW_CHUNK] @ keys_t).mul_(scale)                        # [H, g, n, K]
        if bias is not None:
            logits.add_(bias[:, None, None])
        if causal:
            cols = torch.arange(k.shape[1], device=q.device)
            rows = torch.arange(a, a + logits.shape[2], device=q.device)
            logits.masked_fill_(cols[None, :] > rows[:, None], float("-inf"))           # [n, K] later keys
        out.append(torch.logsumexp(logits, dim=-1))                                     # [H, g, n]
    return torch.cat(out, dim=-1)                                                       # [H, g, r]


def subsample_cache(store, sinks: int, context: int, stop: int):
    """A per-pass cache of the held layers' slots [0, sinks) and [context, stop) (copies; a window layer as the model
    holds it) and their stored beta, per model layer: what the reconstruction's softmax sees, and all that the
    repeat's forward then attends to."""
    layers, beta = [], []
    bias = store.attention_bias()
    held = set(store.held)
    for i, layer in enumerate(store.kv.layers):
        if i not in held:
            layers.append(kv.copy_window(layer) if kv.is_window(layer) else kv.held_layer(layer.keys, layer.values))
            beta.append(None if bias is None else bias[i])
            continue
        keys = torch.cat([layer.keys[..., :sinks, :], layer.keys[..., context:stop, :]], dim=-2)       # [1, H, s+w, d]
        values = torch.cat([layer.values[..., :sinks, :], layer.values[..., context:stop, :]], dim=-2)
        layers.append(kv.held_layer(keys, values))
        b = None if bias is None else bias[i]                                       # [H, F] or None
        if b is not None and b.numel():
            f = b.shape[-1]
            b = torch.cat([b[:, :min(sinks, f)], b[:, min(context, f):min(stop, f)]], dim=-1)
        beta.append(b)
    return kv.assemble(layers), (None if bias is None else beta)


@torch.no_grad()
def reconstruction_scores(lm, store, start: int, stop: int, chunk: list[int], before: list[int], position: int,
                          window: int, windowed: bool = True) -> torch.Tensor:
    """Importance [held layers, kv_heads, stop - start] of the chunk just prefilled into slots [start, stop) of
    `store` (its tokens `chunk`; `before`: the tokens preceding it; `position`: the RoPE position after it; `window`:
    slots up to the chunk's end in each softmax, at least the chunk). windowed (the cache's way): the repeat's forward
    attends to the softmax's subsample only; False: to the whole cache, as KVzip's own does (the reference). The
    store is left as it was."""
    prompt = REPEAT_FIRST if not before else REPEAT_NEXT
    ids = lm.encode(prompt) + (before[-PREVIOUS_TOKENS:] + lm.encode("\n") if before else []) + list(chunk)
    sinks = min(SINKS, start)
    context = max(sinks, min(start, stop - window))
    if windowed:
        cache, beta = subsample_cache(store, sinks, context, stop)
        w = stop - context
        rec = Reconstruction(layers=set(store.held), start=sinks + w - (stop - start), stop=sinks + w, context=sinks,
                             sinks=sinks, whole=True)
        with contextlib.suppress(Scored):
            run_model(lm, cache, ids, position, BiasState(beta=beta, reconstruct=rec), logits=False)
        return torch.stack([rec.scores[i] for i in store.held])                    # [Lh, H, c]
    rec = Reconstruction(layers=set(store.held), start=start, stop=stop, context=context, sinks=sinks)
    state = BiasState(beta=store.attention_bias(), reconstruct=rec)
    marks = kv.marks(store.kv)
    try:
        with contextlib.suppress(Scored):
            run_model(lm, store.kv, ids, position, state, logits=False)
    finally:
        kv.rollback(store.kv, marks)
    return torch.stack([rec.scores[i] for i in store.held])                        # [Lh, H, c]
