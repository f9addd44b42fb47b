"""The persistent KV cache of an append-only trajectory text, folded in place to stay within a memory budget.

`extend(text)` prefills only the new tokens. The token seam stays exact without re-tokenising the whole text:
a tail window of the cached text is re-tokenised together with the new text, aligned with the cached ids, and
only the tokens from the first difference on are cropped and prefilled (a BPE merge across the seam changes at
most a few of the last cached tokens). Extending in pieces therefore gives the same ids, and the same cache, as
one prefill.

Past the budget (kept positions; by default the model's window minus a reserve for the call prompt and
generation) the cache folds (briefing.fold): the span between the attention sink and the protected recent
window is compacted in place by Attention Matching, and the cache then holds kept keys, refitted values and a
stored beta per position and KV head, which every forward over it applies (extend, per-call compaction,
generation, log-likelihood). Kept keys keep the RoPE rotation of their original positions while the next
position stays below the model's trained maximum; past it, every key is re-based (rotated by its position
change) to its slot in the cache, as StreamingLLM does, so that no token ever gets a position the model never saw.
`text` and `ids` keep the whole trajectory: only the cache is compacted.
"""
from __future__ import annotations

import copy
import time

import torch
from transformers import DynamicCache

from briefing import kv
from briefing.errors import BriefingError
from briefing.fold import FoldPolicy, FoldStats, fold_span, split_kept
from briefing.model import LoadedModel

SEAM_TOKENS = 32  # tail window re-tokenised at each extend (doubled while the seam does not align)
DEFAULT_RESERVE = 512  # positions left for the call prompt and generation under the default budget
DEFAULT_FOLD = FoldPolicy()  # what a cache folds with unless told otherwise (copied per cache)


