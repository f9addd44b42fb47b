"""What a worker generates on: a (compacted) KV cache, its per-head bias, and the prompt already forwarded; and the
one function through which the briefing layer runs the model."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from briefing import kv
from briefing.attention import BiasState, active
from briefing.errors import BriefingError
from briefing.model import LoadedModel
from briefing.stats import CompactionStats


@torch.no_grad()
def run_model(lm: LoadedModel, cache: DynamicCache, ids: list[int], position: int, state: BiasState | None = None,
              last_only: bool = False, logits: bool = True) -> torch.Tensor:
    """Forward `ids` at RoPE positions `position`.. over `cache` (appending to it), with the briefing attention in
    `state` (bias on the first keys, query capture; None: plain). Returns logits [len(ids), vocab] ([1, vocab] with
    last_only; [0, vocab] with logits=False, whatever last_only: the LM head gets no row, for a pass read only for its
    cache, its captured queries, scores or hidden states; one row still reads the whole [vocab, hidden] matrix). One
    sequence of `run_rows`."""
    dev = lm.device
    input_ids = torch.tensor([ids], device=dev)                                   # [1, n]
    position_ids = torch.arange(position, position + len(ids), device=dev)[None]  # [1, n]
    keep = (1 if last_only else 0) if logits else torch.empty(0, dtype=torch.long, device=dev)
    return run_rows(lm, cache, input_ids, position_ids, state, keep=keep)[0]


@torch.no_grad()
def run_rows(lm: LoadedModel, cache: DynamicCache, input_ids: torch.Tensor, position_ids: torch.Tensor,
             state: BiasState | None = None, *, keep: int | torch.Tensor = 0,
             mask: torch.Tensor | dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The one model call of the briefing layer: rows input_ids [B, n] at RoPE positions position_ids [B, n] over
    `cache` (batch B, appended to). keep: logits of the last `keep` tokens (0: all) or of the token indices in a 1D
    tensor. mask: None (the model's own causal masks) or a prepared boolean mask [B, 1, n, keys] (True: attend), per
    attention kind for a hybrid model. Returns logits [B, kept, vocab] in float32."""
    with active(state if state is not None else BiasState()):
        out = lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=True, logits_to_keep=keep,
                       attention_mask=mask, **{lm.cache_kwarg: cache})
    return out.logits.float()


def forward_with_bias(lm: LoadedModel, cache: DynamicCache, ids: list[int], position: int,
                      beta: list[torch.Tensor | None] | None, capture: bool = False,
                      last_only: bool = False, logits: bool = True) -> tuple | torch.Tensor:
    """`run_model` with a bias on the first keys and optional query capture. Returns logits, and the captured
    post-RoPE queries per layer ([1, heads, n, d]) if `capture`."""
    state = BiasState(beta=beta, capture=capture)
    out = run_model(lm, cache, ids, position, state, last_only, logits)
    return (out, state.queries) if capture else out


@dataclass
class CompactedCache:
    """A per-call, discardable context: kept trajectory KV (+ beta) followed by the worker prompt.

    kv holds `base_length` positions at rest (kept + prompt); generation appends and then truncates back,
    so the object can serve any number of generate/loglikelihood calls. `next_position` is the RoPE
    position of the next token: the trajectory's TRUE length plus the prompt length.
    `queries` [L, kv_heads, m, d] (post-RoPE, the prompt's tokens from `query_position` on) are the guidance that
    scored it; a worker hands them to `TrajectoryCache.remember(ctx)` so later folds can use them.
    """

    lm: LoadedModel
    kv: DynamicCache
    beta: list[torch.Tensor | None] | None
    base_length: int
    next_position: int
    last_logits: torch.Tensor
    prompt_ids: list[int]
    stats: CompactionStats
    positions: torch.Tensor | None = field(default=None, repr=False)  # [layers, kv_heads, t] kept indices
    queries: torch.Tensor | None = field(default=None, repr=False)    # [layers, kv_heads, m, d] guidance queries
    query_position: int = 0
    marks: list | None = field(default=None, repr=False)              # what each layer holds at rest

    def check_model(self, lm: LoadedModel | None) -> None:
        if lm is not None and lm.fingerprint != self.lm.fingerprint:
            raise BriefingError(
                f"This compacted cache was built with {self.lm.name} ({self.lm.fingerprint}); it cannot be used "
                f"with {lm.name} ({lm.fingerprint}). Compact the trajectory again with the model you generate with."
            )

    def forward(self, ids: list[int], position: int) -> torch.Tensor:
        """Forward `ids` at RoPE `position` onward, appending to kv. Returns logits [len(ids), vocab]."""
        return forward_with_bias(self.lm, self.kv, ids, position, self.beta)

    def reset(self) -> None:
        """Drop what a generation added: back to the context at rest."""
        if self.marks is None:
            self.marks = [(self.base_length, self.base_length)] * len(self.kv.layers)
        kv.rollback(self.kv, self.marks)


def check_prompt(lm: LoadedModel, prompt: str, trajectory_length: int) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise BriefingError("The worker prompt is empty: pass the instructions and query the worker must answer.")
    ids = lm.encode(prompt)
    if trajectory_length + len(ids) >= lm.max_context:
        raise BriefingError(
            f"Trajectory ({trajectory_length} tokens) plus prompt ({len(ids)} tokens) reach {lm.name}'s context "
            f"length {lm.max_context}. Shorten the prompt or the trajectory."
        )
    return ids


def plain_context(lm: LoadedModel, prompt: str) -> CompactedCache:
    """No trajectory at all: the prompt alone, from position 0 (the `plain` worker)."""
    ids = check_prompt(lm, prompt, 0)
    cache = lm.new_cache()
    logits = run_model(lm, cache, ids, 0, last_only=True)
    stats = CompactionStats(method="plain", kept=0, original_length=0, kept_ratio=0.0, prompt_tokens=len(ids))
    return CompactedCache(lm, cache, None, len(ids), len(ids), logits[-1], ids, stats, marks=kv.marks(cache))
