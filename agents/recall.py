"""Text recall for a folded trajectory: BM25 top chunks of its text, which the trajectory keeps whole and a
folding cache does not.

A folded `briefing.TrajectoryCache` keeps a share of the old trajectory's positions, chosen before the question
that will need them is known; the trajectory's text keeps everything. `bm25_chunks` picks, for the call's query,
the best chunks of that text within a token budget, and `recall_query` prefixes them to the query, so a worker
call on bounded memory can still reach a fact that the folds compacted away. The same function serves the BM25
baselines of `rlm bench`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import briefing

RECALL_HEADER = "Recalled from earlier in the trajectory:\n"


class TokenCounter(Protocol):
    def count_tokens(self, text: str) -> int: ...


def _words(s: str) -> list[str]:
    return re.findall(r"\w+", s.lower())


def bm25_chunks(text: str, query: str, k_tokens: int, lm: TokenCounter, chunk_words: int = 60, *,
                ranked: bool = False) -> str:
    """Top BM25 chunks (about `chunk_words` words each) of `text` for `query`, up to `k_tokens` tokens (at least
    one chunk), in text order, or with `ranked` by rising score (the best chunk last, next to the question)."""
    from rank_bm25 import BM25Okapi

    words = text.split(" ")
    chunks = [" ".join(words[i:i + chunk_words]) for i in range(0, len(words), chunk_words)]
    scores = BM25Okapi([_words(c) or ["_"] for c in chunks]).get_scores(_words(query))
    order = sorted(range(len(chunks)), key=lambda i: -scores[i])
    picked, used = [], 0
    for i in order:
        n = lm.count_tokens(chunks[i])
        if picked and used + n > k_tokens:
            break
        picked.append(i)
        used += n
    return "\n...\n".join(chunks[i] for i in (picked[::-1] if ranked else sorted(picked))) + "\n"


def recall_query(query: str, recalled: str) -> str:
    """The worker query with recalled chunks before it (nothing recalled: the query unchanged)."""
    return f"{RECALL_HEADER}{recalled}\n{query}" if recalled.strip() else query


MIN_RECALL_TOKENS = 16  # below this a recall is noise: none is made


def recall_folded(cache: briefing.TrajectoryCache, query: str, k_tokens: int, *, tail: bool = True,
                  ranked: bool = True) -> str:
    """BM25 chunks of a folded cache's trajectory text, the best chunk last, next to the question: at most
    `k_tokens` tokens (where the chunks and their separators pass it, cut at the least relevant end). "" before
    the cache's first fold or below MIN_RECALL_TOKENS. Chunks are about half the budget long (8 to 60 words), so
    a budget holds at least one whole chunk.

    tail: recall from the unfolded tail too, which the cache holds verbatim but up to a window from the question
        (False: only the text the folds compacted, everything before the tail). Before the first fold nothing is
        recalled: a trajectory that fits the cache is answered from the cache alone, as before folding existed.
    ranked: chunks by rising score (False: in text order). Recalling the tail in text order can put a same-kind
        distractor after the fact, nearer the question. Both defaults were chosen on dev episodes of the long
        suite (README, "Recall")."""
    if k_tokens < MIN_RECALL_TOKENS or not cache.folds:
        return ""
    lm = cache.lm
    whole = 0 if tail else cache.length - cache.folded       # the unfolded tail holds the last tokens verbatim
    folded = lm.decode(cache.ids[:max(0, cache.tokens - whole)])
    if not folded.strip():
        return ""
    text = bm25_chunks(folded, query, k_tokens, lm, chunk_words=max(8, min(60, k_tokens // 3)), ranked=ranked)
    return fit(text, k_tokens, lm, keep_end=ranked)


def fit(text: str, k_tokens: int, lm: briefing.LoadedModel, *, keep_end: bool) -> str:
    """`text` cut to at most `k_tokens` tokens: its start dropped (`keep_end`: ranked chunks, the best last) or its
    end (chunks in text order). The chunk budget of `bm25_chunks` leaves out the separators, so a recall can run
    a few tokens over."""
    ids = lm.encode(text)
    if len(ids) <= k_tokens:
        return text
    return lm.decode(ids[-k_tokens:] if keep_end else ids[:k_tokens])
