"""The archive of a folding TrajectoryCache: the keys and values its folds compact away, kept as blocks, and one small
representative per block of every token read, so that a call can bring back the blocks its question is about (latent
recall, `briefing.latent`).

What it holds:
- **representatives**, for every block of `block` tokens of the trajectory (folded or not): the mean, over the
  block's tokens, of the hidden states of the last `layers` decoder layers, read by forward hooks during the
  prefill the cache runs anyway (`reading`), so a representative costs no forward; and, with `token_states`, every
  token's hidden state at the last of those layers, unit length, in float16 (a block's best tokens for a question,
  `latent.peak_scores`). They stay on the model's device.
- **blocks of keys and values** of the held layers, for every token a fold compacts for the first time (the raw part
  of its span: a token's original keys and values, as the prefill left them), with the RoPE position each key had
  and, when the cache scores them (`KVStore.importance`), each key's query-agnostic importance (float16), which a
  re-attached key carries back.
  They are stored apart from the model (CPU memory, or memory-mapped files under `path`), as int8 with one scale
  per vector by default, under a byte budget: past it the oldest blocks go first. Tokens the cache still holds as
  they were (the sink and the unfolded tail) are read from the cache itself (`fetch`). A budget of 0 keeps the
  representatives alone (a recall that re-prefills the blocks' text reads no keys or values).

Hooks into the cache (`briefing.trajectory`): `reading` around each prefill forward, `crop` when the token seam
re-cuts the last tokens, `keep_span` before each fold, `clone` with the cache.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from briefing.errors import BriefingError
from briefing.options import check_bool, check_choice, check_int

STORAGE = {"int8": torch.int8, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
NUMPY = {torch.int8: np.int8, torch.float16: np.float16, torch.float32: np.float32}
CROP_BUFFER = 256  # the last tokens whose hidden states are kept one by one, so that a re-cut seam can take them back


def decoder_layers(lm) -> torch.nn.ModuleList:
    """The model's decoder layers (`model.model.layers`), whose outputs are the hidden states a representative reads."""
    layers = getattr(getattr(lm.model, "model", None), "layers", None)
    if layers is None:
        raise BriefingError(f"{lm.name}: no decoder layers at model.model.layers, so latent recall cannot read its "
                            "hidden states; use agents.recall.TextRecall with this model.")
    return layers


