"""Small helpers over transformers' DynamicCache (batch size 1): stacking, truncation, building."""
from __future__ import annotations

import torch
from transformers import DynamicCache


def cache_length(cache: DynamicCache) -> int:
    layer = cache.layers[0] if cache.layers else None
    return 0 if layer is None or not layer.is_initialized or layer.keys is None else int(layer.keys.shape[-2])


def truncate(cache: DynamicCache, length: int) -> None:
    """Drop every position at or past `length` (slicing: tensors shared with other caches are not modified)."""
    for layer in cache.layers:
        if layer.is_initialized and layer.keys is not None:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def build(keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
    """A DynamicCache from per-layer [1, kv_heads, t, d] keys and values."""
    return DynamicCache(ddp_cache_data=list(zip(keys, values)))


def layer_kv(cache: DynamicCache, start: int = 0, stop: int | None = None) -> tuple[list[torch.Tensor],
                                                                                    list[torch.Tensor]]:
    """Per-layer keys and values [1, kv_heads, stop - start, d] (views)."""
    keys = [layer.keys[..., start:stop, :] for layer in cache.layers]
    values = [layer.values[..., start:stop, :] for layer in cache.layers]
    return keys, values


def rope_inv_freq(model) -> torch.Tensor:
    """The rotary inverse frequencies [head_dim / 2] of a Llama-style model (keys rotated by rotate_half)."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise TypeError(f"{type(model).__name__} has no model.rotary_emb.inv_freq: cannot re-base RoPE positions.")
    return rotary.inv_freq


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE vectors x [..., n, d] by `delta` positions (broadcastable to [..., n]): the vector a
    token at position p would have had at p + delta. RoPE is a rotation R(p), so R(delta) R(p) = R(p + delta);
    angles are computed in float64, then applied in x's dtype."""
    angle = delta.to(torch.float64)[..., None] * inv_freq.to(torch.float64)          # [..., n, d/2]
    angle = torch.cat([angle, angle], dim=-1)                                        # [..., n, d]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated_half * sin
