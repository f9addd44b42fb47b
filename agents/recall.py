"""Recall for a folded trajectory: what a briefed worker brings back into a call once its cache has folded.

A folded `briefing.TrajectoryCache` keeps a share of the old trajectory's positions, chosen before the question that
will need them is known; the trajectory's text keeps everything. A recall strategy picks, for the call's query, what
to bring back within a token budget. `TextRecall` (the default) recalls the BM25 top chunks of the text and puts them
before the query, so a worker call on bounded memory can still reach a fact that the folds compacted away.
`bm25_chunks` also serves the BM25 baselines of the benchmarks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from briefing.options import check_bool, check_int

if TYPE_CHECKING:
    import briefing

RECALL_HEADER = "Recalled from earlier in the trajectory:\n"
SEPARATOR = "\n...\n"
MIN_RECALL_TOKENS = 16  # below this a recall is noise: none is made


class TokenCounter(Protocol):
    def count_tokens(self, text: str) -> int: ...


@dataclass
class Recalled:
    """What a recall brought back: `text` (the chunks as they go before the query, "" for nothing), and `ranges`,
    the character ranges [start, stop) of the searched text each chunk came from, in the order they appear in
    `text`; `how` names the strategy."""

    text: str = ""
    ranges: list[tuple[int, int]] = field(default_factory=list)
    how: str = ""

    def __bool__(self) -> bool:
        return bool(self.text.strip())

    def shifted(self, offset: int) -> Recalled:
        """The same recall with its ranges moved by `offset` characters (e.g. into the trajectory's own text)."""
        return Recalled(self.text, [(a + offset, b + offset) for a, b in self.ranges], self.how)


def _words(s: str) -> list[str]:
    return re.findall(r"\w+", s.lower())


def bm25_chunks(text: str, query: str, k_tokens: int, lm: TokenCounter, chunk_words: int = 60, *,
                ranked: bool = False) -> Recalled:
    """Top BM25 chunks (about `chunk_words` words each) of `text` for `query`, up to `k_tokens` tokens (at least
    one chunk), in text order, or with `ranked` by rising score (the best chunk last, next to the question)."""
    from rank_bm25 import BM25Okapi

    words = text.split(" ")
    chunks, spans, at = [], [], 0
    for i in range(0, len(words), chunk_words):
        chunk = " ".join(words[i:i + chunk_words])
        chunks.append(chunk)
        spans.append((at, at + len(chunk)))
        at += len(chunk) + 1                                  # the space the split removed
    scores = BM25Okapi([_words(c) or ["_"] for c in chunks]).get_scores(_words(query))
    order = sorted(range(len(chunks)), key=lambda i: -scores[i])
    picked, used = [], 0
    for i in order:
        n = lm.count_tokens(chunks[i])
        if picked and used + n > k_tokens:
            break
        picked.append(i)
        used += n
    picked = picked[::-1] if ranked else sorted(picked)
    return Recalled(SEPARATOR.join(chunks[i] for i in picked) + "\n", [spans[i] for i in picked], "bm25")


def recall_query(query: str, recalled: Recalled | str) -> str:
    """The worker query with recalled chunks before it (nothing recalled: the query unchanged)."""
    text = recalled.text if isinstance(recalled, Recalled) else recalled
    return f"{RECALL_HEADER}{text}\n{query}" if text.strip() else query


def fit(text: str, k_tokens: int, lm: briefing.LoadedModel, *, keep_end: bool) -> str:
    """`text` cut to at most `k_tokens` tokens: its start dropped (`keep_end`: ranked chunks, the best last) or its
    end (chunks in text order). The chunk budget of `bm25_chunks` leaves out the separators, so a recall can run
    a few tokens over."""
    ids = lm.encode(text)
    if len(ids) <= k_tokens:
        return text
    return lm.decode(ids[-k_tokens:] if keep_end else ids[:k_tokens])


class Recall:
    """A recall strategy: `tokens` is its budget; `recall(cache, query, k_tokens)` returns what comes back for one
    call (k_tokens: the budget left in the call's reserve, at most `tokens`), with ranges in `cache.text`."""

    tokens: int

    def recall(self, cache: briefing.TrajectoryCache, query: str, k_tokens: int) -> Recalled:
        raise NotImplementedError


@dataclass(kw_only=True)
class TextRecall(Recall):
    """BM25 top chunks of a folded cache's trajectory text, put before the query: at most `tokens` tokens (where the
    chunks and their separators pass it, cut at the least relevant end). Nothing before the cache's first fold:
    a trajectory that fits the cache is answered from the cache alone. Chunks are about a third of the budget long
    (8 to 60 words), so a budget holds at least one whole chunk.

    tail: recall from the unfolded tail too, which the cache holds verbatim but up to a window from the question
        (False: only the text the folds compacted, everything before the tail).
    ranked: chunks by rising score, the best last next to the question (False: in text order). Recalling the tail
        in text order can put a same-kind distractor after the fact, nearer the question. Both defaults were chosen
        on dev episodes of the long suite (docs/benchmarks.md, "Long trajectories")."""

    tokens: int = 256
    tail: bool = True
    ranked: bool = True

    def __post_init__(self) -> None:
        check_int("TextRecall", "tokens", self.tokens, low=1, what="recall budget in tokens", error=ValueError)
        check_bool("TextRecall", "tail", self.tail, error=ValueError)
        check_bool("TextRecall", "ranked", self.ranked, error=ValueError)

    def recall(self, cache: briefing.TrajectoryCache, query: str, k_tokens: int) -> Recalled:
        k_tokens = min(k_tokens, self.tokens)
        if k_tokens < MIN_RECALL_TOKENS or not cache.folds:
            return Recalled(how="bm25")
        lm = cache.lm
        whole = 0 if self.tail else cache.length - cache.folded   # the unfolded tail holds the last tokens verbatim
        n = max(0, cache.tokens - whole)
        stop = len(cache.text) if n == cache.tokens else len(lm.tokenizer.decode(cache.ids[:n],
                                                                                  skip_special_tokens=False))
        searched = cache.text[:stop]
        if not searched.strip():
            return Recalled(how="bm25")
        found = bm25_chunks(searched, query, k_tokens, lm, chunk_words=max(8, min(60, k_tokens // 3)),
                            ranked=self.ranked)
        text = fit(found.text, k_tokens, lm, keep_end=self.ranked)
        return Recalled(text, found.ranges if text == found.text else _cut_ranges(found, text, self.ranked), "bm25")


def _cut_ranges(found: Recalled, text: str, keep_end: bool) -> list[tuple[int, int]]:
    """The ranges of what survives of `found` in `text`, which is `found.text` with its start (`keep_end`) or its end
    cut away: by character count, so a decode that differs from the original by a few characters shifts a range
    end by as much."""
    dropped = max(0, len(found.text) - len(text))
    kept, at = [], 0
    for chunk, (a, b) in zip(found.text.rstrip("\n").split(SEPARATOR), found.ranges, strict=True):
        lo, hi = at, at + len(chunk)                                        # the chunk's place in found.text
        at = hi + len(SEPARATOR)
        if keep_end:
            cut = max(0, dropped - lo)                                     # characters of this chunk cut at its start
            if cut < hi - lo:
                kept.append((a + cut, b))
        else:
            limit = len(found.text) - dropped                              # text ends here
            if lo < limit:
                kept.append((a, b - max(0, hi - limit)))
    return kept