@contextlib.contextmanager
def hidden_states(lm, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """While the block runs, the output hidden states [batch, n, hidden] of decoder `layers` of every forward, by
    layer (the last forward's): read by forward hooks, so a forward the model runs anyway gives them."""
    out: dict[int, torch.Tensor] = {}
    blocks = decoder_layers(lm)

    def keep(i: int):
        def hook(module, args, output):
            out[i] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [blocks[i].register_forward_hook(keep(i)) for i in layers]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@dataclass(kw_only=True)
class ArchivePolicy:
    """What a folding TrajectoryCache keeps of the tokens its folds compact away, and how a block is represented.

    budget_bytes: most bytes of archived keys, values and their scales (>= 0); past it the oldest blocks go first.
        0: the representatives alone, no keys or values (what a recall that re-prefills the blocks' text needs:
        `agents.LatentRecall` on a model with sliding-window layers).
    block: tokens per block, >= 1: the unit of a representative and of a recall.
    layers: how many of the last decoder layers' hidden states make a block's representative (>= 1).
    dtype: how keys and values are stored: "int8" (one float16 scale per vector of head_dim), "float16", "bfloat16"
        or "float32".
    path: None: in CPU memory; a folder: in memory-mapped files there (deleted with the archive that made them).
    token_states: also keep every token's hidden state at the last representative layer, unit length, float16 (2 x
        hidden bytes per token: 1,152 for SmolLM2-135M), for a ranking by a block's best tokens
        (`agents.LatentRecall(peaks=...)`, the default recall); False: the block means alone (`LatentRecall(peaks=0)`
        asks for no more). The states of blocks that the byte budget evicts are dropped with their keys and values;
        with budget_bytes=0 nothing is evicted, and the states grow with the trajectory, as the representatives do
        (these 2 x hidden bytes per token beside the representatives' 4 x layers x hidden / block).
    """

    budget_bytes: int = 1 << 30
    block: int = 32
    layers: int = 3
    dtype: str = "int8"
    path: str | None = None
    token_states: bool = True

    def __post_init__(self) -> None:
        owner = "ArchivePolicy"
        check_int(owner, "budget_bytes", self.budget_bytes, low=0, what="bytes of archived keys and values")
        check_int(owner, "block", self.block, low=1, what="tokens per block")
        check_int(owner, "layers", self.layers, low=1, what="last decoder layers read for a representative")
        check_choice(owner, "dtype", self.dtype, STORAGE, what="how archived keys and values are stored")
        check_bool(owner, "token_states", self.token_states)
        if self.path is not None and not (isinstance(self.path, (str, os.PathLike)) and os.path.isdir(self.path)):
            raise BriefingError(f"ArchivePolicy: path must be an existing folder for memory-mapped blocks or None "
                                f"(CPU memory), got {self.path!r}.")


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 vectors and their float16 scales: x [..., d] -> q [..., d], scale [...] (absmax / 127 per vector)."""
    scale = x.float().abs().amax(-1).clamp_min(1e-8) / 127                         # [...]
    q = (x.float() / scale[..., None]).round().clamp(-127, 127).to(torch.int8)     # [..., d]
    return q, scale.to(torch.float16)


def dequantize(q: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if scale is None:
        return q.to(dtype)
    return (q.float() * scale.float()[..., None]).to(dtype)


def place(x: torch.Tensor, path: str | None) -> torch.Tensor:
    """x on the CPU, or in a memory-mapped file under `path` (removed once no tensor maps it)."""
    x = x.detach().to("cpu").contiguous()
    if path is None or x.dtype not in NUMPY:
        return x
    fd, name = tempfile.mkstemp(prefix="archive-", suffix=".bin", dir=path)
    os.close(fd)
    mapped = np.memmap(name, dtype=NUMPY[x.dtype], mode="w+", shape=tuple(x.shape))
    mapped[...] = x.numpy()
    mapped.flush()
    weakref.finalize(mapped, _remove, name)
    return torch.from_numpy(mapped)


class Segment:
    """Archived tokens [first, first + n): keys and values [held layers, kv_heads, n, d] in the storage dtype (scales
    [held layers, kv_heads, n] for int8), the RoPE position [n] each key had when it was archived, and its importance
    [held layers, kv_heads, n] (float16; None when the cache keeps none)."""

    def __init__(self, first: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, dtype: str,
                 path: str | None, importance: torch.Tensor | None = None) -> None:
        self.first, self.n = first, int(keys.shape[-2])
        self.positions = positions.to("cpu", torch.long)
        self.importance = None if importance is None else importance.detach().to("cpu", torch.float16)
        store = STORAGE[dtype]
        if store == torch.int8:
            (self.keys, self.kscale), (self.values, self.vscale) = quantize(keys), quantize(values)
        else:
            self.keys, self.values, self.kscale, self.vscale = keys.to(store), values.to(store), None, None
        self.keys, self.values = place(self.keys, path), place(self.values, path)

    @property
    def last(self) -> int:
        return self.first + self.n

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.kscale, self.vscale,
                                                          self.importance) if t is not None)

    def read(self, lo: int, hi: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [Lh, H, hi - lo, d] of tokens [lo, hi) (within the segment), in `dtype` on `device`."""
        a, b = lo - self.first, hi - self.first
        k = dequantize(self.keys[..., a:b, :], None if self.kscale is None else self.kscale[..., a:b], dtype)
        v = dequantize(self.values[..., a:b, :], None if self.vscale is None else self.vscale[..., a:b], dtype)
        return k.to(device), v.to(device)

    def drop_before(self, token: int, path: str | None) -> Segment | None:
        """The segment without its tokens before `token` (copied, so the memory is freed), or None if nothing is
        left."""
        if token >= self.last:
            return None
        cut = token - self.first
        out = Segment.__new__(Segment)
        out.first, out.n = token, self.n - cut
        out.positions = self.positions[cut:].clone()
        out.keys = place(self.keys[..., cut:, :].clone(), path)
        out.values = place(self.values[..., cut:, :].clone(), path)
        out.kscale = None if self.kscale is None else self.kscale[..., cut:].clone()
        out.vscale = None if self.vscale is None else self.vscale[..., cut:].clone()
        out.importance = None if self.importance is None else self.importance[..., cut:].clone()
        return out


def _remove(name: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(name)


class Archive:
    """The archive of one TrajectoryCache (see the module docstring). `layers`: the decoder layers read for the
    representatives; `sums` [blocks, layers, hidden] float32 and `counts` [blocks]: per block, the sum of its tokens'
    hidden states and how many were read; `segments`: the archived keys and values, oldest first."""

    def __init__(self, lm, policy: ArchivePolicy) -> None:
        self.lm, self.policy = lm, policy
        n = len(decoder_layers(lm))
        self.layers = list(range(max(0, n - policy.layers), n))
        hidden = int(lm.model.config.get_text_config().hidden_size)
        dev = torch.device(lm.device)
        self.sums = torch.zeros(0, len(self.layers), hidden, dtype=torch.float32, device=dev)
        self.counts = torch.zeros(0, dtype=torch.long, device=dev)
        self.recent = torch.zeros(0, len(self.layers), hidden, dtype=torch.float32, device=dev)  # [<= CROP_BUFFER, ..]
        # [capacity, hidden] every token's unit hidden state at the last layer from token `states_from` on (rows
        # [0, tokens - states_from) are read), or None
        self.states = torch.zeros(0, hidden, dtype=torch.float16, device=dev) if policy.token_states else None
        self.states_from = 0       # the first token whose state is kept (the states of evicted blocks are dropped)
        self.tokens = 0            # tokens read (representatives summed)
        self.segments: list[Segment] = []
        self.evicted = 0           # archived tokens before this one were dropped for the budget
        self.read_s = 0.0          # time spent summing hidden states (the prefill's own forward not counted)
        self.archive_s = 0.0       # time spent archiving spans (quantising, copying)

    # -- representatives, read while the cache prefills ---------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self, first: int, n: int) -> Iterator[None]:
        """Around the prefill forward of tokens [first, first + n): their hidden states join their blocks' sums."""
        if first != self.tokens:
            raise BriefingError(f"archive out of step: it has read {self.tokens} tokens, the prefill starts at "
                                f"{first}.")
        with hidden_states(self.lm, self.layers) as out:
            yield
        t0 = time.perf_counter()
        h = torch.stack([out[i][0, -n:] for i in self.layers], 1).float()              # [n, layers, hidden]
        self._add(first, h)
        self.read_s += time.perf_counter() - t0

    def _add(self, first: int, h: torch.Tensor) -> None:
        B, n, dev = self.policy.block, h.shape[0], self.sums.device
        blocks = (first + torch.arange(n, device=dev)) // B                              # [n]
        grow = (first + n - 1) // B + 1 - self.sums.shape[0]   # the last block, known without a device sync
        if grow > 0:
            self.sums = torch.cat([self.sums, self.sums.new_zeros(grow, *self.sums.shape[1:])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(grow)])
        self.sums.index_add_(0, blocks, h)
        self.counts.index_add_(0, blocks, torch.ones_like(blocks))
        self.recent = torch.cat([self.recent, h])[-CROP_BUFFER:]
        if self.states is not None:
            a = first - self.states_from                                                 # the first row written
            if a + n > self.states.shape[0]:   # grow by a quarter: appends stay linear, the spare rows few
                grown = self.states.new_zeros(max(a + n, self.states.shape[0] * 5 // 4), self.states.shape[1])
                grown[:a] = self.states[:a]
                self.states = grown
            self.states[a:a + n] = torch.nn.functional.normalize(h[:, -1], dim=-1).to(self.states.dtype)
        self.tokens = first + n

    def crop(self, keep: int) -> None:
        """The token seam re-cut the tokens from `keep` on: take their hidden states out of their blocks (those past
        the last CROP_BUFFER tokens cannot be: their blocks start again empty)."""
        gone = self.tokens - keep
        if gone <= 0:
            return
        B = self.policy.block
        known = min(gone, self.recent.shape[0])
        if known:
            h = self.recent[-known:]                                                    # [known, layers, hidden]
            blocks = (torch.arange(self.tokens - known, self.tokens, device=h.device)) // B
            self.sums.index_add_(0, blocks, -h)
            self.counts.index_add_(0, blocks, -torch.ones_like(blocks))
            self.recent = self.recent[:-known]
        if gone > known:   # beyond what is kept one by one: those blocks are read again from scratch
            lo = keep // B
            self.sums[lo:(self.tokens - known + B - 1) // B] = 0
            self.counts[lo:(self.tokens - known + B - 1) // B] = 0
        nb = (keep + B - 1) // B
        self.sums, self.counts = self.sums[:nb], self.counts[:nb]
        self.tokens = keep

    def token_states(self) -> torch.Tensor | None:
        """[tokens - states_from, hidden] float16: the unit hidden state at the last representative layer of every token
        from `states_from` on (None: the policy keeps none). `states_from` is 0 unless the byte budget evicted blocks:
        their keys and values gone, a recall of keys and values cannot bring them back, so their states go too (a
        recall of their text still can: it ranks such a block by its mean alone, `latent.block_scores`)."""
        return None if self.states is None else self.states[:self.tokens - self.states_from]

    def representatives(self) -> torch.Tensor:
        """[blocks, layers, hidden]: each block's mean hidden state per layer, unit length (0 for a block with nothing
        read)."""
        mean = self.sums / self.counts.clamp_min(1)[:, None, None]
        return torch.nn.functional.normalize(mean, dim=-1)

    # -- keys and values, kept at each fold ----------------------------------------------------------------------

    def keep_span(self, store, sink: int, recent: int) -> None:
        """Before a fold of `store` (its span: between the first `sink` positions and the last `recent`): archive the
        span's tokens that no fold compacted yet, with their original keys, values and RoPE positions (nothing under a
        budget of 0: the representatives alone)."""
        P = store.length
        a = min(sink, P)
        b = max(a, P - recent)
        lo = max(a, store.folded)
        if b <= lo or not self.policy.budget_bytes:   # nothing new, or the representatives alone
            return
        t0 = time.perf_counter()
        origins = store.origins()[0, 0, lo:b]                                         # [n] raw: the same every head
        first, n = int(origins[0]), b - lo
        if int(origins[-1]) - first != n - 1:
            raise BriefingError("archive: the span's unfolded tokens are not contiguous; this is a bug.")
        keys, values = store.held_kv(lo, b)                                           # [Lh, H, n, d]
        positions = store.positions()[0, 0, lo:b]                                     # [n]
        if self.segments and self.segments[-1].last != first:
            raise BriefingError(f"archive: tokens {self.segments[-1].last} to {first} were never archived; this is a "
                                "bug.")
        importance = None if store.importance is None else store.importance[..., lo:b]      # [Lh, H, n]
        self.segments.append(Segment(first, keys, values, positions, self.policy.dtype, self.policy.path, importance))
        self._fit_budget()
        self.archive_s += time.perf_counter() - t0

    def _fit_budget(self) -> None:
        """Drop the oldest blocks while the archived bytes pass the budget."""
        B = self.policy.block
        while self.segments and self.nbytes() > self.policy.budget_bytes:
            seg = self.segments[0]
            over = self.nbytes() - self.policy.budget_bytes
            per_token = max(1, seg.nbytes() // seg.n)
            cut = seg.first + -(-over // per_token)                                   # tokens to drop, ceil
            cut = min(seg.last, -(-cut // B) * B)                                      # at a block boundary
            rest = seg.drop_before(cut, self.policy.path)
            self.evicted = max(self.evicted, min(cut, seg.last))
            self.segments = ([rest] if rest is not None else []) + self.segments[1:]
        drop = self.evicted // B * B - self.states_from   # whole evicted blocks whose states are still kept
        if self.states is not None and drop > 0:   # what bounds the keys and values bounds the states too
            self.states = self.states[drop:].clone()
            self.states_from += drop

    def nbytes(self) -> int:
        """Bytes of the archived keys, values and scales."""
        return sum(s.nbytes() for s in self.segments)

    def representative_bytes(self) -> int:
        """Bytes of the representatives' sums and counts, the tokens' states (their whole buffer, spare rows included:
        what the device holds) and the per-token buffer kept for a re-cut seam."""
        held = (self.sums, self.counts, self.recent, self.states)
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    @property
    def archived(self) -> tuple[int, int]:
        """Token range [start, stop) whose keys and values the archive holds ((0, 0) for none)."""
        if not self.segments:
            return (0, 0)
        return (self.segments[0].first, self.segments[-1].last)

    def fetch(self, store, tokens: list[tuple[int, int]], *, importance: bool = False) -> tuple[torch.Tensor, ...]:
        """Keys and values [held layers, kv_heads, m, d] (the cache's dtype, on its device) and the RoPE position [m]
        each key had, of the token ranges `tokens` (in that order): from the archive, or from `store` for tokens it
        still holds unfolded. A token neither holds is an error (see `available`). importance: also each key's
        importance [held layers, kv_heads, m] (float32; None when the cache keeps none), as a fourth item."""
        dtype, dev = store.kv.layers[store.held[0]].keys.dtype, store.device
        tail_slot, tail_first = self._tail(store)
        ks, vs, ps, imps = [], [], [], []
        scored = store.importance is not None
        for lo, hi in tokens:
            t = lo
            while t < hi:
                if t >= tail_first:       # held by the cache as it was read
                    a = tail_slot + t - tail_first
                    k, v = store.held_kv(a, a + hi - t)
                    ks.append(k), vs.append(v), ps.append(store.positions()[0, 0, a:a + hi - t])
                    if scored:
                        imps.append(store.importance[..., a:a + hi - t].float())
                    t = hi
                    continue
                seg = next((s for s in self.segments if s.first <= t < s.last), None)
                if seg is None:
                    raise BriefingError(f"archive: token {t} is neither archived nor held; recall only what "
                                        "Archive.available() allows.")
                stop = min(hi, seg.last, tail_first)
                k, v = seg.read(t, stop, dtype, dev)
                ks.append(k), vs.append(v), ps.append(seg.positions[t - seg.first:stop - seg.first].to(dev))
                if scored:   # archived before the cache scored (or unscored): zeros
                    imps.append(seg.importance[..., t - seg.first:stop - seg.first].to(dev, torch.float32)
                                if seg.importance is not None else k.new_zeros(k.shape[:-1], dtype=torch.float32))
                t = stop
        out = torch.cat(ks, -2), torch.cat(vs, -2), torch.cat(ps)
        if not importance:
            return out
        return (*out, torch.cat(imps, -1) if scored else None)

    def _tail(self, store) -> tuple[int, int]:
        """(first slot, its token) of the cache's unfolded tail: tokens it holds one per slot, as read."""
        F = store.folded
        if F >= store.length:
            return store.length, store.tokens
        return F, int(store.origins()[0, 0, F])

    def unfolded_from(self, store) -> int:
        """The first token of the cache's unfolded tail (every token from it on is held as read)."""
        return self._tail(store)[1]

    def available(self, store, sink: int, kv: bool = True) -> torch.Tensor:
        """[blocks] bool: blocks whose every token from `sink` on can be fetched (archived, or held unfolded by
        `store`) and whose representative has been read. kv=False: a recall of the blocks' text, which needs no keys
        or values: every block past the sink whose representative has been read."""
        B, nb = self.policy.block, self.sums.shape[0]
        dev = self.sums.device
        have = torch.full((nb * B,), not kv, dtype=torch.bool, device=dev)            # [nb * B] per token
        for seg in self.segments:
            have[seg.first:seg.last] = True
        have[self._tail(store)[1]:self.tokens] = True
        have[:min(sink, nb * B)] = True                                               # the sink is never recalled
        have[self.tokens:] = True                                                     # the last block's unread end
        whole = have.view(nb, B).all(-1)                                              # [nb]
        return whole & (self.starts() + B > sink) & (self.counts > 0)

    def starts(self) -> torch.Tensor:
        """[blocks] the first token of every block."""
        return torch.arange(self.sums.shape[0], device=self.sums.device) * self.policy.block

    def representatives_only(self) -> None:
        """Drop the archived keys and values and archive none from now on (`ArchivePolicy(budget_bytes=0)`): what a
        recall that re-prefills the blocks' text needs."""
        self.policy = replace(self.policy, budget_bytes=0)
        self.evicted = max(self.evicted, self.archived[1])
        self.segments = []

    def clone(self) -> Archive:
        """An independent archive of the same tokens: the representatives copied, the archived blocks shared (they are
        never modified, only replaced)."""
        other = Archive.__new__(Archive)
        other.__dict__.update(self.__dict__)
        other.sums, other.counts, other.recent = self.sums.clone(), self.counts.clone(), self.recent.clone()
        other.states = None if self.states is None else self.token_states().clone()   # written in place
        other.segments = list(self.segments)
        return other
