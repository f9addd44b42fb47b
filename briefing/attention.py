"""Attention with a per-layer, per-KV-head additive bias on the kept keys of a compacted cache.

Registered as attention implementation "briefing" (plus a mask function under the same name, so that
transformers builds a proper causal mask, new tokens at the END of the key sequence). While no `BiasState`
is active the function is plain SDPA. While one is active (a forward over a compacted or folded cache, or a
pass that captures post-RoPE queries) it adds `beta` to the logits of the first `t` keys (the kept
trajectory positions) and/or stores the queries.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "briefing"


@dataclass
class BiasState:
    """What the attention function does during one forward pass.

    beta: per layer, a tensor [kv_heads, t] (or [batch, kv_heads, t], a row's own) added to the logits of the first t
    keys (None: no bias).
    capture: if True, post-RoPE queries are stored per layer in `queries` ([batch, heads, q_len, head_dim]; only the
    tokens in `capture_rows` if given).
    """

    beta: list[torch.Tensor | None] | None = None
    capture: bool = False
    capture_rows: torch.Tensor | None = None  # query tokens to capture (indices into the forward's tokens)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    reconstruct: Any = None  # .layers, .score(layer, query, key, scale, beta): briefing.importance.Reconstruction
    masks: dict[int, torch.Tensor] | None = None  # per layer, a mask [B, 1, q, keys] in place of the model's own


_ACTIVE: contextvars.ContextVar[BiasState | None] = contextvars.ContextVar("briefing_bias", default=None)


@contextlib.contextmanager
def active(state: BiasState) -> Iterator[BiasState]:
    """Activate `state` for the forward passes run inside the block."""
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' SDPA attention (query [B, H, q, d]; key, value [B, KVH, k, d]; returns ([B, q, H, d], None)),
    except on a CPU with grouped KV heads and a mask: there torch's kernel takes the groups itself (`enable_gqa`)
    instead of a copy of every key and value per query head, which transformers makes whenever a mask is given (CUDA's
    fused kernels need no mask for that). The result is the same bit for bit (float32 and bfloat16, boolean and
    additive masks); a few query tokens over a long cache (a lookup, a call prompt, an option scored) save that copy
    at every layer. One query token stays with transformers, which packs the groups itself there (`pack_gqa`: no
    copy either, in a kernel shape whose float32 rounding differs from this one's), and so does a position bias."""
    grouped = key.shape[1] != query.shape[1]
    if (query.device.type != "cpu" or not grouped or attention_mask is None or query.shape[2] == 1
            or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None                                       # [B, q, H, d]


def briefing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, H, q, d]; key, value [B, KVH, k, d] (cache + new tokens). Returns ([B, q, H, d], None).

    The bias is carried by one extra head dimension, so transformers' own mask and SDPA kernel serve the
    biased forward too (no [heads, q, k] mask is built, which matters for long prefill chunks over a folded
    cache): q' = [q, 1], k' = [k, beta / scale] (0 past the first t keys), v' = [v, 0], so that
    scale * q' . k' = scale * q . k + beta exactly in real arithmetic.
    """
    state = _ACTIVE.get()
    if state is not None and state.masks is not None:
        attention_mask = state.masks[module.layer_idx]
    elif attention_mask is not None and attention_mask.shape[-1] != key.shape[-2]:
        attention_mask = own_width(attention_mask, query.shape[-2], key.shape[-2])
    if state is None:
        return sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    layer = module.layer_idx
    if state.capture:
        rows = state.capture_rows
        state.queries[layer] = (query if rows is None else query[:, :, rows]).detach()
    beta = state.beta[layer] if state.beta is not None and layer < len(state.beta) else None
    rec = state.reconstruct
    if rec is not None and layer in rec.layers:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        plain = state.masks is None and getattr(module, "is_causal", True) and \
            getattr(module, "sliding_window", None) is None   # the new tokens at the end, causal, see every key
        fused = attend_split(query, key, value, scale, beta) if rec.whole and plain else None
        rec.score(layer, query, key, scale, beta, None if fused is None else fused[1])
        if fused is not None:
            return fused[0], None
    if beta is None or not beta.numel():
        return sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    query, key, value = with_bias(query, key, value, beta, scale)                        # [B, *, *, d + 1]
    out, _ = sdpa(module, query, key, value, attention_mask, scaling=scale, dropout=dropout, **kwargs)
    return out[..., :-1].contiguous(), None                                              # [B, q, H, d]


def with_bias(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None, beta: torch.Tensor,
              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A bias beta [(B,) KVH, t] on the first t keys carried by one extra head dimension: query [B, H, q, d], key and
    value [B, KVH, k, d] -> q' = [q, 1], k' = [k, beta / scale] (0 past t), v' = [v, 0] (None stays None), so that
    scale * q' . k' = scale * q . k + beta, and any attention kernel (and its normaliser) serves the biased softmax."""
    batch, kv_heads, k_len = key.shape[0], key.shape[1], key.shape[2]
    extra = torch.zeros(batch, kv_heads, k_len, 1, dtype=key.dtype, device=key.device)  # [B, KVH, k, 1]
    extra[:, :, :beta.shape[-1], 0] = beta.to(key.dtype) / scale
    query = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1)                  # [B, H, q, d + 1]
    key = torch.cat([key, extra], dim=-1)                                                # [B, KVH, k, d + 1]
    if value is not None:
        value = torch.cat([value, torch.zeros_like(value[..., :1])], dim=-1)             # [B, KVH, k, d + 1]
    return query, key, value


