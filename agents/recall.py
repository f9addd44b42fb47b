"""Recall for a folded trajectory: what a briefed worker brings back into a call once its cache has folded.

A folded `briefing.TrajectoryCache` keeps a share of the old trajectory's positions, chosen before the question that
will need them is known; the trajectory's text keeps everything. A recall strategy picks, for the call's query, what
to bring back within a token budget:
- `TextRecall` recalls the BM25 top chunks of the text and puts them before the query, so a worker call
  on bounded memory can still reach a fact that the folds compacted away, when the query uses the fact's words;
- `LatentRecall` finds the blocks by the worker model's own hidden states (`briefing.latent`), whatever words the
  query uses, and brings them back as their archived keys and values re-attached before the question (`attach=True`)
  or as their text (`attach=False`); `rank="both"` fuses its ranking with BM25's over the same blocks. The blocks of
  the unfolded tail it ranks best are pinned: the call's compaction keeps them whole (`pin`).
- `RoutedRecall` (`BriefedWorker`'s default) takes BM25's recall when its best chunk clearly outscores the rest (the
  question shares rarer words with one chunk); otherwise (a question worded differently from the text) BM25's best
  chunks keep a quarter of the budget and latent recall the rest. Those calls pay the latent lookup, and by default
  (`verify`) the confident ones too: there the lookup checks that the worker's own ranking finds BM25's best chunk.
`bm25_chunks` also serves the BM25 baselines of the benchmarks.
"""
from __future__ import annotations

import bisect
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from briefing.options import check_bool, check_choice, check_int, check_number, check_type

if TYPE_CHECKING:
    import briefing

RECALL_HEADER = "Recalled from earlier in the trajectory:\n"
SEPARATOR = "\n...\n"
MIN_RECALL_TOKENS = 16  # below this a recall is noise: none is made
# the least budget a worker's default recall gets: eight of latent recall's picks (a 32-token block widened by 8
# tokens on each side); an eighth of a 2,048-token cache leaves its ranking about four picks after BM25's quarter
RECALL_FLOOR = 384


