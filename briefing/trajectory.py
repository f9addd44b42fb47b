"""The persistent full KV cache of an append-only trajectory text.

`extend(text)` prefills only the new tokens. Tokenisation at the seam cannot drift: the whole text is
re-tokenised (cheap next to a forward pass), the longest common prefix with the cached ids is kept, and
only the tokens after it are prefilled (cropping the last cached tokens if a merge across the seam changed
them). Extending in pieces therefore gives the same ids, and the same cache, as one prefill.
"""
from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from briefing import kv
from briefing.errors import BriefingError
from briefing.model import LoadedModel


class TrajectoryCache:
    """Full KV cache of `text` for `lm`. Never modified by a compaction."""

    def __init__(self, lm: LoadedModel, text: str = "", chunk_tokens: int = 1024) -> None:
        self.lm = lm
        self.text = ""
        self.ids: list[int] = []
        self.kv = DynamicCache()
        self.chunk_tokens = chunk_tokens
        self.last_extend_s = 0.0
        if text:
            self.extend(text)

    @property
    def length(self) -> int:
        return len(self.ids)

    def sync(self, full_text: str) -> int:
        """Make the cache hold `full_text`, which must start with the current text. Returns new token count."""
        if not full_text.startswith(self.text):
            raise BriefingError(
                "The trajectory is append-only: the new text does not start with the text already cached. "
                "Render events so that each rendering extends the previous one, or start a new TrajectoryCache."
            )
        return self.extend(full_text[len(self.text):])

    def extend(self, text: str) -> int:
        """Append `text`; prefill only the tokens that are new. Returns how many tokens were prefilled."""
        if not text:
            return 0
        t0 = time.perf_counter()
        new_ids = self.lm.encode(self.text + text)
        if len(new_ids) > self.lm.max_context:
            raise BriefingError(
                f"The trajectory would be {len(new_ids)} tokens, past {self.lm.name}'s context length "
                f"{self.lm.max_context}. Start a new trajectory or use a model with a longer context."
            )
        keep = 0
        for a, b in zip(self.ids, new_ids):
            if a != b:
                break
            keep += 1
        if keep < len(self.ids):  # a BPE merge across the seam changed the last cached tokens
            kv.truncate(self.kv, keep)
        self.text += text
        self.ids = new_ids
        todo = new_ids[keep:]
        for start in range(0, len(todo), self.chunk_tokens):
            chunk = todo[start:start + self.chunk_tokens]
            self._prefill(chunk, keep + start)
        self.last_extend_s = time.perf_counter() - t0
        return len(todo)

    @torch.no_grad()
    def _prefill(self, ids: list[int], position: int) -> None:
        input_ids = torch.tensor([ids])
        position_ids = torch.arange(position, position + len(ids))[None]
        self.lm.model(input_ids=input_ids, position_ids=position_ids, past_key_values=self.kv, use_cache=True,
                      logits_to_keep=1)

    def compact(self, prompt: str, selector=None):
        """A per-call CompactedCache of this trajectory, guided by `prompt` (see briefing.compaction)."""
        from briefing.compaction import compact
        return compact(self, prompt, selector)
