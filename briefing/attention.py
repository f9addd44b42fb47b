"""Attention with a per-layer, per-KV-head additive bias on the kept keys of a compacted cache.

Registered as attention implementation "briefing" (plus a mask function under the same name, so that
transformers builds a proper causal mask for ordinary prefill). While no `BiasState` is active the function
is plain SDPA. While one is active (a forward over a compacted cache, or a scoring pass that captures
post-RoPE queries) it builds its own mask: causal over the new tokens, which sit at the END of the key
sequence, plus `beta` added to the logits of the first `t` keys (the kept trajectory positions).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "briefing"


@dataclass
class BiasState:
    """What the attention function does during one forward pass.

    beta: per layer, a tensor [kv_heads, t] added to the logits of the first t keys (None: no bias).
    capture: if True, post-RoPE queries are stored per layer in `queries` ([1, heads, q_len, head_dim]).
    """

    beta: list[torch.Tensor | None] | None = None
    capture: bool = False
    queries: dict[int, torch.Tensor] = field(default_factory=dict)


_ACTIVE: contextvars.ContextVar[BiasState | None] = contextvars.ContextVar("briefing_bias", default=None)


@contextlib.contextmanager
def active(state: BiasState) -> Iterator[BiasState]:
    """Activate `state` for the forward passes run inside the block."""
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def briefing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, q, d]; key, value [1, KVH, k, d] (cache + new tokens). Returns ([1, q, H, d], None)."""
    state = _ACTIVE.get()
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    layer = module.layer_idx
    if state.capture:
        state.queries[layer] = query.detach()
    _, n_heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = n_heads // kv_heads
    # Pack the query heads of each KV head into the query axis: [1, KVH, G * q, d]; keys are not copied.
    packed = query.reshape(1, kv_heads, groups * q_len, dim)
    # Causal over the new tokens: row r is token i = r mod q, at absolute index k_len - q_len + i.
    token = torch.arange(groups * q_len, device=query.device) % q_len + (k_len - q_len)
    allowed = torch.arange(k_len, device=query.device)[None, :] <= token[:, None]      # [G * q, k]
    mask = torch.zeros(1, kv_heads, groups * q_len, k_len, dtype=query.dtype, device=query.device)
    beta = state.beta[layer] if state.beta is not None else None
    if beta is not None and beta.numel():
        mask[..., : beta.shape[-1]] += beta.to(query.dtype)[None, :, None, :]           # [1, KVH, 1, t]
    mask = mask.masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)  # [1, KVH, G*q, d]
    return out.reshape(1, n_heads, q_len, dim).transpose(1, 2).contiguous(), None


_registered = False


def register_attention() -> None:
    """Register the attention and mask functions under ATTENTION_NAME (idempotent)."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTENTION_NAME, briefing_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True
