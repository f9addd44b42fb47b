"""The persistent KV cache of an append-only trajectory text, folded in place to stay within a memory budget.

`extend(text)` prefills only the new tokens. The token seam stays exact without re-tokenising the whole text:
a tail window of the cached text is re-tokenised together with the new text, aligned with the cached ids, and
only the tokens from the first difference on are cropped and prefilled (a BPE merge across the seam changes at
most a few of the last cached tokens). Extending in pieces therefore gives the same ids, and the same cache, as
one prefill.

Past the budget (kept positions; by default the model's window minus a reserve for the call prompt and
generation) the cache folds (`briefing.fold`): the positions live in a `briefing.store.KVStore`, whose folded
prefix carries a stored beta that every forward over it applies. Kept keys keep the RoPE rotation of their
original positions while the next position stays below the model's trained maximum; past it, every key is
re-based to its slot, as StreamingLLM does, so that no token ever gets a position the model never saw.
`text` and `ids` keep the whole trajectory: only the cache is compacted.

What changes the cache: `extend` / `sync` (prefill, folds, re-bases) and `remember(ctx)` (a call's queries kept as
fold guidance). `compact` does not: it returns a per-call context and leaves the cache as it was.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import TYPE_CHECKING

import torch

from briefing import kv
from briefing.archive import Archive, ArchivePolicy
from briefing.attention import BiasState
from briefing.compaction import compact, compact_many
from briefing.context import run_model
from briefing.errors import BriefingError
from briefing.fold import FoldPolicy, fold, folded_tokens
from briefing.importance import PREVIOUS_TOKENS, reconstruction_scores
from briefing.matching import group_queries
from briefing.model import LoadedModel
from briefing.options import check_bool, check_int
from briefing.stats import FoldStats
from briefing.store import KVStore

if TYPE_CHECKING:
    from briefing.context import CompactedCache
    from briefing.selection import Selector

SEAM_TOKENS = 32  # tail window re-tokenised at each extend (doubled while the seam does not align)
DEFAULT_RESERVE = 512  # positions left for the call prompt and generation under the default budget
DEFAULT_FOLD = FoldPolicy()  # what a cache folds with unless told otherwise (copied per cache)
IMPORTANCE_WINDOW = 512  # tokens the importance reconstructs at a time (chosen on dev: docs/benchmarks.md)


class TrajectoryCache:
    """KV cache of `text` for `lm`, folded past `budget` kept positions.

    fold: a FoldPolicy, by default `FoldPolicy()` (None: never fold; an extend past the budget is an error, the
    cache then serves up to the model's context length). budget: most positions the cache holds (None:
    lm.max_context - reserve when folding, lm.max_context otherwise). reserve: positions left free for the call
    prompt and generation (None: 512, at most an eighth of the context). importance: score every appended chunk
    by reconstruction (`briefing.importance`: one more forward of the chunk, 0.7-1.1x its prefill on this CPU), kept
    with the cache for the selectors (`Scores.importance`; a selector with `agnostic > 0` needs it); False (the
    default): no score (a model that slides on every layer has none). importance_window: tokens reconstructed at a
    time, the width of the score's softmax; a chunk longer than it is scored in pieces of it (None: the prefill
    chunk, `chunk_tokens`). 512, the default, was chosen on the dev split: against the 1,024-token chunk it costs
    1.19x a prefill at 2,048 tokens instead of 1.6x and is about level in answer KL, lower at 5% kept (256: higher
    at 5%; docs/benchmarks.md, "The importance's window: 512 tokens by default"). archive: an
    `ArchivePolicy` to keep what the folds compact away (with each token's importance) and a representative per
    block for latent recall (`briefing.archive`; None: none).
    """

    def __init__(self, lm: LoadedModel, text: str = "", chunk_tokens: int = 1024, *, budget: int | None = None,
                 reserve: int | None = None, fold: FoldPolicy | None = DEFAULT_FOLD, importance: bool = False,
                 importance_window: int | None = IMPORTANCE_WINDOW, archive: ArchivePolicy | None = None) -> None:
        if fold is not None and not isinstance(fold, FoldPolicy):
            raise BriefingError(f"fold must be a briefing.FoldPolicy or None (never fold), got {fold!r}.")
        self.lm = lm
        self.text = ""
        self.ids: list[int] = []
        # per token of `ids`: the characters [start, stop) of `text` it covers (None: the tokenizer cannot say)
        self.spans: list[tuple[int, int]] | None = [] if lm.has_spans else None
        check_bool("TrajectoryCache", "importance", importance)
        check_int("TrajectoryCache", "importance_window", importance_window, low=1, none=True,
                  what="tokens reconstructed at a time by the importance (None: the prefill chunk)")
        self.store = KVStore(lm, importance=importance)
        self.chunk_tokens = chunk_tokens
        self.importance_window = importance_window
        self.fold = None if fold is None else copy.deepcopy(fold)  # a cache's own copy (guidance and selector too)
        self.memory = None if fold is None else self.fold.memory()  # fold guidance: remembered queries
        self.reserve = int(reserve) if reserve is not None else min(DEFAULT_RESERVE, lm.max_context // 8)
        if budget is not None:
            self.budget = int(budget)
        else:
            self.budget = lm.max_context - (self.reserve if fold is not None else 0)
        self.recent = 0 if fold is None else (fold.recent if fold.recent is not None else self.budget // 2)
        if fold is not None or budget is not None:
            self.check_budget()
        self.position_gap = 0                          # tokens - next RoPE position (grows with each re-base)
        self.folds: list[FoldStats] = []
        # tokens forwarded by extend, in total (seam re-prefills included)
        self.prefilled_tokens = 0
        self.prefill_s = 0.0                           # time spent in those forwards (folds excluded)
        self.importance_s = 0.0                        # time spent scoring the chunks by reconstruction
        self.last_extend_s = 0.0
        self.rebases = 0
        self.broken: str | None = None                 # why an extend failed half-way (the cache is then unusable)
        if archive is not None and not isinstance(archive, ArchivePolicy):
            raise BriefingError(f"archive must be a briefing.ArchivePolicy or None (no archive), got {archive!r}.")
        self.archive = None if archive is None or fold is None else Archive(lm, archive)  # what the folds compact away
        if text:
            self.extend(text)

    def check_budget(self) -> None:
        if self.reserve < 1:
            raise BriefingError(f"reserve must be >= 1 position for the call prompt and generation, got "
                                f"{self.reserve}.")
        if self.budget + self.reserve > self.lm.max_context:
            raise BriefingError(
                f"budget {self.budget} plus reserve {self.reserve} exceed {self.lm.name}'s context length "
                f"{self.lm.max_context}. Lower the budget (kept positions) or the reserve.")
        if self.fold is not None:
            need = self.fold.sink + self.recent + self.reserve
            if self.budget < need:
                raise BriefingError(
                    f"budget {self.budget} is smaller than sink ({self.fold.sink}) + recent window ({self.recent}) "
                    f"+ prompt reserve ({self.reserve}) = {need}. Raise the budget or lower sink, recent or reserve.")

    # -- sizes, positions and what is held ----------------------------------------------------------------------

    @property
    def kv(self):
        """The DynamicCache of the held positions (the store's)."""
        return self.store.kv

    @property
    def beta(self) -> torch.Tensor | None:
        """Stored beta [held layers, kv_heads, F] of the folded prefix (None before a fold)."""
        return self.store.beta

    @property
    def length(self) -> int:
        """Positions held in the cache (kept keys); equals `tokens` until the first fold."""
        return self.store.length

    @property
    def tokens(self) -> int:
        """Tokens of the whole trajectory text."""
        return len(self.ids)

    @property
    def position(self) -> int:
        """RoPE position of the next token (the trajectory's true length until the first re-base)."""
        return len(self.ids) - self.position_gap

    @property
    def folded(self) -> int:
        """Positions at the start of the cache that carry a stored beta (sink + folded keys); 0 before a fold."""
        return self.store.folded

    @property
    def folded_tokens(self) -> int:
        """Trajectory tokens that the folded positions after the sink stand for (0 before a fold)."""
        return folded_tokens(self.store, self.fold.sink if self.fold is not None else 0)

    def bias(self) -> torch.Tensor | None:
        """Stored beta over every cached position [L, kv_heads, length] (0 past the folded prefix), or None."""
        return self.store.bias()

    def positions(self) -> torch.Tensor:
        """RoPE position of every cached key [L, kv_heads, length]."""
        return self.store.positions()

    def origins(self) -> torch.Tensor:
        """Token index (in `ids`) of every cached key [L, kv_heads, length]: which tokens a fold kept."""
        return self.store.origins()

    def held(self, start: int, stop: int) -> float:
        """Share of the tokens [start, stop) still held as keys, averaged over (layer, KV head): 1.0 before any
        fold, 0.0 once a fold dropped them everywhere. What folding kept of a fact, for diagnostics."""
        if not 0 <= start < stop <= self.tokens:
            raise BriefingError(f"token range [{start}, {stop}) must be a non-empty range within the {self.tokens} "
                                "tokens of the trajectory.")
        o = self.origins()                                                              # [L, H, length]
        inside = ((o >= start) & (o < stop)).sum(-1).to(torch.float64)                 # [L, H]
        return float(inside.mean() / (stop - start))

    def kv_bytes(self) -> int:
        """Bytes held by the cached keys, values and stored beta."""
        return self.store.kv_bytes()

    def held_bytes(self) -> int:
        """Everything the cache holds in tensors: `kv_bytes()` plus, when it keeps an archive, the archive's keys,
        values, scales and representatives."""
        if self.archive is None:
            return self.kv_bytes()
        return self.kv_bytes() + self.archive.nbytes() + self.archive.representative_bytes()

    def clone(self, *, fold: FoldPolicy | None = None, budget: int | None = None,
              reserve: int | None = None) -> TrajectoryCache:
        """An independent copy (tensors copied), e.g. to time an extend repeatedly or to branch a trajectory. A fold
        policy, budget or reserve given here replaces the original's for the copy's later folds (the guidance
        memory, the positions and the folds so far are kept): branches of one prefill that fold differently."""
        other = TrajectoryCache.__new__(TrajectoryCache)
        other.__dict__.update(self.__dict__)
        other.ids, other.folds = list(self.ids), list(self.folds)
        other.spans = None if self.spans is None else list(self.spans)
        other.store = self.store.clone()
        other.memory = None if self.memory is None else self.memory.clone()  # draws what the original would draw
        other.archive = None if self.archive is None else self.archive.clone()
        if fold is not None:
            if not isinstance(fold, FoldPolicy) or self.fold is None:
                raise BriefingError("clone(fold=...) takes a briefing.FoldPolicy, for a cache that folds.")
            other.fold = copy.deepcopy(fold)
        if budget is not None:
            other.budget = int(budget)
        if (fold is not None or budget is not None) and other.fold is not None:   # as a new cache of that budget
            other.recent = other.fold.recent if other.fold.recent is not None else other.budget // 2
        if reserve is not None:
            other.reserve = int(reserve)
        if fold is not None or budget is not None or reserve is not None:
            other.check_budget()
        return other

    # -- text -----------------------------------------------------------------------------------------------------

    def sync(self, full_text: str) -> int:
        """Make the cache hold `full_text`, which must start with the current text. Returns new token count."""
        if not full_text.startswith(self.text):
            raise BriefingError(
                "The trajectory is append-only: the new text does not start with the text already cached. "
                "Render events so that each rendering extends the previous one, or start a new TrajectoryCache."
            )
        return self.extend(full_text[len(self.text):])

    def token_spans(self) -> list[tuple[int, int]]:
        """`spans`: the characters of `text` each token covers; a clear error where the tokenizer cannot say."""
        if self.spans is None:
            self.lm.check_spans()
        return self.spans

    def _seam(self, text: str) -> tuple[int, list[int], list[tuple[int, int]]]:
        """How many cached tokens to crop, and the ids to append with the characters of the new text (`self.text`
        then `text`) each covers, so that the ids match a re-tokenisation of the text: a tail window of the cached
        text is re-tokenised with `text` and aligned with the cached ids."""
        encode = self.lm.encode_spans if self.spans is not None else lambda t: (self.lm.encode(t), [])
        if not self.ids:
            ids, spans = encode(text)
            at = len(self.text)
            return 0, ids, [(a + at, b + at) for a, b in spans]
        raw = self.length - self.folded  # cached positions that are still plain tokens (croppable)
        chars = 4 * SEAM_TOKENS
        while True:
            start = max(0, len(self.text) - chars)
            old = self.lm.encode(self.text[start:])
            new, spans = encode(self.text[start:] + text)
            # old[i:] agrees with the cached ids' suffix (the window's first tokens may be cut differently)
            i, n = len(old), len(self.ids)
            while i > 0 and len(old) - i < n and old[i - 1] == self.ids[n - (len(old) - i) - 1]:
                i -= 1
            k = 0  # old and new agree up to k: old[k:] are re-cut by the new text
            while k < min(len(old), len(new)) and old[k] == new[k]:
                k += 1
            if k >= i and (start > 0 or i == 0):
                crop = len(old) - k
                if crop > raw:
                    break
                return crop, new[k:], [(a + start, b + start) for a, b in spans[k:]]
            if start == 0:
                break
            chars *= 2
        raise BriefingError(
            f"The token seam could not be aligned within the cache's {raw} unfolded positions: the new text "
            "changes the tokens of text that was already folded. Raise the fold policy's recent window.")

    def extend(self, text: str) -> int:
        """Append `text`; prefill only the tokens that are new (folding first whenever the budget would be
        passed). Returns how many tokens were prefilled."""
        if not isinstance(text, str):
            raise BriefingError(f"text must be a str, got {type(text).__name__}.")
        if not text:
            return 0
        if self.broken:
            raise BriefingError(f"This TrajectoryCache is unusable: an earlier extend failed half-way ({self.broken}). "
                                "Start a new TrajectoryCache for the trajectory.")
        t0 = time.perf_counter()
        crop, todo, spans = self._seam(text)
        need = self.length - crop + len(todo)
        if self.fold is None and not self.store.windowed and need > self.budget:  # refused before anything changes
            raise BriefingError(
                f"The trajectory would need {need} positions, past the cache budget {self.budget} ({self.lm.name}'s "
                f"context length is {self.lm.max_context}). Pass fold=briefing.FoldPolicy() to fold the cache in "
                "place, or start a new trajectory.")
        try:
            self._append(text, crop, todo, spans)
        except BaseException as e:  # text, ids and positions no longer agree: say so on every later use
            self.broken = f"{type(e).__name__}: {e}"
            raise
        self.prefilled_tokens += len(todo)
        self.last_extend_s = time.perf_counter() - t0
        return len(todo)

    def _append(self, text: str, crop: int, todo: list[int], spans: list[tuple[int, int]]) -> None:
        if crop:  # a BPE merge across the seam changed the last cached tokens
            self._crop(crop)
        self.text += text
        done = 0
        while done < len(todo):
            n = min(self.chunk_tokens, len(todo) - done)
            if self.length + n > self.budget and not self.store.windowed:  # (unfolding caches: checked in `extend`)
                if self.length >= self.budget:  # full: fold, then go on filling
                    self._fold()
                n = min(n, self.budget - self.length)
            if self.position + n > self.lm.max_context - self.reserve and self.position > self.length:
                self._rebase()  # only when folds (or a window) left gaps: contiguous keys already sit at their slots
            n = min(n, max(1, self.lm.max_context - self.reserve - self.position))  # no position past the model's
            chunk = todo[done:done + n]
            self._prefill(chunk)
            self.ids.extend(chunk)
            if self.spans is not None:
                self.spans.extend(spans[done:done + n])
            self._locate()
            done += n

    def _crop(self, n: int) -> None:
        keep_tokens = len(self.ids) - n
        self.store.crop(n)
        del self.ids[keep_tokens:]  # the text is cropped by the caller's re-tokenisation
        if self.spans is not None:
            del self.spans[keep_tokens:]
        self._locate()
        if self.memory is not None:  # sampled queries of dropped tokens go
            self.memory.crop(keep_tokens)
        if self.archive is not None:  # and their hidden states
            self.archive.crop(keep_tokens)

    def _prefill(self, ids: list[int]) -> None:
        position, first = self.position, len(self.ids)
        rows = None if self.memory is None else self.memory.rows(first, len(ids), self.lm.device)
        state = BiasState(beta=self.store.attention_bias(), capture=rows is not None, capture_rows=rows)
        t0 = time.perf_counter()
        reading = contextlib.nullcontext() if self.archive is None else self.archive.reading(first, len(ids))
        with reading:  # the archive reads the block representatives' hidden states off this forward
            run_model(self.lm, self.store.kv, ids, position, state, logits=False)
        self.prefill_s += time.perf_counter() - t0
        self.store.appended(first, position, len(ids))
        if self.store.importance is not None:
            t0 = time.perf_counter()
            start = self.store.length - len(ids)
            w = self.importance_window or self.chunk_tokens
            for a in range(0, len(ids), w):   # the chunk in pieces of the window (one piece by default)
                piece = ids[a:a + w]
                before = (self.ids[-PREVIOUS_TOKENS:] + ids[:a])[-PREVIOUS_TOKENS:]   # what its repeat quotes
                scores = reconstruction_scores(self.lm, self.store, start + a, start + a + len(piece), piece, before,
                                               position + a + len(piece), w)           # [Lh, H, len(piece)]
                self.store.set_importance(start + a, scores)
            self.importance_s += time.perf_counter() - t0
        if rows is not None:
            q = self._grouped(state.queries)                                            # [Lh, KVH, g, s, d]
            self.memory.capture(q, rows, first, position, self.lm.inv_freq())

    def _locate(self) -> None:
        """Tell the store where the trajectory stands: tokens seen and the next RoPE position."""
        self.store.tokens, self.store.position = len(self.ids), self.position

    # -- queries for fold guidance ----------------------------------------------------------------------------

    def _grouped(self, queries: dict[int, torch.Tensor]) -> torch.Tensor:
        """Per-layer [1, heads, n, d] -> [Lh, KVH, g, n, d] (the held layers)."""
        q = group_queries(queries, self.store.held, self.lm.kv_heads)                   # [Lh, KVH, g * n, d]
        L, H, m, d = q.shape
        g = self.lm.group
        return q.reshape(L, H, g, m // g, d)

    def remember(self, ctx: CompactedCache) -> None:
        """Keep the guidance queries of a call's compacted context as task guidance for later folds (what a worker
        does after each call). A context built without queries (a selector that needed none) adds nothing."""
        if self.memory is None or ctx.queries is None:
            return
        self.memory.add_prompt(ctx.queries, ctx.query_position, self.lm.group, self.lm.inv_freq())

    def observe(self, prompt: str) -> None:
        """Remember a worker prompt as task guidance without compacting: the prompt is forwarded over the cache, its
        queries kept, and the cache cropped back."""
        if self.memory is None or not self.length or self.fold.keep == 0:  # a fold that keeps nothing needs no guidance
            return
        ids, position = self.lm.encode(prompt), self.position
        state = BiasState(beta=self.store.attention_bias(), capture=True)
        before = kv.marks(self.store.kv)
        try:
            run_model(self.lm, self.store.kv, ids, position, state, logits=False)
        finally:
            kv.rollback(self.store.kv, before)
        queries = group_queries(state.queries, self.store.held, self.lm.kv_heads)       # [Lh, KVH, g * n, d]
        self.memory.add_prompt(queries, position, self.lm.group, self.lm.inv_freq())

    # -- folding and re-basing ----------------------------------------------------------------------------------

    def _rebase(self) -> None:
        """Rotate every held key to its slot in the cache (positions 0..length-1); the next token follows them, and
        the window layers' latest tokens shift with it."""
        lm = self.lm
        shift = self.length - self.position
        self.store.rebase(lm.inv_freq(), lm.inv_freq(lm.window_layers) if lm.window_layers else None, shift)
        self.position_gap = len(self.ids) - self.length
        self.rebases += 1
        self._locate()

    def _fold(self) -> None:
        if self.archive is not None:  # the span's tokens no fold compacted yet, as they were read
            self.archive.keep_span(self.store, self.fold.sink, self.recent)
        self.folds.append(fold(self.store, self.memory, self.fold, recent=self.recent, tokens_seen=len(self.ids),
                               position=self.position, scale=self.lm.scaling, inv_freq=self.lm.inv_freq()))

    def compact(self, prompt: str, selector: Selector | None = None, *,
                query_tokens: int | None = None) -> CompactedCache:
        """A per-call CompactedCache of this trajectory, guided by `prompt` (or its last `query_tokens` tokens; see
        briefing.compaction). The cache is left as it was."""
        return compact(self, prompt, selector, query_tokens=query_tokens)

    def compact_many(self, prompts: list[str], selector: Selector | None = None, *,
                     query_tokens: list[int | None] | None = None) -> list[CompactedCache]:
        """`compact` for a batch of prompts, sharing one forward over the cache and one batched fit (see
        briefing.compaction.compact_many). The cache is left as it was."""
        return compact_many(self, prompts, selector, query_tokens=query_tokens)
