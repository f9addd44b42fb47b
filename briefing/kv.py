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


def layer_kv(cache: DynamicCache, start: int = 0, stop: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values [1, kv_heads, stop - start, d] (views)."""
    keys = [layer.keys[..., start:stop, :] for layer in cache.layers]
    values = [layer.values[..., start:stop, :] for layer in cache.layers]
    return keys, values