class TrajectoryCache:
    """KV cache of `text` for `lm`, folded past `budget` kept positions. A compaction leaves its keys, values and
    beta as they are; it only remembers the call prompt's queries as task guidance for later folds.

    fold: a FoldPolicy, by default `FoldPolicy()` (None: never fold; an extend past the budget is an error, the
    cache then serves up to the model's context length). budget: most positions the cache holds (None:
    lm.max_context - reserve when folding, lm.max_context otherwise). reserve: positions left free for the call prompt and generation (None: 512, at most
    an eighth of the context).
    """

    def __init__(self, lm: LoadedModel, text: str = "", chunk_tokens: int = 1024, *, budget: int | None = None,
                 reserve: int | None = None, fold: FoldPolicy | None = DEFAULT_FOLD) -> None:
        if fold is not None and not isinstance(fold, FoldPolicy):
            raise BriefingError(f"fold must be a briefing.FoldPolicy or None (never fold), got {fold!r}.")
        self.lm = lm
        self.text = ""
        self.ids: list[int] = []
        self.kv = DynamicCache()
        self.chunk_tokens = chunk_tokens
        self.last_extend_s = 0.0
        self.fold = None if fold is None else copy.deepcopy(fold)  # a cache's own copy (guidance and fit too)
        self.reserve = int(reserve) if reserve is not None else min(DEFAULT_RESERVE, lm.max_context // 8)
        if budget is not None:
            self.budget = int(budget)
        else:
            self.budget = lm.max_context - (self.reserve if fold is not None else 0)
        self.recent = 0 if fold is None else (fold.recent if fold.recent is not None else self.budget // 2)
        if fold is not None or budget is not None:
            self.check_budget()
        self.beta: list[torch.Tensor] | None = None    # per layer [kv_heads, F]: stored beta of the first F positions
        self.key_pos: torch.Tensor | None = None       # [L, kv_heads, length] RoPE position of each key (None: 0..n-1)
        self.origin: torch.Tensor | None = None        # [L, kv_heads, length] token index of each key (None: 0..n-1)
        self.position_gap = 0                          # tokens - next RoPE position (grows with each re-base)
        self.folds: list[FoldStats] = []
        self.prefilled_tokens = 0                      # tokens forwarded by extend, in total (seam re-prefills included)
        self.prefill_s = 0.0                           # time spent in those forwards (folds excluded)
        self.rebases = 0
        self._task_q: torch.Tensor | None = None       # [L, KVH, g, n, d] worker-prompt queries, unrotated
        self._span_q: torch.Tensor | None = None       # [L, KVH, g, n, d] sampled prefill queries, unrotated
        self._span_q_tok: list[int] = []               # token index of each sampled prefill query
        self._gen = torch.Generator().manual_seed(fold.seed if fold is not None else 0)
        if text:
            self.extend(text)

    def check_budget(self) -> None:
        if self.reserve < 1:
            raise BriefingError(f"reserve must be >= 1 position for the call prompt and generation, got {self.reserve}.")
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

    # -- sizes and positions ------------------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Positions held in the cache (kept keys); equals `tokens` until the first fold."""
        return kv.cache_length(self.kv)

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
        return 0 if self.beta is None else int(self.beta[0].shape[-1])

    @property
    def folded_tokens(self) -> int:
        """Trajectory tokens that the folded positions after the sink stand for: the tokens before the first
        unfolded position, less the sink (0 before a fold, or when a fold kept nothing of its span)."""
        F = self.folded
        sink = min(self.fold.sink, F) if self.fold is not None else 0
        if F <= sink or F >= self.length:
            return 0
        return int(self.origins()[0, 0, F]) - sink                                  # raw tail: same token every head

    def bias(self) -> torch.Tensor | None:
        """Stored beta over every cached position [L, kv_heads, length] (0 past the folded prefix), or None."""
        if self.beta is None:
            return None
        b = torch.stack(self.beta)                                                    # [L, H, F]
        return torch.nn.functional.pad(b, (0, self.length - b.shape[-1]))             # [L, H, length]

    def positions(self) -> torch.Tensor:
        """RoPE position of every cached key [L, kv_heads, length]."""
        if self.key_pos is None:
            L, H = self.lm.num_layers, self.lm.config.num_key_value_heads
            return torch.arange(self.length).view(1, 1, -1).expand(L, H, -1).clone()
        return self.key_pos

    def origins(self) -> torch.Tensor:
        """Token index (in `ids`) of every cached key [L, kv_heads, length]: which tokens a fold kept."""
        if self.origin is None:
            L, H = self.lm.num_layers, self.lm.config.num_key_value_heads
            return torch.arange(self.length).view(1, 1, -1).expand(L, H, -1).clone()
        return self.origin

    def held(self, start: int, stop: int) -> float:
        """Share of the tokens [start, stop) still held as keys, averaged over (layer, KV head): 1.0 before any
        fold, 0.0 once a fold dropped them everywhere. What folding kept of a fact, for diagnostics."""
        if not 0 <= start < stop <= self.tokens:
            raise BriefingError(f"token range [{start}, {stop}) must be a non-empty range within the {self.tokens} tokens "
                                "of the trajectory.")
        o = self.origins()                                                              # [L, H, length]
        inside = ((o >= start) & (o < stop)).sum(-1).to(torch.float64)                 # [L, H]
        return float(inside.mean() / (stop - start))

    def kv_bytes(self) -> int:
        """Bytes held by the cached keys, values and stored beta."""
        total = sum(t.numel() * t.element_size() for layer in self.kv.layers if layer.is_initialized
                    for t in (layer.keys, layer.values))
        return total + sum(b.numel() * b.element_size() for b in (self.beta or []))

    def clone(self) -> "TrajectoryCache":
        """An independent copy (tensors copied), e.g. to time an extend repeatedly."""
        other = TrajectoryCache.__new__(TrajectoryCache)
        other.__dict__.update(self.__dict__)
        other.ids, other.folds, other._span_q_tok = list(self.ids), list(self.folds), list(self._span_q_tok)
        other.kv = kv.build(*[[t.clone() for t in ts] for ts in kv.layer_kv(self.kv)]) if self.length else DynamicCache()
        other.beta = None if self.beta is None else [b.clone() for b in self.beta]
        other.key_pos = None if self.key_pos is None else self.key_pos.clone()
        other.origin = None if self.origin is None else self.origin.clone()
        other._gen = torch.Generator()
        other._gen.set_state(self._gen.get_state())  # the copy draws what the original would draw next
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

    def _seam(self, text: str) -> tuple[int, list[int]]:
        """How many cached tokens to crop, and the ids to append, so that the ids match a re-tokenisation of the
        text: a tail window of the cached text is re-tokenised with `text` and aligned with the cached ids."""
        if not self.ids:
            return 0, self.lm.encode(text)
        raw = self.length - self.folded  # cached positions that are still plain tokens (croppable)
        chars = 4 * SEAM_TOKENS
        while True:
            start = max(0, len(self.text) - chars)
            old, new = self.lm.encode(self.text[start:]), self.lm.encode(self.text[start:] + text)
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
                return crop, new[k:]
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
        t0 = time.perf_counter()
        crop, todo = self._seam(text)
        if crop:  # a BPE merge across the seam changed the last cached tokens
            self._crop(crop)
        self.text += text
        done = 0
        while done < len(todo):
            n = min(self.chunk_tokens, len(todo) - done)
            if self.length + n > self.budget:
                if self.fold is None:
                    raise BriefingError(
                        f"The trajectory would need {self.length + len(todo) - done} positions, past the cache budget "
                        f"{self.budget} ({self.lm.name}'s context length is {self.lm.max_context}). Pass "
                        "fold=briefing.FoldPolicy() to fold the cache in place, or start a new trajectory.")
                if self.length >= self.budget:  # full: fold, then go on filling
                    self._fold()
                n = min(n, self.budget - self.length)
            if self.position + n > self.lm.max_context - self.reserve and self.position > self.length:
                self._rebase()  # only when folds left gaps: contiguous keys already sit at their slots
            chunk = todo[done:done + n]
            self._prefill(chunk)
            self.ids.extend(chunk)
            done += n
        self.prefilled_tokens += len(todo)
        self.last_extend_s = time.perf_counter() - t0
        return len(todo)

    def _crop(self, n: int) -> None:
        keep_tokens = len(self.ids) - n
        kv.truncate(self.kv, self.length - n)
        if self.key_pos is not None:
            self.key_pos = self.key_pos[..., : self.length]
        if self.origin is not None:
            self.origin = self.origin[..., : self.length]
        del self.ids[keep_tokens:]
        # the text is cropped by the caller's re-tokenisation; sampled queries of dropped tokens go
        keep = [j for j, tok in enumerate(self._span_q_tok) if tok < keep_tokens]
        if len(keep) < len(self._span_q_tok) and self._span_q is not None:
            self._span_q = self._span_q[:, :, :, keep]
            self._span_q_tok = [self._span_q_tok[j] for j in keep]

    @torch.no_grad()
    def _prefill(self, ids: list[int]) -> None:
        from briefing.attention import BiasState, active

        position, first = self.position, len(self.ids)
        stride = self.fold.capture_stride if self.fold is not None else 0
        rows = None
        if stride:
            rows = torch.tensor([i for i in range(len(ids)) if (first + i) % stride == 0], dtype=torch.long)
        state = BiasState(beta=self.beta, capture=rows is not None and rows.numel() > 0, capture_rows=rows)
        input_ids = torch.tensor([ids])
        position_ids = torch.arange(position, position + len(ids))[None]
        t0 = time.perf_counter()
        with active(state):
            self.lm.model(input_ids=input_ids, position_ids=position_ids, past_key_values=self.kv, use_cache=True,
                          logits_to_keep=1)
        self.prefill_s += time.perf_counter() - t0
        if self.key_pos is not None:
            L, H, _ = self.key_pos.shape
            self.key_pos = torch.cat([self.key_pos, position_ids.view(1, 1, -1).expand(L, H, -1)], dim=-1)
        if self.origin is not None:
            L, H, _ = self.origin.shape
            new = torch.arange(first, first + len(ids)).view(1, 1, -1).expand(L, H, -1)  # [L, H, n]
            self.origin = torch.cat([self.origin, new], dim=-1)                         # [L, H, length]
        if state.capture:
            q = self._group(state.queries)                                              # [L, KVH, g, s, d]
            q = kv.rotate(q, -(rows + position).to(torch.float64), self._inv_freq())    # unrotated
            self._span_q = q if self._span_q is None else torch.cat([self._span_q, q], dim=3)
            self._span_q_tok.extend(int(first + r) for r in rows)

    # -- queries for fold guidance ----------------------------------------------------------------------------

    def _inv_freq(self) -> torch.Tensor:
        return kv.rope_inv_freq(self.lm.model)

    def _group(self, queries: dict[int, torch.Tensor]) -> torch.Tensor:
        """Per-layer [1, heads, n, d] -> [L, KVH, g, n, d]."""
        q = torch.cat([queries[i] for i in range(self.lm.num_layers)], dim=0)          # [L, heads, n, d]
        L, heads, n, d = q.shape
        kvh = self.lm.config.num_key_value_heads
        return q.reshape(L, kvh, heads // kvh, n, d)

    def remember_prompt(self, queries: torch.Tensor, position: int) -> None:
        """Keep a worker prompt's queries ([L, KVH, g * n, d], prompt tokens at RoPE `position` onward) as task
        guidance for later folds (the last `max_prompts` prompts' worth of query tokens, at most)."""
        if self.fold is None:
            return
        L, H, m, d = queries.shape
        g = self.lm.config.num_attention_heads // H
        q = queries.reshape(L, H, g, m // g, d)                                         # [L, KVH, g, n, d]
        q = kv.rotate(q, -torch.arange(position, position + m // g, dtype=torch.float64), self._inv_freq())
        self._task_q = q if self._task_q is None else torch.cat([self._task_q, q], dim=3)
        cap = self.fold.max_prompts * max(1, m // g)
        if self._task_q.shape[3] > cap:
            self._task_q = self._task_q[:, :, :, -cap:]

    @torch.no_grad()
    def observe(self, prompt: str) -> None:
        """Remember a worker prompt as task guidance without compacting (what `compact` does on each call): the
        prompt is forwarded over the cache, its queries kept, and the cache cropped back."""
        from briefing.attention import BiasState, active

        if self.fold is None or not self.length:
            return
        ids, T, position = self.lm.encode(prompt), self.length, self.position
        state = BiasState(beta=self.beta, capture=True)
        try:
            with active(state):
                self.lm.model(input_ids=torch.tensor([ids]), position_ids=torch.arange(position, position + len(ids))[None],
                              past_key_values=self.kv, use_cache=True, logits_to_keep=1)
        finally:
            kv.truncate(self.kv, T)
        q = self._group(state.queries)                                                  # [L, KVH, g, n, d]
        L, H, g, n, d = q.shape
        self.remember_prompt(q.reshape(L, H, g * n, d), position)

    # -- folding and re-basing ----------------------------------------------------------------------------------

    def _rebase(self) -> None:
        """Rotate every key to its slot in the cache (positions 0..length-1); the next token follows them."""
        pos = self.positions()                                                          # [L, H, n]
        slots = torch.arange(self.length)
        delta = (slots.view(1, 1, -1) - pos).to(torch.float64)                          # [L, H, n]
        inv = self._inv_freq()
        for layer, d in zip(self.kv.layers, delta, strict=True):
            layer.keys = kv.rotate(layer.keys, d[None], inv)                            # [1, H, n, dim]
        self.position_gap = len(self.ids) - self.length
        self.key_pos = None
        self.rebases += 1

    @torch.no_grad()
    def _fold(self) -> None:
        from briefing.compaction import _scaling

        policy = self.fold
        t0 = time.perf_counter()
        P = self.length
        a, b = min(policy.sink, P), max(min(policy.sink, P), P - self.recent)
        S = b - a
        t = policy.kept(S)
        if S <= 0:
            raise BriefingError(f"Nothing to fold: {P} positions, sink {policy.sink}, recent window {self.recent}. "
                                "Raise the budget or lower the recent window.")
        limit = policy.max_queries
        recent_from = len(self.ids) - (P - b)  # token index of the recent window's first token (unfolded tail)
        span_q, inside = self._span_q, None
        if policy.guidance.span_only:  # only queries of tokens being folded
            inside = [j for j, tok in enumerate(self._span_q_tok) if tok < recent_from]
            span_q = span_q[:, :, :, inside] if span_q is not None and inside else None
        picked, label = policy.guidance.pick(self._task_q, span_q, limit, self._gen)
        keys_l, values_l = kv.layer_kv(self.kv)
        pos = self.positions()                                                          # [L, H, P]
        org = self.origins()                                                            # [L, H, P]
        err = None
        if t > 0 and picked is not None:
            L, H, g, n, d = picked.shape
            Q = kv.rotate(picked, torch.full((n,), float(self.position), dtype=torch.float64), self._inv_freq())
            Q = Q.reshape(L, H, g * n, d)                                               # [L, H, m, d]
            bias = self.bias()                                                          # [L, H, P] or None
            split, t_head = None, 0
            old = max(0, min(self.folded, b) - a)  # positions of earlier folds at the span's start
            if policy.share == "uniform" and old:
                split, t_head = old, split_kept(t, old, self.folded_tokens, S - old)
            idx, new_k, new_v, beta_kept, err = fold_span(keys_l, values_l, bias, Q, a, b, t, policy,
                                                          _scaling(self.lm), split, t_head)
            sink_beta = torch.zeros(L, H, a) if bias is None else bias[..., :a]
            new_beta = torch.cat([sink_beta, beta_kept], dim=-1)                        # [L, H, a + t]
            new_pos = torch.cat([pos[..., :a], pos[..., a:b].gather(-1, idx), pos[..., b:]], dim=-1)
            new_org = torch.cat([org[..., :a], org[..., a:b].gather(-1, idx), org[..., b:]], dim=-1)
        else:  # keep nothing of the span (StreamingLLM), or no queries to guide a fit: drop it
            t = 0
            new_k = [torch.cat([k[..., :a, :], k[..., b:, :]], dim=-2) for k in keys_l]   # per layer [1, H, P - S, d]
            new_v = [torch.cat([v[..., :a, :], v[..., b:, :]], dim=-2) for v in values_l]
            old = self.bias()
            new_beta = None if old is None else old[..., :a]
            new_pos = torch.cat([pos[..., :a], pos[..., b:]], dim=-1)
            new_org = torch.cat([org[..., :a], org[..., b:]], dim=-1)
            label = "none (keep 0: span dropped)" if policy.kept(S) == 0 else "no queries yet: span dropped"
        self.kv = kv.build(new_k, new_v)
        self.beta = None if new_beta is None or new_beta.shape[-1] == 0 else list(new_beta.unbind(0))
        self.key_pos = new_pos
        self.origin = new_org
        # sampled prefill queries: keep a uniform sample as the memory of the folded content (span only: and every
        # query of the recent window, which later folds will fold)
        if self._span_q is not None and self._span_q.shape[3] > limit:
            if inside is not None:
                folded = inside
                recent = [j for j, tok in enumerate(self._span_q_tok) if tok >= recent_from]
                if len(folded) > limit:
                    folded = [folded[int(i)] for i in torch.randperm(len(folded), generator=self._gen)[:limit]]
                keep = torch.tensor(sorted(folded + recent), dtype=torch.long)
            else:
                keep = torch.randperm(self._span_q.shape[3], generator=self._gen)[:limit].sort().values
            self._span_q = self._span_q[:, :, :, keep]
            self._span_q_tok = [self._span_q_tok[int(j)] for j in keep]
        self.folds.append(FoldStats(
            span_start=a, span_stop=b, span=S, kept=t, positions_before=P, positions_after=self.length,
            tokens_seen=len(self.ids), guidance=label, query_tokens=0 if picked is None or t == 0 else int(picked.shape[3]),
            time_s=time.perf_counter() - t0, fit_error=err))

    def compact(self, prompt: str, selector=None, *, query_tokens: int | None = None):
        """A per-call CompactedCache of this trajectory, guided by `prompt` (or its last `query_tokens` tokens; see
        briefing.compaction)."""
        from briefing.compaction import compact
        return compact(self, prompt, selector, query_tokens=query_tokens)
