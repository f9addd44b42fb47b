"""The positions a trajectory cache holds: keys and values per layer, the stored beta of its folded prefix, and the
RoPE position and token index of every kept key.

Before the first fold a store is a plain prefix cache: position i holds token i at RoPE position i. A fold replaces
a span of positions by the kept ones (`replace_span`), each (layer, KV head) keeping its own; the first `folded`
positions then carry a stored beta that every forward over the store adds to their logits. A re-base (`rebase`)
rotates every key to its slot, so that the next RoPE position follows the held positions.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from briefing import kv


class KVStore:
    """kv: the DynamicCache. beta: per layer [kv_heads, F] on the first F positions (None: no fold yet).
    key_pos / origin: [L, kv_heads, length] RoPE position / token index of every key (None: 0..length-1)."""

    def __init__(self, layers: int, kv_heads: int, device: torch.device) -> None:
        self.layers, self.kv_heads, self.device = layers, kv_heads, torch.device(device)
        self.kv = DynamicCache()
        self.beta: list[torch.Tensor] | None = None
        self.key_pos: torch.Tensor | None = None
        self.origin: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return kv.cache_length(self.kv)

    @property
    def folded(self) -> int:
        """Positions at the start that carry a stored beta (sink + folded keys); 0 before a fold."""
        return 0 if self.beta is None else int(self.beta[0].shape[-1])

    def _identity(self) -> torch.Tensor:
        n = self.length
        return torch.arange(n, device=self.device).view(1, 1, -1).expand(self.layers, self.kv_heads, -1).clone()

    def positions(self) -> torch.Tensor:
        """RoPE position of every key [L, kv_heads, length]."""
        return self._identity() if self.key_pos is None else self.key_pos

    def origins(self) -> torch.Tensor:
        """Token index of every key [L, kv_heads, length]: which tokens the folds kept."""
        return self._identity() if self.origin is None else self.origin

    def bias(self) -> torch.Tensor | None:
        """Stored beta over every position [L, kv_heads, length] (0 past the folded prefix), or None."""
        if self.beta is None:
            return None
        b = torch.stack(self.beta)                                                    # [L, H, F]
        return torch.nn.functional.pad(b, (0, self.length - b.shape[-1]))             # [L, H, length]

    def appended(self, first_token: int, position: int, n: int) -> None:
        """Record n positions appended by a prefill: tokens first_token.. at RoPE positions position..."""
        if self.key_pos is not None:
            new = torch.arange(position, position + n, device=self.device)             # [n]
            self.key_pos = torch.cat([self.key_pos, new.view(1, 1, -1).expand(self.layers, self.kv_heads, -1)], -1)
        if self.origin is not None:
            new = torch.arange(first_token, first_token + n, device=self.device)       # [n]
            self.origin = torch.cat([self.origin, new.view(1, 1, -1).expand(self.layers, self.kv_heads, -1)], -1)

    def crop(self, n: int) -> None:
        """Drop the last n positions (plain tokens: never folded ones)."""
        keep = self.length - n
        kv.truncate(self.kv, keep)
        if self.key_pos is not None:
            self.key_pos = self.key_pos[..., :keep]
        if self.origin is not None:
            self.origin = self.origin[..., :keep]

    def replace_span(self, start: int, stop: int, idx: torch.Tensor | None, keys: list[torch.Tensor] | None,
                     values: list[torch.Tensor] | None, beta: torch.Tensor | None) -> None:
        """Replace positions [start, stop) by the kept ones: idx [L, H, t] (span-relative), per-layer keys and values
        [1, H, t, d], their stored beta [L, H, t]. idx None: drop the span (nothing kept)."""
        pos, org = self.positions(), self.origins()                                   # [L, H, P]
        old_k, old_v = kv.layer_kv(self.kv)
        bias = self.bias()
        if idx is None:
            new_k = [torch.cat([k[..., :start, :], k[..., stop:, :]], dim=-2) for k in old_k]
            new_v = [torch.cat([v[..., :start, :], v[..., stop:, :]], dim=-2) for v in old_v]
            new_beta = None if bias is None else bias[..., :start]                   # [L, H, start]
            self.key_pos = torch.cat([pos[..., :start], pos[..., stop:]], dim=-1)
            self.origin = torch.cat([org[..., :start], org[..., stop:]], dim=-1)
        else:
            new_k = [torch.cat([k[..., :start, :], c, k[..., stop:, :]], dim=-2) for k, c in zip(old_k, keys)]
            new_v = [torch.cat([v[..., :start, :], c, v[..., stop:, :]], dim=-2) for v, c in zip(old_v, values)]
            head = bias[..., :start] if bias is not None else torch.zeros(
                self.layers, self.kv_heads, start, dtype=beta.dtype, device=self.device)  # [L, H, start]
            new_beta = torch.cat([head, beta], dim=-1)                                 # [L, H, start + t]
            self.key_pos = torch.cat([pos[..., :start], pos[..., start:stop].gather(-1, idx), pos[..., stop:]], -1)
            self.origin = torch.cat([org[..., :start], org[..., start:stop].gather(-1, idx), org[..., stop:]], -1)
        self.kv = kv.build(new_k, new_v)
        self.beta = None if new_beta is None or new_beta.shape[-1] == 0 else list(new_beta.unbind(0))

    def rebase(self, inv_freq: torch.Tensor) -> None:
        """Rotate every key to its slot (positions 0..length-1): R(slot - p) R(p) = R(slot)."""
        slots = torch.arange(self.length, device=self.device)                         # [n]
        delta = (slots.view(1, 1, -1) - self.positions()).to(torch.float64)           # [L, H, n]
        for layer, d in zip(self.kv.layers, delta, strict=True):
            layer.keys = kv.rotate(layer.keys, d[None], inv_freq)                     # [1, H, n, dim]
        self.key_pos = None

    def kv_bytes(self) -> int:
        """Bytes held by the keys, values and stored beta."""
        total = sum(t.numel() * t.element_size() for layer in self.kv.layers if layer.is_initialized
                    for t in (layer.keys, layer.values))
        return total + sum(b.numel() * b.element_size() for b in (self.beta or []))

    def clone(self) -> KVStore:
        other = KVStore(self.layers, self.kv_heads, self.device)
        if self.length:
            other.kv = kv.build(*[[t.clone() for t in ts] for ts in kv.layer_kv(self.kv)])
        other.beta = None if self.beta is None else [b.clone() for b in self.beta]
        other.key_pos = None if self.key_pos is None else self.key_pos.clone()
        other.origin = None if self.origin is None else self.origin.clone()
        return other