def flash_cpu(x: torch.Tensor):
    """torch's fused CPU flash-attention op, which also returns each row's logsumexp; None where it does not serve
    x (not a float32 CPU tensor, or this torch has no such op)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return op if op is not None and x.device.type == "cpu" and x.dtype == torch.float32 else None


def attend_split(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                 beta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The attention output [1, q, H, d] AND each query row's logsumexp [1, H, q] (fp32) of a forward whose q new
    tokens are the last q keys and see every earlier key (a reconstruction's repeat over its subsample,
    `briefing.importance`), from torch's CPU flash kernel, which returns the normaliser it computes. Two parts, each
    with no mask: the P earlier keys (the query heads of a KV head stacked as its rows: no copy of a key per query
    head) and the new tokens' own keys, causal (the kernel skips their upper triangle); merged by their normalisers:
        lse = logaddexp(lse_p, lse_o),   out = exp(lse_p - lse) out_p + exp(lse_o - lse) out_o
    The bias beta [KVH, t] (t <= P) rides on one extra head dimension of the earlier keys, as in
    `briefing_attention`. None where that kernel does not serve (not a float32 CPU tensor, a batch): the caller
    attends as usual and the normaliser is computed apart. Where it serves, everything here is float32."""
    op = flash_cpu(query)
    if op is None or query.shape[0] != 1:
        return None
    _, heads, r, d = query.shape
    kv_heads = key.shape[1]
    g, p = heads // kv_heads, key.shape[2] - r
    q = query[0].reshape(kv_heads, g, r, d)                                             # [KVH, g, r, d]
    own_k = key[0, :, p:][:, None].expand(kv_heads, g, r, d)                            # [KVH, g, r, d]
    own_v = value[0, :, p:][:, None].expand(kv_heads, g, r, d)
    out, lse = op(q.contiguous(), own_k, own_v, 0.0, True, scale=scale)[:2]             # [KVH, g, r, d], [KVH, g, r]
    if p:
        qp, kp, vp = q.reshape(1, kv_heads, g * r, d), key[:, :, :p], value[:, :, :p]   # [1, KVH, g r | P, d]
        if beta is not None and beta.numel():
            qp, kp, vp = with_bias(qp, kp, vp, beta, scale)                                # [1, KVH, *, d + 1]
        out_p, lse_p = op(qp.contiguous(), kp.contiguous(), vp.contiguous(), 0.0, False, scale=scale)[:2]
        out_p = out_p[0, ..., :d].reshape(kv_heads, g, r, d)                            # [KVH, g, r, d]
        lse_p = lse_p.reshape(kv_heads, g, r)                                           # [KVH, g, r]
        both = torch.logaddexp(lse_p, lse)                                              # [KVH, g, r]
        out = out_p * (lse_p - both).exp()[..., None] + out * (lse - both).exp()[..., None]   # [KVH, g, r, d]
        lse = both
    return out.reshape(1, heads, r, d).transpose(1, 2).contiguous(), lse.reshape(1, heads, r)   # fp32: flash_cpu's


def own_width(mask: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """A mask [B, 1, q, K] built for another layer's key count (transformers builds one per attention kind, from its
    first layer) fitted to this layer's k_len keys: a compacted context whose layers keep different counts (a global
    allocation, `compaction.by_layer`). The new tokens are the last q keys (their causal block is kept as it is);
    every earlier key is a kept trajectory slot, seen as the mask's first column sees its own."""
    old = mask.shape[-1] - q_len                                                          # earlier keys there
    new = k_len - q_len                                                                   # earlier keys here
    if old < 0 or new < 0:
        raise ValueError(f"attention mask of width {mask.shape[-1]} cannot serve {k_len} keys for {q_len} queries")
    seen = mask[..., :1] if old else torch.ones_like(mask[..., :1]) if mask.dtype == torch.bool else \
        torch.zeros_like(mask[..., :1])                                                   # [B, 1, q, 1]
    return torch.cat([seen.expand(*mask.shape[:-1], new), mask[..., old:]], dim=-1)      # [B, 1, q, k_len]


_registered = False


def register_attention() -> None:
    """Register the attention and mask functions under ATTENTION_NAME (idempotent)."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTENTION_NAME, briefing_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True