def default_recall_tokens(share: int, room: int | None = None) -> int:
    """The recall budget, in tokens, of a worker whose cache has `share` positions of the window (`Recall.tokens`
    None): an eighth of them (960 at an 8k window), raised toward `RECALL_FLOOR` as far as a quarter of them and
    `room` allow (what the caller's cache can give up; None: no bound), never below the eighth. On dev episodes
    of the long suite at a 2,048-token budget the floor (384 tokens against an eighth's 240) held a paraphrased fact
    0.62 / 0.63 of the time at 4k / 6k against 0.60 / 0.43 (docs/benchmarks.md, "Latent recall, round 9")."""
    return max(share // 8, min(RECALL_FLOOR, share // 4, share if room is None else room))


def fold_room(share: int, reserve: int, sink: int, recent: int | None = None) -> int:
    """The most tokens t a recall can take out of a folding cache of `share` positions (its budget then share - t,
    its reserve reserve + t) while the cache still holds its sink, its recent window and that reserve
    (`TrajectoryCache.check_budget`): share - t >= sink + recent + reserve + t, with `recent` None for the default
    window, half the cache's budget ((share - t) / 2). May be negative (no room)."""
    if recent is not None:
        return (share - sink - recent - reserve) // 2
    return (share - 2 * sink - 2 * reserve) // 3


class TokenCounter(Protocol):
    def count_tokens(self, text: str) -> int: ...


@dataclass
class Recalled:
    """What a recall brought back: `text` (the chunks as they go before the query, "" for nothing), and `ranges`,
    the character ranges [start, stop) of the searched text each chunk came from, in the order they sit before the
    question: re-attached keys and values first (right after the cache), then the chunks in `text`; `how` names the
    strategy. blocks: the re-attached keys and values (a `briefing.latent.Attached`; None: the recall is text and
    pins nothing; an `Attached` of length 0: text, and pins for the call's compaction).
    tokens: trajectory tokens recalled (0: count the text). margin: for a BM25 search, how far its best chunk stood
    out: its score over the runner-up's (inf: one chunk scored; None: no BM25 search was made). overlap: for a BM25
    search, the share of the query's content words (`content_words`) that its best chunk holds. pinned: character
    ranges of the cache's unfolded tail that the call's compaction keeps whole (`LatentRecall.pin`; carried by
    `blocks`), not brought back: already in the cache. attached: how many of the first `ranges` are re-attached
    (None: as many as `blocks` has; `shifted` sets it where it drops some). lookup_s: the time of the latent lookup
    the recall made (the question's forward over the cache and the blocks' ranking, `LatentRecall.lookup`; 0: none),
    a part of the recall's own time. tail_gap: where a latent lookup ran, the best score of the unfolded tail's blocks
    or sentences that it does not rank for fetching (in view; with `LatentRecall.tail_skip`, the trajectory's last
    tokens alone) less the best score of those it could fetch (`briefing.latent.Lookup.tail_gap`; > 0: the
    question's best piece is in view; None: no lookup, or nothing on one side)."""

    text: str = ""
    ranges: list[tuple[int, int]] = field(default_factory=list)
    how: str = ""
    blocks: Any = None
    tokens: int = 0
    margin: float | None = None
    pinned: list[tuple[int, int]] = field(default_factory=list)
    overlap: float | None = None
    attached: int | None = None
    lookup_s: float = field(default=0.0, compare=False)   # a time: two equal recalls may differ in it
    tail_gap: float | None = field(default=None, compare=False)   # the lookup's, as lookup_s: what it found

    def __bool__(self) -> bool:
        return bool(self.text.strip()) or self.blocks is not None

    @property
    def pasted(self) -> list[tuple[int, int]]:
        """The ranges pasted as text before the question; the others (the first `attached`) are re-attached keys and
        values."""
        if self.blocks is None:
            return self.ranges
        return self.ranges[self.attached if self.attached is not None else len(self.blocks.ranges):]

    def shifted(self, offset: int) -> Recalled:
        """The same recall with its ranges moved by `offset` characters (e.g. into the trajectory's own text), none
        below 0: what came from before the trajectory (the cache's header) is cut off, and a range all of which did is
        left out."""
        def move(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
            return [(a, b) for a, b in ((max(0, a + offset), max(0, b + offset)) for a, b in ranges) if a < b]

        n = len(self.ranges) - len(self.pasted)                          # the re-attached ranges come first
        attached = move(self.ranges[:n])
        return replace(self, ranges=attached + move(self.ranges[n:]), pinned=move(self.pinned),
                       attached=len(attached) if self.blocks is not None else None)


def _words(s: str) -> list[str]:
    return re.findall(r"\w+", s.lower())


# function words: a chunk that shares only these with a question says nothing about which fact it asks for
STOPWORDS = frozenset("a an the is are was were be been by of to in on at for with from into and or as my our your me "
                      "i we you he she they who what which whose when where why how do does did that this these "
                      "those it its s".split())


def content_words(s: str) -> set[str]:
    """The distinct words of `s` that carry content (lower case, no `STOPWORDS`)."""
    return {w for w in _words(s) if w not in STOPWORDS}


# the break after a sentence (a word ending in ".", "!" or "?", or a line break), with the whitespace that follows it:
# a match's end is the next sentence's first character (`bm25_chunks`' sentences, `sentence_ranges`)
SENTENCE_BREAK = re.compile(r"(?:[.!?][ \t\r\n\f\v]|\n)[ \t\r\n\f\v]*")


def bm25_chunks(text: str, query: str, k_tokens: int, lm: TokenCounter, chunk_words: int = 60, *,
                ranked: bool = False, stride: int | None = None, sentences: bool = False) -> Recalled:
    """Top BM25 chunks (about `chunk_words` words each) of `text` for `query`, up to `k_tokens` tokens (at least
    one chunk; none that holds no word of the query: nothing where no chunk does), in text order, or with `ranked`
    by rising score (the best chunk last, next to the question); with the best chunk's `margin` over the runner-up.
    stride: words from one chunk's start to the next, 1 to `chunk_words` (None: `chunk_words`, chunks side by side).
    A shorter stride overlaps the chunks, so that a statement of up to `chunk_words - stride + 1` words lies whole in
    one of them wherever it falls; the chunks picked never overlap (one that overlaps a better one is passed over),
    and the runner-up of the margin is the best chunk that does not overlap the best (none, in a text shorter than
    two chunks apart: the margin is then infinite, as for a text of one chunk). sentences: chunks of whole sentences
    instead, side by side, as many as fit in `chunk_words` words (words split at ASCII whitespace: spaces, tabs, line
    breaks; a sentence ends at a word ending in ".", "!" or "?", or at a line break, `SENTENCE_BREAK`; one longer
    than a chunk is cut every `chunk_words` words), so that a chunk's edge cuts no statement shorter than a chunk
    (`stride` is then not used)."""
    from rank_bm25 import BM25Okapi

    if not isinstance(chunk_words, int) or chunk_words < 1:
        raise ValueError(f"bm25_chunks: chunk_words must be a whole number of words, at least 1; got {chunk_words!r}.")
    if stride is not None and not 1 <= stride <= chunk_words:
        raise ValueError(f"bm25_chunks: stride must be from 1 to chunk_words ({chunk_words}) words; got {stride}.")
    found = [m.span() for m in re.finditer(r"[^ \t\r\n\f\v]+", text)] if sentences else []
    if found:   # words split at ASCII whitespace; a sentence ends before each word that starts one
        breaks = {m.end() for m in SENTENCE_BREAK.finditer(text)}
        ends = [i for i, (a, _) in enumerate(found) if i and a in breaks]
        bounds = _sentence_chunks(ends, len(found), chunk_words)
        spans = [(found[i][0], found[j - 1][1]) for i, j in bounds]
    else:
        words = text.split(" ")
        starts, at = [], 0
        for w in words:
            starts.append(at)
            at += len(w) + 1                                  # the space the split removed
        step = chunk_words if stride is None else stride
        bounds = []
        for i in range(0, len(words), step):
            bounds.append((i, min(len(words), i + chunk_words)))
            if bounds[-1][1] == len(words):                   # the last chunk reaches the end
                break
        spans = [(starts[i], starts[j - 1] + len(words[j - 1])) for i, j in bounds]
    chunks = [text[a:b] for a, b in spans]

    def apart(a: int, b: int) -> bool:                         # chunks a and b share no word
        return bounds[a][1] <= bounds[b][0] or bounds[b][1] <= bounds[a][0]

    asked_words, docs = _words(query), [_words(c) for c in chunks]
    scores = BM25Okapi([d or ["_"] for d in docs]).get_scores(asked_words)
    order = sorted(range(len(chunks)), key=lambda i: -scores[i])
    rival = next((i for i in order[1:] if apart(i, order[0])), None)
    top, second = float(scores[order[0]]), float(scores[rival]) if rival is not None else 0.0
    margin = top / second if second > 0 else (math.inf if top > 0 else 1.0)
    asked = content_words(query)
    overlap = len(asked & content_words(chunks[order[0]])) / len(asked) if asked else 0.0
    picked, used = [], 0
    for i in order:
        # none of the query's words: nothing to recall it by (not a score test: BM25's idf is 0 or below for a
        # word in half the chunks or more)
        if set(asked_words).isdisjoint(docs[i]) or not all(apart(i, j) for j in picked):
            continue
        n = lm.count_tokens(chunks[i])
        if picked and used + n > k_tokens:
            break
        picked.append(i)
        used += n
    picked = picked[::-1] if ranked else sorted(picked)
    return Recalled(SEPARATOR.join(chunks[i] for i in picked) + "\n" if picked else "", [spans[i] for i in picked],
                    "bm25", margin=margin, overlap=overlap)


def _sentence_chunks(ends: list[int], n: int, chunk_words: int) -> list[tuple[int, int]]:
    """Word ranges [i, j) of `bm25_chunks(sentences=True)` over n words whose sentences end after the words `ends`
    (exclusive indices, rising): whole sentences side by side, at most `chunk_words` words each (a longer sentence
    cut every `chunk_words` words)."""
    if not ends or ends[-1] != n:
        ends = [*ends, n]
    cuts, start, last = [0], 0, 0      # last: the latest sentence end past start
    for e in ends:
        if e - start > chunk_words:   # this sentence does not fit: the chunk ends at the last sentence that did
            if last > start:
                start = last
                cuts.append(start)
            while e - start > chunk_words:
                start += chunk_words
                cuts.append(start)
        last = e
    cuts.append(n)
    return list(zip(cuts, cuts[1:]))


def sentence_units(cache: briefing.TrajectoryCache, cap: int) -> Any:
    """[n, 2] `sentence_ranges` of the cache's trajectory (every token it has read), on the archive's device: the
    units `LatentRecall(units="sentences")` ranks."""
    import torch

    out = sentence_ranges(cache.text, cache.token_spans(), cap)
    return torch.tensor(out, dtype=torch.long, device=cache.archive.sums.device).view(-1, 2)   # [n, 2]


def sentence_ranges(text: str, spans: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
    """Token ranges (lo, hi) of the sentences of `text` (`SENTENCE_BREAK`; a sentence starts at the token that holds
    its first character, and the whitespace after it goes with it), each longer one cut into pieces of at most `cap`
    tokens, side by side over the tokens whose characters `spans` gives."""
    import itertools

    n = len(spans)
    ends = list(itertools.accumulate((b for _, b in spans), max))   # non-decreasing, for the search
    starts = sorted({0, *(bisect.bisect_right(ends, m.end()) for m in SENTENCE_BREAK.finditer(text))} - {n})
    out = []
    for a, b in zip(starts, [*starts[1:], n]):
        out.extend((lo, min(b, lo + cap)) for lo in range(a, b, cap))
    return out


def recall_query(query: str, recalled: Recalled | str) -> str:
    """The worker query with recalled chunks before it (nothing recalled: the query unchanged)."""
    text = recalled.text if isinstance(recalled, Recalled) else recalled
    return f"{RECALL_HEADER}{text}\n{query}" if text.strip() else query


def fit(text: str, k_tokens: int, lm: briefing.LoadedModel, *, keep_end: bool) -> str:
    """`text` cut to at most `k_tokens` tokens: its start dropped (`keep_end`: ranked chunks, the best last) or its
    end (chunks in text order). The chunk budget of `bm25_chunks` leaves out the separators, so a recall can run
    a few tokens over. A cut inside a character (its bytes in two tokens) drops the half it leaves, not U+FFFD."""
    ids = lm.encode(text)
    if len(ids) <= k_tokens:
        return text
    cut = lm.decode(ids[-k_tokens:] if keep_end else ids[:k_tokens])
    if "\ufffd" in text:   # the text's own: left as it is
        return cut
    return cut.lstrip("\ufffd") if keep_end else cut.rstrip("\ufffd")


class Recall:
    """A recall strategy: `tokens` is its budget (None: the worker's, `default_recall_tokens` of its cache's share
    of the window, `BriefedWorker.layout`); `recall(cache, query, k_tokens, prompt=...)` returns what comes back for
    one call (k_tokens: the budget left in the call's reserve, at most `tokens`; prompt: the call prompt the query
    sits in), with ranges in `cache.text`. `archive(lm)`: the `briefing.ArchivePolicy` the worker's caches need with
    model `lm` (None: no archive)."""

    tokens: int | None

    def budget(self, k_tokens: int) -> int:
        """This call's budget: `k_tokens`, at most `tokens`."""
        return k_tokens if self.tokens is None else min(k_tokens, self.tokens)

    def recall(self, cache: briefing.TrajectoryCache, query: str, k_tokens: int, *,
               prompt: str | None = None) -> Recalled:
        raise NotImplementedError

    def archive(self, lm: briefing.LoadedModel) -> briefing.ArchivePolicy | None:
        return None


CHUNKINGS = ("words", "overlap", "sentences")   # TextRecall's ways of cutting the text into chunks


@dataclass(kw_only=True)
class TextRecall(Recall):
    """BM25 top chunks of a folded cache's trajectory text, put before the query: at most `tokens` tokens (None: the
    worker's budget, `Recall`; where the chunks and their separators pass it, cut at the least relevant end).
    Nothing before the cache's first fold: a trajectory that fits the cache is answered from the cache alone. Chunks
    are about a third of the budget long (8 to 60 words), so a budget holds at least one whole chunk. A chunk that
    holds no word of the query is not recalled (nothing is, where none does).

    tail: recall from the unfolded tail too, which the cache holds verbatim but up to a window from the question
        (False: only the text the folds compacted, everything before the tail).
    ranked: chunks by rising score, the best last next to the question (False: in text order). Recalling the tail
        in text order can put a same-kind distractor after the fact, nearer the question. Both defaults were chosen
        on dev episodes of the long suite (docs/benchmarks.md, "Long trajectories").
    chunks: how the text is cut into chunks (`bm25_chunks`): "words", every chunk the same number of words, side by
        side (a chunk's edge can cut a statement in two); "overlap", the same chunks overlapping by half (a statement
        of up to half a chunk lies whole in one of them; the chunks recalled never overlap); "sentences", whole
        sentences side by side, as many as fit in a chunk (the margin and overlap still come
        from chunks of one length, side by side: `RoutedRecall` routes on them)."""

    tokens: int | None = None
    tail: bool = True
    ranked: bool = True
    chunks: str = "words"

    def __post_init__(self) -> None:
        check_int("TextRecall", "tokens", self.tokens, low=1, none=True, what="recall budget in tokens",
                  error=ValueError)
        check_bool("TextRecall", "tail", self.tail, error=ValueError)
        check_bool("TextRecall", "ranked", self.ranked, error=ValueError)
        check_choice("TextRecall", "chunks", self.chunks, CHUNKINGS, error=ValueError)

    def recall(self, cache: briefing.TrajectoryCache, query: str, k_tokens: int, *,
               prompt: str | None = None) -> Recalled:
        k_tokens = self.budget(k_tokens)
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
        words = max(8, min(60, k_tokens // 3))
        found = bm25_chunks(searched, query, k_tokens, lm, chunk_words=words, ranked=self.ranked,
                            stride=max(1, words // 2) if self.chunks == "overlap" else None,
                            sentences=self.chunks == "sentences")
        if self.chunks == "sentences":
            # the margin and overlap (a router's evidence) from chunks of one length, side by side: BM25 normalises
            # by a chunk's length, so chunks of whole sentences, of many lengths, move the margin with their lengths
            side = bm25_chunks(searched, query, k_tokens, lm, chunk_words=words, ranked=self.ranked)
            found = replace(found, margin=side.margin, overlap=side.overlap)
        text = fit(found.text, k_tokens, lm, keep_end=self.ranked)
        return Recalled(text, found.ranges if text == found.text else _cut_ranges(found, text, self.ranked), "bm25",
                        margin=found.margin, overlap=found.overlap)


def _cut_ranges(found: Recalled, text: str, keep_end: bool) -> list[tuple[int, int]]:
    """The ranges of what survives of `found` in `text`, which is `found.text` with its start (`keep_end`) or its end
    cut away: by character count, so a decode that differs from the original by a few characters shifts a range
    end by as much."""
    dropped = max(0, len(found.text) - len(text))
    kept, at = [], 0
    for a, b in found.ranges:   # each chunk is its range's text, joined by SEPARATOR (which a chunk may hold too)
        lo, hi = at, at + (b - a)                                           # the chunk's place in found.text
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


RANKS = ("latent", "both")
UNITS = ("blocks", "sentences")   # what LatentRecall's ranking scores and recalls
BLOCK_PAD = 8   # LatentRecall's pad over blocks (pad=None); over sentences 0


def _unit_pad(units: str) -> int:
    """LatentRecall's pad for `pad=None` over these units: 0 for sentences (recalled whole), `BLOCK_PAD` for blocks."""
    return 0 if units == "sentences" else BLOCK_PAD


FUSION_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)


@dataclass(kw_only=True)
class LatentRecall(Recall):
    """Recall by the worker model's own hidden states (`briefing.latent`): the call prompt is forwarded over the
    folded cache, the mean hidden state of its question at the last decoder layers scores every block of the
    trajectory the cache no longer holds whole (its tokens' mean hidden state, read while the cache prefilled; both
    whitened by the spread of the trajectory's blocks, `latent.rank_blocks`), and the best blocks come back,
    the best last, nearest the question. Nothing before the cache's first fold. The worker's caches keep an archive
    (`archive`) of the keys and values their folds compact away.

    tokens: recall budget (trajectory tokens; None: the worker's, `Recall`). attach: re-attach the blocks' archived keys
        and values after the cache (the call's compaction then keeps them all and fits over them with the cache's
        positions); False: put their text before the question, as `TextRecall` does; None (the default): re-attach
        where the cache holds every layer, put the text before the question on a model with sliding-window layers
        (Gemma 3): those layers hold their own window of the latest tokens, so re-attached blocks would reach only
        its few full-attention layers (on dev episodes with Gemma 3 270M the text answered 16 of 16 own-words
        questions against 14 of 16, docs/benchmarks.md, "Latent recall on Gemma 3"). rank: "latent" (the hidden states
        alone) or "both" (fused with BM25 over the same blocks' text, by reciprocal rank). pad: tokens recalled on each
        side of a picked block (a fact cut by a block boundary comes back whole); 8 was chosen on dev episodes
        (`benchmarks.recall_rank`: 16 spends a small budget on the pads). shrink: the ranking whitens the
        representatives and the question by the blocks' covariance shrunk this far toward its diagonal
        (`latent.whiten`; 1: each dimension standardised alone, the ranking before round 5); 0.8 was chosen on dev
        episodes at 32k tokens with SmolLM2 and Gemma 3 (docs/benchmarks.md, "Latent recall, round 5").
        tail_skip: None (the default): blocks the cache still holds unfolded are not candidates (in view); an int n:
        they are, except those within the trajectory's last n tokens (its newest events, such as the call's own
        question): the call's compaction keeps only part of the unfolded tail in each head, so a fact there is not
        whole in view, and a recalled copy re-attached after the cache is (BM25's recall searches that tail too).
        Over sentences at 128 (round 29, `fold-routed-tail-units`): on fresh held-out episodes paraphrased answers
        +0.010, those whose fact was in view +0.091, but paraphrased facts held whole 0.052 less often (the copies
        spend the budget, and the pins then cover only the last tokens): not the default (docs/benchmarks.md,
        "Latent recall, round 29").
        pin: a second budget, in tokens, for the unfolded tail's blocks that the question ranks best (each widened by
        `pad`): the call's compaction keeps them whole in every (layer, KV head) (`latent.KeepAttached`) instead of
        the share its selection would keep; nothing is fetched and the recall budget is not spent (the context stays
        within the cache's positions plus what is attached). 0: off; None (the default): the call's recall budget
        (under `RoutedRecall`, its whole budget, before BM25's share), except on a model with sliding-window layers
        (0): there the pins would reach only the few full-attention layers, and those sliding layers keep the newest
        tokens whole (Gemma 3 270M held 0.97 of its paraphrased tail facts without pins). A text recall (attach
        False) pins too. The call's compaction thins the tail (about half its positions per head at the 8k window),
        so without pins a paraphrased fact there was 0.49 available on held-out episodes; with them 0.94
        (docs/benchmarks.md, "Latent recall, round 7").
        peaks: k > 0: a block's score adds the mean of its k best tokens for the question to its mean's, both
        standardised over the blocks (`latent.block_scores`; the archive keeps every token's hidden state at the last
        layer, `ArchivePolicy.token_states`: 2 x hidden bytes per token); 0: the block means alone (the default until
        round 12). 4 (the default) was chosen among 2, 4 and 8 on dev episodes; on every held-out setting of the long
        suite (two models, 4k to 64k, 272 questions per form) it held the paraphrased fact whole 0.066 [+0.033,
        +0.099] more often, availability 0.79 -> 0.85, accuracy level (docs/benchmarks.md, "Latent recall, round
        12").
        units: what the ranking scores and recalls: "blocks", the archive's 32-token blocks, each widened by `pad`;
        "sentences", the trajectory's sentences (`sentence_units`, cut at `latent.UNIT_TOKENS` tokens), each scored by
        its tokens' mean state at the last layer and its `peaks` best tokens (`latent.unit_scores`) and recalled
        whole. A fact is a sentence or two: a block of other text dilutes its mean, and a pick of a block and its pads
        spends 48 tokens where the sentence takes 10-20, so the same budget holds more of them (dev episodes on the 2k
        window: a paraphrased fact's every token recalled 0.75 -> 0.96 of the time at 288 tokens). Needs `peaks` >= 1
        and rank="latent". None (the default since round 28): by model (`unit`): sentences where the recall is
        re-attached as keys and values (and ranked by the hidden states with `peaks`), blocks where its text is pasted
        before the question (pasted sentences bring about three times as many pieces, the distractors among them: on
        Gemma 3's dev episodes they answered -0.146 [-0.271, -0.042] less often, round 27). On SmolLM2's fresh
        held-out episodes of rounds 27 and 28 and its 64k episodes 0-3 (232 paraphrased questions), the fact held
        whole +0.155 [+0.103, +0.207] more often (available 0.71 -> 0.85), answers -0.030 [-0.073, +0.013]; own words
        +0.013 [-0.004, +0.030]. Its cost: it brings back more of a fact's same-kind distractors (round 28's 120: 1.51
        against 1.17 of 2), and where the fact was already in view the 135M worker picks one of them more often
        (docs/benchmarks.md, "Latent recall, round 28").
        pad: as above; None (the default): 8 for blocks, 0 for sentences (a sentence comes back whole as it is).
        tail_margin: a bar on what is fetched: only the blocks or sentences scoring at least the best of the unfolded
        tail (in view; its best pieces pinned where `pin` is) less this much of the ranking's score (standardised
        over the pieces where it adds their best tokens', `peaks`; `latent.lookup`), and no bar where that tail has no
        scored piece; the question's own words, where the trajectory holds them, do not count as that best. Where the
        question's best piece is in view, what ranks below it is more often a same-kind neighbour of the answer than
        the answer (round 28). None (the default): no bar. Each call reports the gap between the two sides
        (`Recalled.tail_gap`). Tried on dev episodes in round 29 and not taken: at 1 the paraphrased facts in view
        were answered more often (3 of 14 against 1), but the folded ones were held whole 0.14 less often (a folded
        paraphrase's sentence often scores below the tail's best: the ranking does not tell where a paraphrased fact
        lies well enough for a bar); at 0, 0.28 less (docs/benchmarks.md, "Latent recall, round 29").
        archive_policy: the caches'
        `briefing.ArchivePolicy` (None: its defaults where the blocks are re-attached, the representatives alone,
        `budget_bytes=0`, where their text is re-prefilled: no keys or values are archived that no call reads; with
        `budget_bytes=0` and attach=None the text is re-prefilled on every model).

    Not `BriefedWorker`'s default alone: on the dev case of docs/benchmarks.md ("Latent recall against BM25") it finds
    more paraphrased facts than BM25 but loses most facts asked in their own words; the default, `RoutedRecall`, uses
    it where BM25's best chunk does not stand out."""

    tokens: int | None = None
    attach: bool | None = None
    rank: str = "latent"
    pad: int | None = None
    shrink: float = 0.8
    tail_skip: int | None = None
    pin: int | None = None
    peaks: int = 4
    units: str | None = None
    tail_margin: float | None = None
    archive_policy: Any = None

    def __post_init__(self) -> None:
        owner = "LatentRecall"
        check_int(owner, "tokens", self.tokens, low=1, none=True, what="recall budget in tokens", error=ValueError)
        check_bool(owner, "attach", self.attach, none=True, error=ValueError)
        check_choice(owner, "rank", self.rank, RANKS, what="what ranks the blocks", error=ValueError)
        if self.units is not None:
            check_choice(owner, "units", self.units, UNITS, what="what the ranking scores and recalls (None: by "
                         "model)", error=ValueError)
        check_int(owner, "pad", self.pad, low=0, none=True, what="tokens recalled on each side of a block or sentence "
                  "(None: 8 for blocks, 0 for sentences)", error=ValueError)
        if self.pad is None and self.units is not None:   # units=None: the pad follows the model's units (`padding`)
            self.pad = _unit_pad(self.units)
        check_int(owner, "tail_skip", self.tail_skip, low=0, none=True, what="the trajectory's last tokens never "
                  "recalled when the unfolded tail is ranked too (None: it is not)", error=ValueError)
        check_int(owner, "pin", self.pin, low=0, none=True, what="tokens of the unfolded tail kept whole in every "
                  "head; 0: off, None: the call's recall budget", error=ValueError)
        check_int(owner, "peaks", self.peaks, low=0, what="a block's best tokens averaged into its score (0: the "
                  "block means alone)", error=ValueError)
        check_number(owner, "shrink", self.shrink, low=0, high=1, low_open=True, what="how far the representatives' "
                     "covariance is shrunk toward its diagonal before whitening; 1: standardise each dimension",
                     error=ValueError)
        check_number(owner, "tail_margin", self.tail_margin, none=True, what="how far below the unfolded tail's best "
                     "score a block or sentence may score and still be fetched (None: no bar)", error=ValueError)
        if self.units == "sentences" and (self.peaks < 1 or self.rank != "latent"):
            raise ValueError(f"LatentRecall: units='sentences' scores each sentence by its best tokens beside its mean "
                             f"state, by the hidden states alone; got peaks={self.peaks}, rank={self.rank!r}: pass "
                             "peaks >= 1 and rank='latent', or units='blocks'.")
        if self.archive_policy is not None:
            import briefing

            check_type(owner, "archive_policy", self.archive_policy, briefing.ArchivePolicy,
                       "a briefing.ArchivePolicy or None for its defaults", error=ValueError)
            if self.attach is True and not self.archive_policy.budget_bytes:
                raise ValueError("LatentRecall: attach=True re-attaches archived keys and values, but archive_policy "
                                 "keeps none (budget_bytes=0): give it a byte budget, or pass attach=False to "
                                 "re-prefill the blocks' text.")
            if self.peaks and not self.archive_policy.token_states:
                raise ValueError(f"LatentRecall: peaks={self.peaks} ranks blocks by their best tokens, but "
                                 "archive_policy keeps no token states: pass ArchivePolicy(token_states=True), or "
                                 "peaks=0.")

    def attaches(self, lm: briefing.LoadedModel) -> bool:
        """Whether the blocks come back as keys and values (`attach`; None: unless the model has sliding layers or
        `archive_policy` keeps no keys and values)."""
        if self.attach is not None:
            return self.attach
        return not lm.window_layers and (self.archive_policy is None or self.archive_policy.budget_bytes > 0)

    def unit(self, lm: briefing.LoadedModel) -> str:
        """What the ranking scores and recalls on `lm` (`units`; None: sentences where the blocks come back as keys
        and values and the ranking reads the hidden states' peaks, blocks where their text is pasted)."""
        if self.units is not None:
            return self.units
        return "sentences" if self.attaches(lm) and self.peaks >= 1 and self.rank == "latent" else "blocks"

    def padding(self, lm: briefing.LoadedModel) -> int:
        """Tokens recalled on each side of a unit on `lm` (`pad`; None: 0 for sentences, `BLOCK_PAD` for blocks)."""
        return self.pad if self.pad is not None else _unit_pad(self.unit(lm))

    def pin_budget(self, lm: briefing.LoadedModel, k_tokens: int) -> int:
        """Tokens of the unfolded tail this call pins (`pin`; None: `k_tokens`, 0 on a model with sliding layers)."""
        if self.pin is not None:
            return self.pin
        return 0 if lm.window_layers else k_tokens

    def how(self, lm: briefing.LoadedModel) -> str:
        return f"{self.rank}:{'attach' if self.attaches(lm) else 'prefill'}"

    def archive(self, lm: briefing.LoadedModel) -> briefing.ArchivePolicy:
        import briefing

        if self.archive_policy is not None:
            return self.archive_policy
        states = self.peaks > 0   # a ranking by the blocks' best tokens reads every token's state
        if self.attaches(lm):
            return briefing.ArchivePolicy(token_states=states)
        return briefing.ArchivePolicy(budget_bytes=0, token_states=states)

    def _budgets(self, lm: briefing.LoadedModel, k_tokens: int, pin: int | None) -> tuple[int, int]:
        """This call's fetch budget (0 below `MIN_RECALL_TOKENS`) and pin budget (None: `pin_budget`)."""
        k_tokens = self.budget(k_tokens)
        k_tokens = k_tokens if k_tokens >= MIN_RECALL_TOKENS else 0   # too few to fetch: the pins alone, if any
        return k_tokens, max(0, self.pin_budget(lm, k_tokens) if pin is None else pin)

    def lookup(self, cache: briefing.TrajectoryCache, query: str, k_tokens: int, *,
               prompt: str | None = None, pin: int | None = None) -> briefing.latent.Lookup | None:
        """The ranking `recall` fetches by (`briefing.latent.lookup`: the question's forward over the cache, every
        block's score, the picks within the budget), fetching nothing; None where no lookup is made (no fold yet,
        or nothing to fetch or pin). `recall(found=...)` takes it, so that a caller who inspects the ranking first
        does not pay the forward twice."""
        from briefing import latent

        lm = cache.lm
        k_tokens, pin = self._budgets(lm, k_tokens, pin)
        if not cache.folds or not (k_tokens or pin):
            return None
        text = prompt if prompt is not None and query in prompt else query
        ids, question = _token_span(lm, text, text.rindex(query), len(query))
        units = sentence_units(cache, latent.UNIT_TOKENS) if self.unit(lm) == "sentences" else None
        at = cache.text.rfind(query) if query.strip() else -1
        echo = _tokens_of(cache, at, at + len(query)) if at >= 0 else None   # the question in the trajectory
        return latent.lookup(cache, ids, question, k_tokens, pad=self.padding(lm), sink=cache.fold.sink,
                             kv=self.attaches(lm), shrink=self.shrink, tail_skip=self.tail_skip, pin=pin,
                             peaks=self.peaks, units=units, tail_margin=self.tail_margin, echo=echo)

    def recall(self, cache: briefing.TrajectoryCache, query: str, k_tokens: int, *,
               prompt: str | None = None, pin: int | None = None,
               found: briefing.latent.Lookup | None = None) -> Recalled:
        """`Recall.recall`; pin: this call's pin budget in tokens (None: `pin_budget` of this call's budget). found:
        this call's `lookup` at the same pin budget (at any fetch budget: the picks are made again within this
        one); None: it is made here."""
        from briefing import latent

        lm = cache.lm
        k_tokens, pin = self._budgets(lm, k_tokens, pin)   # by default no pins where nothing is fetched
        if not cache.folds or not (k_tokens or pin):
            return Recalled(how=self.how(lm))
        attach = self.attaches(lm)
        if found is None:
            found = self.lookup(cache, query, k_tokens, prompt=prompt, pin=pin)
            ranges = found.ranges
        else:
            ranges = latent.pick(found.scores, cache.archive.policy.block, self.padding(lm), k_tokens,
                                 cache.archive.tokens, found.floor, found.spans) if k_tokens else []
        if self.rank == "both" and k_tokens:
            ranges = latent.pick(self._fused(cache, query, found.scores), cache.archive.policy.block, self.padding(lm),
                                 k_tokens, cache.archive.tokens, found.floor)
        if not ranges and not found.pinned:
            return Recalled(how=self.how(lm), lookup_s=found.seconds, tail_gap=found.tail_gap)
        spans = _char_ranges(cache, [*ranges, *found.pinned])
        chars, pinned = spans[:len(ranges)], spans[len(ranges):]
        tokens = sum(hi - lo for lo, hi in ranges)
        if attach or found.pinned:   # pins go with the attached keys and values, to the call's compaction
            t0 = time.perf_counter()
            blocks = latent.attach(cache, ranges if attach else [], found.pinned)
            blocks.fetch_s = time.perf_counter() - t0
            if attach:
                return Recalled("", chars, self.how(lm), blocks, tokens, pinned=pinned, lookup_s=found.seconds,
                                tail_gap=found.tail_gap)
        else:
            blocks = None
        pieces = [_piece(lm, cache, r, c) for r, c in zip(ranges, chars)]
        text = SEPARATOR.join(pieces) + "\n" if pieces else ""
        return Recalled(text, chars, self.how(lm), blocks, tokens, pinned=pinned, lookup_s=found.seconds,
                        tail_gap=found.tail_gap)

    def _fused(self, cache: briefing.TrajectoryCache, query: str, scores: Any) -> Any:
        """Reciprocal rank fusion of the latent scores [blocks] with BM25's over the same blocks' text."""
        import torch
        from rank_bm25 import BM25Okapi

        B = cache.archive.policy.block
        nb = scores.shape[0]
        texts = [cache.lm.decode(cache.ids[j * B:(j + 1) * B]) for j in range(nb)]
        bm = torch.tensor(BM25Okapi([_words(t) or ["_"] for t in texts]).get_scores(_words(query)),
                          dtype=torch.float32, device=scores.device)                  # [nb]
        fused = torch.zeros_like(scores)
        for s in (scores, bm):
            rank = torch.empty_like(scores)
            rank[s.argsort(descending=True)] = torch.arange(nb, dtype=scores.dtype, device=scores.device)
            fused += 1.0 / (FUSION_K + 1 + rank)
        return fused.masked_fill(~torch.isfinite(scores), float("-inf"))


@dataclass(kw_only=True)
class RoutedRecall(Recall):
    """BM25 where the question's words single out one chunk of the trajectory, the worker's own hidden states where
    they do not. `text` searches first (a `TextRecall`, cheap); when its best chunk's score is at least `margin`
    times the runner-up's (`Recalled.margin`), a chunk shares the question's rarer words and its recall is the
    call's. Otherwise the question is worded differently from every chunk, or shares only common words with many:
    BM25's best chunks keep `share` of the budget and `latent` recalls with the rest, paying its lookup (a forward of
    the question over the cache; its blocks re-attached, or their text pasted on a model with sliding layers:
    `LatentRecall.attach`). By default (`verify`) the confident route pays that lookup too, to check BM25's choice.

    tokens: recall budget (trajectory tokens; None: the worker's, `Recall`) of both. margin: the score ratio above which
    BM25's recall is taken (1: always BM25's route, checked where `verify`; `LatentRecall` alone: never); 1.3 was chosen
    on the long suite's dev episodes (`benchmarks.rlm_bench.route_sweep`). share: the part of the budget BM25 keeps
    below the margin (0: latent recall takes it all): a question in the fact's own words that shares its words with many
    chunks still finds the fact among BM25's best, which the latent ranking can miss. confident_share: the part of the
    budget BM25 keeps at or above the margin (1: all of it, and no lookup runs unless `verify`; below 1, latent recall
    takes the rest: a paraphrased question whose common words single out a wrong chunk still gets blocks by meaning).
    confident_pin: at or above the margin with confident_share 1, the lookup still runs, and the unfolded tail's best
    blocks are pinned (`LatentRecall.pin`) while nothing is fetched: BM25's chunks stay the call's only recalled text,
    and the call pays the lookup. min_overlap: below the margin, BM25 keeps its `share` only where its best chunk holds
    at least this share of the question's content words (`Recalled.overlap`); elsewhere latent recall takes the whole
    budget (0: BM25 always keeps its share; 0.5 was tried in round 10 and not taken). verify: at or above the margin,
    the latent lookup runs too, and BM25's recall stands alone only where its best chunk holds one of the latent
    ranking's best blocks (as many as the whole budget recalls, the unfolded tail's included; over sentences as many
    sentences); elsewhere BM25's best chunk stays, whole and alone of its chunks, and latent recall takes the rest of
    the budget: a paraphrased question whose common words single out a wrong chunk gets the blocks its meaning ranks
    first, and a question in the fact's words, whose chunk both rankings find, gets nothing beside it. Every call at or
    above the margin then pays the lookup (False: none does, and BM25's confident recall stands unchecked, the default
    until round 15). text, latent:
    the two recalls (None: `TextRecall(chunks="sentences")` and `LatentRecall()` at `tokens`); the worker's caches keep
    `latent`'s archive. shared: the text recall whose best chunks keep BM25's `share` below the margin (None: `text`
    with side-by-side chunks, `TextRecall(chunks="words")`, its other settings the same; `text` itself where its chunks
    are side by side already). By default BM25's recall cuts whole sentences at or above the margin (where it is the
    call's own, a question in the fact's words, or where `verify` keeps its best chunk alone) and keeps side-by-side
    chunks where latent recall takes the rest of the budget below the margin: on the held-out runs, whole sentences
    gained own-words answers on the first route and moved paraphrased facts out of the latent remainder on the second
    (round 22's probe, the default since round 24; side-by-side chunks on both routes until then:
    `text=TextRecall()`).

    `BriefedWorker`'s default: on held-out episodes (8k-64k tokens on the 8k window, 4k and 6k on a 2k window) it
    answers as often as BM25 recall when the question uses the fact's words, and holds a paraphrased fact whole 0.38
    more often (docs/benchmarks.md, "Latent recall, round 4"). share 0.25 was chosen on dev episodes. Below the margin
    the latent recall also pins the unfolded tail's best blocks within the whole budget (`LatentRecall.pin`). verify is
    the default since round 15: on every held-out setting of both models pooled it holds a paraphrased fact whole
    0.059 more often than the unchecked route, and no own-words row changed. Whole sentences on BM25's own route are
    the default since round 24: on every held-out setting of both models pooled (208 questions per form) they answer
    more own-words questions than side-by-side chunks (+0.048 [+0.014, +0.087]) and all but one paraphrased question
    as before, with paraphrased availability 0.834 -> 0.839 (docs/benchmarks.md, "Latent recall, round 24")."""

    tokens: int | None = None
    margin: float = 1.3
    share: float = 0.25
    confident_share: float = 1.0
    confident_pin: bool = False
    min_overlap: float = 0.0
    verify: bool = True
    text: TextRecall | None = None
    latent: LatentRecall | None = None
    shared: TextRecall | None = None

    def __post_init__(self) -> None:
        owner = "RoutedRecall"
        check_int(owner, "tokens", self.tokens, low=1, none=True, what="recall budget in tokens", error=ValueError)
        check_number(owner, "margin", self.margin, low=1, what="BM25's best chunk's score over the runner-up's above "
                     "which its recall is taken; 1: always", error=ValueError)
        check_number(owner, "share", self.share, low=0, high=1, what="the part of the budget BM25 keeps below the "
                     "margin; 0: latent recall takes it all", error=ValueError)
        check_number(owner, "confident_share", self.confident_share, low=0, high=1, what="the part of the budget "
                     "BM25 keeps at or above the margin; 1: all of it", error=ValueError)
        check_bool(owner, "confident_pin", self.confident_pin, error=ValueError)
        check_number(owner, "min_overlap", self.min_overlap, low=0, high=1, what="the share of the question's "
                     "content words BM25's best chunk must hold for BM25 to keep its share below the margin; 0: always",
                     error=ValueError)
        check_bool(owner, "verify", self.verify, error=ValueError)
        check_type(owner, "text", self.text, TextRecall, "an agents.TextRecall or None for its defaults", none=True,
                   error=ValueError)
        check_type(owner, "latent", self.latent, LatentRecall, "an agents.LatentRecall or None for its defaults",
                   none=True, error=ValueError)
        check_type(owner, "shared", self.shared, TextRecall, "an agents.TextRecall or None for `text` with "
                   "side-by-side chunks", none=True, error=ValueError)
        self.text = self.text if self.text is not None else TextRecall(tokens=self.tokens, chunks="sentences")
        self.latent = self.latent if self.latent is not None else LatentRecall(tokens=self.tokens)
        if self.verify and not self.text.ranked:
            raise ValueError("RoutedRecall: verify=True checks BM25's best chunk against the latent ranking, and a "
                             "TextRecall(ranked=False) does not say which chunk is best: pass a ranked text recall "
                             "(its default), or verify=False.")

    def archive(self, lm: briefing.LoadedModel) -> briefing.ArchivePolicy:
        return self.latent.archive(lm)

    def share_recall(self) -> TextRecall:
        """The text recall of BM25's share below the margin: `shared`, or `text` with side-by-side chunks."""
        if self.shared is not None:
            return self.shared
        return self.text if self.text.chunks == "words" else replace(self.text, chunks="words")

    def recall(self, cache: briefing.TrajectoryCache, query: str, k_tokens: int, *,
               prompt: str | None = None) -> Recalled:
        k_tokens = self.budget(k_tokens)
        found = self.text.recall(cache, query, k_tokens, prompt=prompt)
        confident = found.margin is not None and found.margin >= self.margin   # a clear lexical match
        pin = self.latent.pin_budget(cache.lm, self.latent.budget(k_tokens))
        if found.margin is None:   # no BM25 search was made
            if not cache.folds or k_tokens < MIN_RECALL_TOKENS:   # nothing folded yet, or no room for any recall
                return found
            # the text recall's own budget was too small for a search: latent recall takes the call's
            return self.latent.recall(cache, query, k_tokens, prompt=prompt, pin=pin)
        checked = None   # the latent lookup, made once where the route needs it first
        overruled = False   # confident, but the latent ranking does not find BM25's best chunk (`verify`)
        if confident and self.verify and found.ranges:
            checked = self.latent.lookup(cache, query, k_tokens, prompt=prompt, pin=pin)
            overruled = checked is not None and not self._agrees(cache, found.ranges[-1], checked, k_tokens)
            confident = not overruled
        spent = checked.seconds if checked is not None else 0.0   # the lookup's time, where it was made
        gap = checked.tail_gap if checked is not None else None
        if confident and self.confident_share >= 1:   # BM25's call; the tail's best blocks pinned if asked
            if not (self.confident_pin and pin):
                return replace(found, lookup_s=spent, tail_gap=gap)
            pins = self.latent.recall(cache, query, 0, prompt=prompt, pin=pin, found=checked)
            spent = spent or pins.lookup_s   # made here, or by the latent recall (unchecked: verify=False)
            gap = pins.tail_gap if gap is None else gap
            if not pins.pinned:
                return replace(found, lookup_s=spent, tail_gap=gap)
            return replace(found, how=f"bm25+{pins.how}-pins", blocks=pins.blocks, pinned=pins.pinned, lookup_s=spent,
                           tail_gap=gap)
        if overruled:   # BM25's best chunk stays whole, alone of its chunks; latent recall takes the rest
            lo, hi = found.ranges[-1]
            lexical = replace(found, text=cache.text[lo:hi] + "\n", ranges=[(lo, hi)])
        else:
            lexical_evidence = confident or (found.overlap or 0.0) >= self.min_overlap   # the best chunk shares words
            kept = int(k_tokens * (self.confident_share if confident else self.share)) if lexical_evidence else 0
            source = self.text if confident else self.share_recall()   # below the margin: `shared`
            lexical = source.recall(cache, query, kept, prompt=prompt) if kept else Recalled()
        n = cache.lm.count_tokens(lexical.text) if lexical else 0
        # the pins spend no recall budget: the latent recall's default pins within the whole of it
        other = self.latent.recall(cache, query, k_tokens - n, prompt=prompt, pin=pin, found=checked)
        spent = spent or other.lookup_s   # made here, or by the latent recall (none where it fetched nothing)
        gap = other.tail_gap if gap is None else gap
        if not lexical:
            return replace(other, margin=found.margin, overlap=found.overlap, lookup_s=spent, tail_gap=gap)
        if not other:
            return replace(lexical, margin=found.margin, overlap=found.overlap, lookup_s=spent, tail_gap=gap)
        # attached blocks sit right after the cache, pasted text before the question: BM25's chunks come last
        return Recalled((other.text.rstrip("\n") + SEPARATOR if other.text.strip() else "") + lexical.text,
                        [*other.ranges, *lexical.ranges], f"{other.how}+bm25", other.blocks,
                        (other.tokens or cache.lm.count_tokens(other.text)) + n, margin=found.margin,
                        overlap=found.overlap, pinned=other.pinned, lookup_s=spent, tail_gap=gap)

    def _agrees(self, cache: briefing.TrajectoryCache, best: tuple[int, int], checked: briefing.latent.Lookup,
                k_tokens: int) -> bool:
        """Whether BM25's best chunk (characters `best` of the cache's text) holds one of the latent ranking's m best
        blocks (or sentences, `LatentRecall.units`) of the whole trajectory (its unfolded tail included), m the blocks
        the whole budget recalls, each widened by the blocks' pad (`verify`). Over sentences the count is the same as
        over blocks: the sentences the budget recalls are about three times as many (10-20 tokens against a block's
        48 with its pads), and reading them all let a wrong chunk stand (dev episodes, docs/benchmarks.md, "Latent
        recall, round 26")."""
        import torch

        block = cache.archive.policy.block
        tokens = _tokens_of(cache, *best)
        raw = checked.raw                                                             # [blocks] or [units]
        if tokens is None or raw is None:
            return True
        first, last = tokens[0], tokens[1] - 1
        pad = self.latent.padding(cache.lm) if checked.spans is None else BLOCK_PAD
        m = max(1, math.ceil(self.latent.budget(k_tokens) / (block + 2 * pad)))      # blocks the budget recalls
        top = raw.topk(min(m, raw.shape[0])).indices                                  # [m]
        top = top[torch.isfinite(raw[top])]                                           # [m'] scored ones
        if checked.spans is None:
            return bool(((top >= first // block) & (top <= last // block)).any())
        units = checked.spans[top]                                                    # [m', 2] token ranges
        return bool(((units[:, 0] <= last) & (units[:, 1] > first)).any())


def _tokens_of(cache: briefing.TrajectoryCache, lo: int, hi: int) -> tuple[int, int] | None:
    """The cache's token range [first, last + 1) whose tokens overlap characters [lo, hi) of its text (None: none)."""
    spans = cache.token_spans()                                                       # in order: two searches
    first = bisect.bisect_right(spans, lo, key=lambda s: s[1])                        # first token ending past lo
    last = bisect.bisect_left(spans, hi, key=lambda s: s[0]) - 1                      # last token starting before hi
    return None if first > last else (first, last + 1)


def _token_span(lm: briefing.LoadedModel, text: str, start: int, n: int) -> tuple[list[int], tuple[int, int]]:
    """The ids of `text` and the token range [lo, hi) that covers its characters [start, start + n)."""
    ids, spans = lm.encode_spans(text)
    inside = [i for i, (a, b) in enumerate(spans) if a < start + n and b > start]
    return ids, (inside[0], inside[-1] + 1) if inside else (0, len(ids))


def _piece(lm: briefing.LoadedModel, cache: briefing.TrajectoryCache, tokens: tuple[int, int],
           chars: tuple[int, int]) -> str:
    """The text of the cache's tokens [tokens): their decode, or the trajectory's own characters where the decode
    cuts a character in two (a range that starts or ends inside a multi-byte character decodes to U+FFFD)."""
    piece = lm.decode(cache.ids[tokens[0]:tokens[1]])
    source = cache.text[chars[0]:chars[1]]
    return source if "\ufffd" in piece and "\ufffd" not in source else piece


def _char_ranges(cache: briefing.TrajectoryCache, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character ranges of `cache.text` that the token ranges cover."""
    if not ranges:
        return []
    spans = cache.token_spans()   # kept as the cache extends: no tokenisation of the whole text per call
    return [(spans[lo][0], spans[hi - 1][1]) for lo, hi in ranges]
