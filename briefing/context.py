"""What a worker generates on: a (compacted) KV cache, its per-head bias, and the prompt already forwarded."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import BaseModel
from transformers import DynamicCache

from briefing import kv
from briefing.attention import BiasState, active
from briefing.errors import BriefingError
from briefing.model import LoadedModel


class CompactionStats(BaseModel):
    """Figures of one compaction (times in seconds)."""

    method: str
    kept: int
    original_length: int
    kept_ratio: float
    prompt_tokens: int
    time_score_s: float = 0.0
    time_select_s: float = 0.0
    time_beta_s: float = 0.0
    time_values_s: float = 0.0
    time_prompt_s: float = 0.0
    time_total_s: float = 0.0
    fit_error: float | None = None
    fit_error_topk: float | None = None
    fallback: str | None = None


@dataclass
class CompactedCache:
    """A per-call, discardable context: kept trajectory KV (+ beta) followed by the worker prompt.

    kv holds `base_length` positions at rest (kept + prompt); generation appends and then truncates back,
    so the object can serve any number of generate/loglikelihood calls. `next_position` is the RoPE
    position of the next token: the trajectory's TRUE length plus the prompt length.
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

    def check_model(self, lm: LoadedModel | None) -> None:
        if lm is not None and lm.fingerprint != self.lm.fingerprint:
            raise BriefingError(
                f"This compacted cache was built with {self.lm.name} ({self.lm.fingerprint}); it cannot be used "
                f"with {lm.name} ({lm.fingerprint}). Compact the trajectory again with the model you generate with."
            )

    @torch.no_grad()
    def forward(self, ids: list[int], position: int) -> torch.Tensor:
        """Forward `ids` at RoPE `position` onward, appending to kv. Returns logits [len(ids), vocab]."""
        return forward_with_bias(self.lm, self.kv, ids, position, self.beta)

    def reset(self) -> None:
        kv.truncate(self.kv, self.base_length)


@torch.no_grad()
def forward_with_bias(lm: LoadedModel, cache: DynamicCache, ids: list[int], position: int,
                      beta: list[torch.Tensor | None] | None, capture: bool = False,
                      last_only: bool = False) -> tuple | torch.Tensor:
    """One forward pass with the briefing attention active (bias on the first keys, optional query capture).
    Returns logits [len(ids), vocab] ([1, vocab] with last_only), and the captured queries if `capture`."""
    state = BiasState(beta=beta, capture=capture)
    input_ids = torch.tensor([ids])
    position_ids = torch.arange(position, position + len(ids))[None]
    with active(state):
        out = lm.model(input_ids=input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True,
                       logits_to_keep=1 if last_only else 0)
    logits = out.logits[0].float()
    return (logits, state.queries) if capture else logits


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
    cache = DynamicCache()
    logits = forward_with_bias(lm, cache, ids, 0, None, last_only=True)
    stats = CompactionStats(method="plain", kept=0, original_length=0, kept_ratio=0.0, prompt_tokens=len(ids))
    return CompactedCache(lm, cache, None, len(ids), len(ids), logits[-1], ids, stats)
