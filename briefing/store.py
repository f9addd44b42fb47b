"""The positions a trajectory cache holds: keys and values per layer, the stored beta of its folded prefix, and the
RoPE position and token index of every kept key of the held layers.

The held layers (`LoadedModel.held_layers`: the full-attention layers) hold the trajectory as slots. Before the first
fold a held layer is a plain prefix cache: slot i holds token i at RoPE position i. A fold replaces a span of slots by
the kept ones (`replace_span`), each (held layer, KV head) keeping its own; the first `folded` slots then carry a
stored beta that every forward over the store adds to their logits. A re-base (`rebase`) rotates every key to its
slot, so that the next RoPE position follows the held positions.

Window layers (`kv.is_window`: a hybrid model's sliding layers) hold their own window of the latest tokens, exactly
as the model's own cache would; they are never folded, and a re-base rotates them by the same shift as the tokens
they hold. A model that slides on every layer (Mistral v0.1 style) is all window layers: it holds its window on each,
and compaction works within that window (`windowed`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from briefing import kv


class KVStore:
    """kv: the DynamicCache. beta: [held layers, kv_heads, F] on the first F slots (None: no fold yet).
    key_pos / origin: [held layers, kv_heads, length] RoPE position / token index of every held key (None: the
    contiguous run of the tokens held). importance: [held layers, kv_heads, length] the query-agnostic score of
    every held key (`briefing.importance`; float32), kept through folds and re-bases; None when the cache does not
    score (or slides on every layer: its window moves with every token)."""

    def __init__(self, lm, *, importance: bool = False) -> None:
        self.held, self.window, self.layers = list(lm.held_layers), list(lm.window_layers), lm.num_layers
        self.kv_heads, self.device = lm.kv_heads, torch.device(lm.device)
        self.kv = lm.new_cache()
        self.beta: torch.Tensor | None = None
        self.key_pos: torch.Tensor | None = None
        self.origin: torch.Tensor | None = None
        self.importance: torch.Tensor | None = None
        self.scores_importance = importance and not (lm.held_layers and not lm.window_layers
                                                     and lm.sliding_window is not None)
        self.tokens = 0      # tokens the held layers stand for (set by the cache that owns the store)
        self.position = 0    # RoPE position of the next token

    @property
    def windowed(self) -> bool:
        """Every layer slides: the held layers are window layers, which hold their window and never fold."""
        return bool(self.held) and kv.is_window(self.kv.layers[self.held[0]]) if self.kv.layers else False

    @property
    def length(self) -> int:
        """Slots of the held layers (for a windowed model: the window its next token sees)."""
        if not self.kv.layers or kv.held_length(self.kv, self.held[0]) == 0:
            return 0
        if self.windowed:
            return int(kv.window_kv(self.kv.layers[self.held[0]])[0].shape[-2])
        return kv.held_length(self.kv, self.held[0])

    @property
    def folded(self) -> int:
        """Slots at the start that carry a stored beta (sink + folded keys); 0 before a fold."""
        return 0 if self.beta is None else int(self.beta.shape[-1])

    def held_kv(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [held layers, kv_heads, n, d] of slots [start, stop)."""
        if self.windowed:
            pairs = [kv.window_kv(self.kv.layers[i]) for i in self.held]
            keys = torch.cat([k[..., start:stop, :] for k, _ in pairs])
            values = torch.cat([v[..., start:stop, :] for _, v in pairs])
            return keys, values
        keys, values = kv.layer_kv(self.kv, start, stop, self.held)
        return torch.cat(keys), torch.cat(values)

    def _contiguous(self, last: int) -> torch.Tensor:
        n = self.length
        run = torch.arange(last - n, last, device=self.device)                               # [n]
        return run.view(1, 1, -1).expand(len(self.held), self.kv_heads, -1).clone()         # [Lh, H, n]

    def positions(self) -> torch.Tensor:
        """RoPE position of every held key [held layers, kv_heads, length]."""
        return self._contiguous(self.position) if self.key_pos is None else self.key_pos

    def origins(self) -> torch.Tensor:
        """Token index of every held key [held layers, kv_heads, length]: which tokens the folds kept."""
        return self._contiguous(self.tokens) if self.origin is None else self.origin

    def bias(self) -> torch.Tensor | None:
        """Stored beta over every held slot [held layers, kv_heads, length] (0 past the folded prefix), or None."""
        if self.beta is None:
            return None
        return torch.nn.functional.pad(self.beta, (0, self.length - self.beta.shape[-1]))   # [Lh, H, length]

    def per_layer(self, beta: torch.Tensor | Sequence[torch.Tensor | None] | None) -> list[torch.Tensor | None] | None:
        """A beta of the held layers ([held layers, H, t], or a list of [H, t_j]) as the attention takes it: one entry
        per model layer."""
        if beta is None:
            return None
        out: list[torch.Tensor | None] = [None] * self.layers
        for j, i in enumerate(self.held):
            out[i] = beta[j]
        return out

    def attention_bias(self) -> list[torch.Tensor | None] | None:
        """The stored beta, one entry per model layer (what every forward over the store applies)."""
        return self.per_layer(self.beta)

    def appended(self, first_token: int, position: int, n: int) -> None:
        """Record n positions appended by a prefill: tokens first_token.. at RoPE positions position..; window
        layers drop what lies past their window and margin."""
        kv.trim_windows(self.kv)
        if self.windowed:
            return
        L, H = len(self.held), self.kv_heads
        if self.scores_importance:   # zeros until the cache scores the chunk (set_importance)
            new = torch.zeros(L, H, n, device=self.device)                                  # [Lh, H, n]
            self.importance = new if self.importance is None else torch.cat([self.importance, new], -1)
        if self.key_pos is not None:
            new = torch.arange(position, position + n, device=self.device)                 # [n]
            self.key_pos = torch.cat([self.key_pos, new.view(1, 1, -1).expand(L, H, -1)], -1)
        if self.origin is not None:
            new = torch.arange(first_token, first_token + n, device=self.device)           # [n]
            self.origin = torch.cat([self.origin, new.view(1, 1, -1).expand(L, H, -1)], -1)

    def crop(self, n: int) -> None:
        """Drop the last n tokens (plain tokens: never folded ones), from every layer."""
        keep = self.length - n
        kv.drop_last(self.kv, n)
        if self.key_pos is not None:
            self.key_pos = self.key_pos[..., :keep]
        if self.origin is not None:
            self.origin = self.origin[..., :keep]
        if self.importance is not None:
            self.importance = self.importance[..., :keep]

    def set_importance(self, start: int, scores: torch.Tensor) -> None:
        """The query-agnostic score [held layers, kv_heads, n] of slots [start, start + n)."""
        if self.importance is not None:
            self.importance[..., start:start + scores.shape[-1]] = scores.to(self.importance.dtype)

    def replace_span(self, start: int, stop: int, idx: torch.Tensor | None, keys: torch.Tensor | None,
                     values: torch.Tensor | None, beta: torch.Tensor | None) -> None:
        """Replace slots [start, stop) of the held layers by the kept ones: idx [Lh, H, t] (span-relative), keys and
        values [Lh, H, t, d], their stored beta [Lh, H, t]. idx None: drop the span (nothing kept)."""
        pos, org = self.positions(), self.origins()                                   # [Lh, H, P]
        bias = self.bias()
        for j, i in enumerate(self.held):
            layer = self.kv.layers[i]
            k, v = layer.keys, layer.values                                            # [1, H, P, d]
            mid_k = k[..., :0, :] if idx is None else keys[j:j + 1].to(k.dtype)
            mid_v = v[..., :0, :] if idx is None else values[j:j + 1].to(v.dtype)
            layer.keys = torch.cat([k[..., :start, :], mid_k, k[..., stop:, :]], dim=-2)
            layer.values = torch.cat([v[..., :start, :], mid_v, v[..., stop:, :]], dim=-2)
        if idx is None:
            new_beta = None if bias is None else bias[..., :start]                    # [Lh, H, start]
            self.key_pos = torch.cat([pos[..., :start], pos[..., stop:]], dim=-1)
            self.origin = torch.cat([org[..., :start], org[..., stop:]], dim=-1)
            if self.importance is not None:
                self.importance = torch.cat([self.importance[..., :start], self.importance[..., stop:]], dim=-1)
        else:
            head = bias[..., :start] if bias is not None else torch.zeros(
                len(self.held), self.kv_heads, start, dtype=beta.dtype, device=self.device)  # [Lh, H, start]
            new_beta = torch.cat([head, beta.to(head.dtype)], dim=-1)                  # [Lh, H, start + t]
            self.key_pos = torch.cat([pos[..., :start], pos[..., start:stop].gather(-1, idx), pos[..., stop:]], -1)
            self.origin = torch.cat([org[..., :start], org[..., start:stop].gather(-1, idx), org[..., stop:]], -1)
            if self.importance is not None:   # a kept key keeps its score
                imp = self.importance
                self.importance = torch.cat([imp[..., :start], imp[..., start:stop].gather(-1, idx), imp[..., stop:]],
                                            -1)
        self.beta = None if new_beta is None or new_beta.shape[-1] == 0 else new_beta

    def rebase(self, inv_freq: torch.Tensor, window_inv_freq: torch.Tensor | None, shift: int) -> None:
        """Rotate every held key to its slot (positions 0..length-1: R(slot - p) R(p) = R(slot)), and every window
        layer's keys by `shift` (the same change of position for the latest tokens they hold)."""
        if not self.windowed:
            slots = torch.arange(self.length, device=self.device)                      # [n]
            delta = (slots.view(1, 1, -1) - self.positions()).to(torch.float64)       # [Lh, H, n]
            for j, i in enumerate(self.held):
                layer = self.kv.layers[i]
                layer.keys = kv.rotate(layer.keys, delta[j][None], inv_freq)           # [1, H, n, dim]
            self.key_pos = None
        for i in (self.held if self.windowed else self.window):
            layer = self.kv.layers[i]
            if layer.is_initialized and layer.keys is not None:
                at = torch.full((layer.keys.shape[-2],), float(shift), dtype=torch.float64, device=self.device)
                layer.keys = kv.rotate(layer.keys, at, inv_freq if self.windowed else window_inv_freq)

    def kv_bytes(self) -> int:
        """Bytes held by the keys and values of every layer (window layers included) and the stored beta."""
        return kv.nbytes(self.kv) + (0 if self.beta is None else self.beta.numel() * self.beta.element_size())

    def clone(self) -> KVStore:
        other = KVStore.__new__(KVStore)
        other.__dict__.update(self.__dict__)
        other.kv = kv.clone(self.kv)
        other.beta = None if self.beta is None else self.beta.clone()
        other.key_pos = None if self.key_pos is None else self.key_pos.clone()
        other.origin = None if self.origin is None else self.origin.clone()
        other.importance = None if self.importance is None else self.importance.clone()
        return other
