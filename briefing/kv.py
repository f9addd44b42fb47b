"""Helpers over transformers' DynamicCache (batch size 1): layer kinds, stacking, rollback, building, RoPE rotation.

Two kinds of cache layer serve a trajectory:
- a *held* layer (full attention, a `DynamicLayer`) keeps every position it is given, as slots in order: the layers
  a compaction and a fold work on;
- a *window* layer (a sliding-window layer of a hybrid model, a `DynamicSlidingWindowLayer`) keeps what the model's
  own sliding mask lets it see: its last `sliding_window - 1` tokens (plus `WINDOW_MARGIN` more, so that a token
  seam can be re-cut). It is recorded with transformers' past recording, so the tokens a scoring pass or a
  generation adds can be rolled back, and its masks follow the tokens it has seen (`cumulative_length`).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

WINDOW_MARGIN = 64  # tokens a window layer keeps past its window: room for a re-cut token seam


def is_window(layer) -> bool:
    return isinstance(layer, DynamicSlidingWindowLayer)


def window_layer(sliding_window: int) -> DynamicSlidingWindowLayer:
    """An empty, recorded window layer (its window size tensor made on the CPU, whatever the default device: the
    layer moves it to its keys' device on first use)."""
    layer = DynamicSlidingWindowLayer(sliding_window=sliding_window)
    layer._sliding_window_tensor = torch.tensor(sliding_window, dtype=torch.long, device="cpu")
    layer.activate_past_recording()
    return layer


def new_cache(config=None) -> DynamicCache:
    """An empty cache: the model's own layer kinds (window layers recorded) given its config, else held layers."""
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    cache.layers = [window_layer(layer.sliding_window) if is_window(layer) else layer for layer in cache.layers]
    return cache


def held_length(cache: DynamicCache, layer: int) -> int:
    """Slots held by `layer` (0 before its first update)."""
    if layer >= len(cache.layers):
        return 0
    lay = cache.layers[layer]
    return 0 if not lay.is_initialized or lay.keys is None else int(lay.keys.shape[-2])


def marks(cache: DynamicCache) -> list[tuple[int, int]]:
    """What each layer holds now: (slots, tokens seen), to roll back to with `rollback`."""
    return [(held_length(cache, i), getattr(layer, "cumulative_length", held_length(cache, i)))
            for i, layer in enumerate(cache.layers)]


def rollback(cache: DynamicCache, to: list[tuple[int, int]]) -> None:
    """Drop what was added since `marks` (slicing: tensors shared with other caches are not modified)."""
    for (slots, seen), layer in zip(to, cache.layers):
        if not layer.is_initialized or layer.keys is None:
            continue
        if is_window(layer):   # drop the tokens added since: the last (seen now - seen then)
            added = layer.cumulative_length - seen
            if added > 0:
                layer.keys, layer.values = layer.keys[..., :-added, :], layer.values[..., :-added, :]
                layer.cumulative_length = seen
        else:
            layer.keys, layer.values = layer.keys[..., :slots, :], layer.values[..., :slots, :]


def drop_last(cache: DynamicCache, n: int) -> None:
    """Drop the last n tokens of every layer (a re-cut token seam)."""
    if n > 0:
        rollback(cache, [(max(0, s - n), max(0, c - n)) for s, c in marks(cache)])


def trim_windows(cache: DynamicCache) -> None:
    """Window layers keep their window and `WINDOW_MARGIN` tokens more, no further back."""
    for layer in cache.layers:
        if is_window(layer) and layer.is_initialized and layer.keys is not None:
            keep = layer.sliding_window - 1 + WINDOW_MARGIN
            layer.keys, layer.values = layer.keys[..., -keep:, :], layer.values[..., -keep:, :]


def window_kv(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """What a window layer's next token sees of the past: its last `sliding_window - 1` keys and values."""
    n = min(layer.sliding_window - 1, layer.cumulative_length, int(layer.keys.shape[-2]))
    return layer.keys[..., layer.keys.shape[-2] - n:, :], layer.values[..., layer.values.shape[-2] - n:, :]


def copy_window(layer, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
    """A recorded window layer holding `keys`, `values` (default: `layer`'s window) with `layer`'s tokens seen."""
    k, v = window_kv(layer) if keys is None else (keys, values)
    out = window_layer(layer.sliding_window)
    out.lazy_initialization(k, v)
    out.keys, out.values, out.cumulative_length = k, v, layer.cumulative_length
    return out


def held_layer(keys: torch.Tensor, values: torch.Tensor) -> DynamicLayer:
    out = DynamicLayer()
    out.lazy_initialization(keys, values)
    out.keys, out.values = keys, values
    return out


def assemble(layers: list) -> DynamicCache:
    """A DynamicCache of the given layer objects."""
    cache = DynamicCache()
    cache.layers = list(layers)
    return cache


def build(keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
    """A DynamicCache of held layers from per-layer [1, kv_heads, t, d] keys and values."""
    return assemble([held_layer(k, v) for k, v in zip(keys, values)])


def clone(cache: DynamicCache) -> DynamicCache:
    """An independent copy (tensors copied), each layer of its own kind."""
    layers = []
    for layer in cache.layers:
        if not layer.is_initialized or layer.keys is None:
            layers.append(window_layer(layer.sliding_window) if is_window(layer) else type(layer)())
        elif is_window(layer):
            layers.append(copy_window(layer, layer.keys.clone(), layer.values.clone()))
        else:
            layers.append(held_layer(layer.keys.clone(), layer.values.clone()))
    return assemble(layers)


def nbytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers if layer.is_initialized and layer.keys is not None
               for t in (layer.keys, layer.values))


def layer_kv(cache: DynamicCache, start: int = 0, stop: int | None = None,
             layers: list[int] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values [1, kv_heads, stop - start, d] (views) of `layers` (default: all), in that order."""
    picked = [cache.layers[i] for i in layers] if layers is not None else cache.layers
    return ([lay.keys[..., start:stop, :] for lay in picked], [lay.values[..., start:stop, :] for lay in picked])


def cache_length(cache: DynamicCache) -> int:
    """Slots held by the first layer (all layers of a cache of held layers hold the same)."""
    return held_length(cache, 0)


def rope_inv_freq(model, layer_type: str | None = None) -> torch.Tensor:
    """The rotary inverse frequencies [head_dim / 2] of a model's layers of `layer_type` (Gemma's local and global
    layers have their own bases; a model with one kind has one `inv_freq`)."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is not None and layer_type is not None and hasattr(rotary, f"{layer_type}_inv_freq"):
        return getattr(rotary, f"{layer_type}_inv_freq")
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise TypeError(f"{type(model).__name__} has no rotary inverse frequencies for {layer_type or 'its layers'}: "
                        "cannot re-base RoPE positions.")
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
