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
        fused = attend_with_lse(query, key, value, attention_mask, scale, beta) if rec.whole else None
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


def attend_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                    scale: float, beta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The attention output [B, q, H, d] AND each query row's logsumexp [B, H, q] (fp32) from one fused kernel: torch's
    CPU flash kernel returns the normaliser it computes (a reconstruction pass reads it, `briefing.importance`). The
    bias rides on one extra head dimension as in `briefing_attention`. None where that kernel is not there (not a
    CPU, no mask to place the new tokens): the caller attends as usual and the normaliser is computed apart."""
    op = flash_cpu(query)
    if op is None or mask is None:
        return None
    d, g = query.shape[-1], query.shape[1] // key.shape[1]
    if beta is not None and beta.numel():
        query, key, value = with_bias(query, key, value, beta, scale)                        # [B, *, *, d + 1]
    key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)          # [B, H, k, d']
    additive = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, float("-inf")) \
        if mask.dtype == torch.bool else mask                                                # [B, 1, q, k]
    out, lse = op(query.contiguous(), key, value, 0.0, False, attn_mask=additive, scale=scale)  # [B, H, q, d']
    return out[..., :d].transpose(1, 2).contiguous(), lse.float()                           # [B, q, H, d], [B, H, q]


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
