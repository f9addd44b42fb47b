"""Edges of the recall and of the `Briefing` handle that a user meets (a review's findings, each a regression test):
a trajectory that holds the recall's own separator, a query no chunk shares a word with, a budget narrower than a
padded block, a text budget too small for BM25, a briefing read after the worker's next call, coverage bounds,
a recalled range that cuts a character in two, an empty header, wrong argument types, a fork onto another model."""
from __future__ import annotations

import types

import pytest
import torch

import briefing
from agents import BriefedWorker, RoutedRecall
from agents.recall import SEPARATOR, LatentRecall, Recalled, TextRecall, _cut_ranges, _piece, bm25_chunks
from agents.workers.prompt import TRAJECTORY_HEADER
from briefing import latent
from tests.tiny import tiny_model

FACT = " The vault under the old mill opens with the number 4417."
PARAPHRASE = "Digits unlocking strongbox?"


class Words:
    def count_tokens(self, text: str) -> int:
        return len(text.split())


def planted(essay: str, at: int = 900, n: int = 3500) -> str:
    cut = essay.rindex(" ", 0, at)
    return essay[:cut] + FACT + essay[cut:cut + n]


def worker(lm, recall=None, **kw) -> BriefedWorker:
    args = dict(lm=lm, max_new_tokens=2, reserve=160, cache_budget=256, fold=briefing.FoldPolicy(recent=64))
    if recall is not None:
        args["recall"] = recall
    return BriefedWorker(**args, **kw)


def test_cut_ranges_follow_the_chunks_when_the_text_holds_the_separator():
    """A chunk may hold the separator the chunks are joined by (an elided REPL line): the ranges of what survives a
    cut still index exactly the characters that survive."""
    text = " ".join(f"w{i} gate{SEPARATOR}code" if i % 3 == 0 else f"w{i} gate" for i in range(40))
    found = bm25_chunks(text, "gate code", 60, Words(), chunk_words=4, ranked=True)
    assert any(SEPARATOR in text[a:b] for a, b in found.ranges) and len(found.ranges) > 2
    assert found.text == SEPARATOR.join(text[a:b] for a, b in found.ranges) + "\n"
    second = len(text[found.ranges[0][0]:found.ranges[0][1]]) + len(SEPARATOR) + 3   # inside the second chunk
    cut = found.text[second:]                                          # ranked: the least relevant start cut away
    ranges = _cut_ranges(found, cut, keep_end=True)
    assert SEPARATOR.join(text[a:b] for a, b in ranges) + "\n" == cut
    cut = found.text[:second]                                          # text order: the end cut away
    ranges = _cut_ranges(found, cut, keep_end=False)
    assert SEPARATOR.join(text[a:b] for a, b in ranges) == cut


def test_bm25_takes_no_chunk_that_holds_none_of_the_query_s_words():
    text = " ".join(["the garden gate code is 4417"] + [f"filler{i} words here" for i in range(30)])
    one = bm25_chunks(text, "garden gate", 200, Words(), chunk_words=5)
    assert len(one.ranges) == 1 and "garden gate" in one.text          # a large budget: still the one chunk
    none = bm25_chunks(text, "zebra quokka", 200, Words(), chunk_words=5)
    assert none.text == "" and none.ranges == [] and none.margin == 1.0 and not none
    # a chunk that shares a word is kept whatever its score: BM25's idf is 0 for a word in half the chunks and below
    # 0 (floored at a share of a negative mean) with one or two chunks
    fact = "the secret vault code is 4417 and more"
    for words, query in [(8, "What is the vault code?"), (4, "What is the vault code?")]:   # one chunk, two
        got = bm25_chunks(fact, query, 200, Words(), chunk_words=words)
        assert "vault code" in got.text, words
    half = "vault one two three vault four five six seven eight nine ten eleven twelve thirteen fourteen"
    got = bm25_chunks(half, "vault", 200, Words(), chunk_words=4)    # "vault" in 2 of the 4 chunks: idf 0
    assert got.text.count("vault") == 2 and len(got.ranges) == 2


def test_overlapping_chunks_hold_a_statement_that_side_by_side_chunks_cut():
    """A statement across the edge of two side-by-side chunks is recalled cut in two; with a stride of half a chunk one
    chunk holds it whole and is the best. The chunks recalled never overlap, each is its own range's text, and the
    margin's runner-up is a chunk apart from the best (not its overlapping neighbour); a stride of the chunk's length
    is side by side."""
    filler = [f"w{i}" for i in range(60)]
    text = " ".join(filler[:6] + "the mill vault code is 4417".split() + filler[6:])   # words 6..11: across 8
    side = bm25_chunks(text, "mill vault code", 200, Words(), chunk_words=8, ranked=True)
    assert "the mill vault code is 4417" not in side.text              # cut in two at word 8
    half = bm25_chunks(text, "mill vault code", 200, Words(), chunk_words=8, ranked=True, stride=4)
    best = half.ranges[-1]
    assert "the mill vault code is 4417" in text[best[0]:best[1]]
    ranges = sorted(half.ranges)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))        # none overlaps another
    assert half.text == SEPARATOR.join(text[a:b] for a, b in half.ranges) + "\n"
    assert half.margin == float("inf")   # every other chunk apart from the best shares none of the query's words
    same = bm25_chunks(text, "mill vault code", 200, Words(), chunk_words=8, ranked=True, stride=8)
    assert (same.text, same.ranges, same.margin) == (side.text, side.ranges, side.margin)
    whole = bm25_chunks(text.replace("w5 the", "w5. The").replace("4417", "4417."), "mill vault code", 200, Words(),
                        chunk_words=8, ranked=True, sentences=True)   # whole sentences: the statement is one
    assert whole.ranges and "The mill vault code is 4417." in whole.text.split(SEPARATOR)[-1]
    with pytest.raises(ValueError, match="TextRecall: chunks must be"):
        TextRecall(chunks="lines")


def test_sentence_chunks_keep_sentences_whole_up_to_a_chunk():
    """Whole sentences side by side, at most a chunk's words each: a sentence longer than a chunk is cut every chunk,
    and the chunks cover every word once. In `bm25_chunks` a line break ends a sentence and splits the words around
    it, so a statement that starts a line starts its chunk; a bad stride is refused by name."""
    from agents.recall import _sentence_chunks

    ends = [3, 7, 18, 19]                                  # "a b c. | d e f g. | h .. r. | s" + "t u" unended
    got = _sentence_chunks(ends, 20, 5)
    assert got == [(0, 3), (3, 7), (7, 12), (12, 17), (17, 20)]   # the long one cut at 12 and 17, its tail packed
    assert _sentence_chunks(ends, 20, 100) == [(0, 20)] and _sentence_chunks([], 1, 5) == [(0, 1)]
    assert all(j - i <= 5 for i, j in got) and [i for i, _ in got[1:]] == [j for _, j in got[:-1]]
    text = "Earlier notes on the mill go here\nThe vault code is 4417. More words follow it here and there."
    found = bm25_chunks(text, "vault code", 200, Words(), chunk_words=8, ranked=True, sentences=True)
    assert found.text.split(SEPARATOR)[-1] == "The vault code is 4417.\n"   # the line's first word with it
    assert [text[a:b] for a, b in found.ranges][-1] == "The vault code is 4417."
    tabbed = bm25_chunks("Earlier notes.\tThe vault code is 4417.\r\nMore", "vault code", 200, Words(), chunk_words=5,
                         ranked=True, sentences=True)   # a tab separates words too
    assert tabbed.text.split(SEPARATOR)[-1] == "The vault code is 4417.\n"
    with pytest.raises(ValueError, match="chunk_words must be"):
        bm25_chunks(text, "vault", 200, Words(), chunk_words=0, sentences=True)
    for bad in (0, 9, -1):
        with pytest.raises(ValueError, match="stride must be from 1 to chunk_words"):
            bm25_chunks(text, "vault", 200, Words(), chunk_words=8, stride=bad)


def test_pick_cuts_the_pad_and_keeps_the_block():
    """A budget narrower than one padded block keeps the block's middle, not the pad before it."""
    scores = torch.full((20,), -1.0)
    scores[10] = 5.0
    for pad, budget in [(1000, 16), (8, 20), (8, 40)]:
        (lo, hi), = latent.pick(scores, 32, pad, budget, 640, 0)
        assert hi - lo == budget and min(hi, 352) - max(lo, 320) == min(budget, 32)   # as much of the block as fits
    (lo, hi), = latent.pick(scores, 32, 8, 48, 640, 0)                  # the padded block fits: all of it
    assert (lo, hi) == (312, 360)


def test_a_recalled_piece_that_cuts_a_character_is_the_trajectory_s_own_text(tiny):
    lm = types.SimpleNamespace(decode=lambda ids: "\ufffdnicode")
    cache = types.SimpleNamespace(ids=[1, 2, 3], text="xx\u00fcnicode")
    assert _piece(lm, cache, (0, 3), (2, 9)) == "\u00fcnicode"
    lm = types.SimpleNamespace(decode=lambda ids: "plain")
    assert _piece(lm, cache, (0, 3), (2, 9)) == "plain"                  # a clean decode is kept as it is
    # through a worker: blocks of a text of multi-byte characters pasted (attach=False), and BM25's cut to its budget
    wide = "\u6570\u5b57 \U0001f642 \u00e9moji \u00fcn\u00efcode "
    text = wide * 150 + FACT + (" \U0001f642 tail \u6570\u5b57" * 150)
    b = worker(tiny, LatentRecall(tokens=64, attach=False)).brief("What number opens the vault?", text)
    assert b.recalled.text.strip() and "\ufffd" not in b.recalled.text
    for k in (54, 55, 57, 59):   # budgets whose cut falls inside a character on this tokenizer
        got = TextRecall(tokens=k).recall(b.cache, "What number opens the vault?", k)
        assert got.text.strip() and "\ufffd" not in got.text, k


def test_fit_drops_the_half_of_a_character_a_cut_leaves():
    from agents.recall import fit

    class Bytes:   # one token per UTF-8 byte
        def encode(self, text):
            return list(text.encode())

        def decode(self, ids):
            return bytes(ids).decode(errors="replace")

    assert fit("ab\u00fccd", 4, Bytes(), keep_end=True) == "\u00fccd"
    assert fit("ab\u00fccd", 3, Bytes(), keep_end=True) == "cd"          # half of \u00fc: dropped
    assert fit("ab\u00fccd", 3, Bytes(), keep_end=False) == "ab"
    assert fit("\ufffdab\u00fccd", 3, Bytes(), keep_end=False).endswith("\ufffd")   # the text's own: kept


def test_shifted_leaves_out_ranges_before_the_trajectory_and_keeps_the_attached_apart():
    text = Recalled("chunk\n", [(0, 10), (30, 40)], "bm25").shifted(-20)
    assert text.ranges == [(10, 20)] and text.pasted == [(10, 20)]
    blocks = types.SimpleNamespace(ranges=[(0, 2), (5, 9)])   # two re-attached ranges, the first in the header
    both = Recalled("chunk\n", [(0, 10), (40, 60), (5, 12), (70, 80)], "latent:attach+bm25", blocks=blocks)
    moved = both.shifted(-20)
    assert moved.ranges == [(20, 40), (50, 60)] and moved.attached == 1 and moved.pasted == [(50, 60)]
    assert both.pasted == [(5, 12), (70, 80)] and both.shifted(0).pasted == [(5, 12), (70, 80)]


def test_routed_recall_with_a_text_budget_too_small_for_bm25_recalls_by_the_latent_ranking(tiny, essay,
                                                                                         monkeypatch):
    text = planted(essay)
    rec = RoutedRecall(tokens=64, text=TextRecall(tokens=8), latent=LatentRecall(
        tokens=64, pad=8, archive_policy=briefing.ArchivePolicy(block=16)))
    b = worker(tiny, rec).brief(PARAPHRASE, text)
    assert b.cache.folds and b.stats.recall.startswith("latent") and b.stats.recalled_tokens > 0
    # a whole budget too small for any recall: nothing, and no lookup
    looked = []
    monkeypatch.setattr(latent, "lookup", lambda *a, **k: looked.append(1))
    got = RoutedRecall(tokens=64).recall(b.cache, PARAPHRASE, 10)
    assert not got and not got.pinned and looked == []


def test_recalled_ranges_are_trajectory_ranges(tiny, essay):
    """What came from the worker's own header (before the trajectory) is not reported as an empty range."""
    text = planted(essay)
    b = worker(tiny).brief("What did the orchestrator say about the code it ran?", text)
    assert b.recalled.ranges and all(0 <= a < z <= len(text) for a, z in b.recalled.ranges)
    assert all(b.coverage(a, z) > 0 for a, z in b.recalled.ranges)


def test_a_briefing_describes_its_own_call_after_the_next_one(tiny, essay):
    """coverage() and held() read the cache as it was at the call: the next call's folds change neither."""
    text = planted(essay, n=6000)
    w = worker(tiny, TextRecall(tokens=64))
    b1 = w.brief(PARAPHRASE, text[:2240])
    ranges = [(a, a + 224) for a in range(0, 2240, 224)]
    before = [(b1.coverage(a, z), b1.held(a, z)) for a, z in ranges]
    b2 = w.brief(PARAPHRASE, text)
    assert b2.cache is b1.cache and len(b2.cache.folds) > len(b1.stats.folds)
    assert [(b1.coverage(a, z), b1.held(a, z)) for a, z in ranges] == before
    assert any(b2.held(a, z) != h for (a, z), (_, h) in zip(ranges, before))   # the cache did move on


def test_coverage_bounds_are_checked(tiny, essay):
    text = planted(essay)
    b = worker(tiny).brief(PARAPHRASE, text)
    import numpy as np

    assert b.coverage(np.int64(0), np.int64(10)) == b.coverage(0, 10)   # any integer type
    for bad in [(0.0, 10.0), (False, True), (0, "9")]:
        with pytest.raises(TypeError, match="Briefing.coverage: (start|stop) must be an integer"):
            b.coverage(*bad)
    for bad in [(5, 5), (10, 5), (-1, 5), (0, len(text) + 1), (0, 10 ** 10)]:
        with pytest.raises(ValueError, match=r"Briefing.coverage: \[start, stop\) must be a non-empty"):
            b.coverage(*bad)
    with pytest.raises(ValueError, match="Briefing.held"):
        b.held(10, 5)
    assert 0 <= b.coverage(0, len(text)) <= 1


def test_wrong_argument_types_get_one_line_errors(tiny, essay):
    w = worker(tiny, TextRecall(tokens=64))
    with pytest.raises(TypeError, match=r"queries must be a list of query strings \(one query: .*\), got str"):
        w.answer_batch("Which number?", "some text")
    with pytest.raises(TypeError, match="query must be a string, got NoneType"):
        w.brief(None, "some text")
    with pytest.raises(TypeError, match="trajectory must be a string, got NoneType"):
        w.brief("Which number?", None)
    first, second = w.brief_batch([5, "Which number?"], "some text")   # the bad query's error in its place
    assert isinstance(first, TypeError) and "query must be a string, got int" in str(first) and second.context
    b = w.brief("Which number?", "some text")
    with pytest.raises(TypeError, match="options must be a string or a list of strings, got NoneType"):
        b.loglikelihood(None)
    with pytest.raises(TypeError, match=r"options\[1\] must be a string, got int"):
        b.loglikelihood(["a", 3])


def test_an_empty_header_is_no_header(tiny):
    assert TRAJECTORY_HEADER not in worker(tiny, header="").prompts().cache_text("")
    assert TRAJECTORY_HEADER in worker(tiny).prompts().cache_text("")


def test_a_fork_onto_another_model_or_header_builds_its_own_caches(tiny, tok, essay):
    text = planted(essay)
    w = worker(tiny, TextRecall(tokens=64))
    w.brief(PARAPHRASE, text)
    other = tiny_model("qwen3-gqa", tok, max_positions=512)
    f = w.fork(lm=other)
    b = f.brief(PARAPHRASE, text)
    assert b.cache.lm is other and w._caches and w._caches[0].lm is tiny
    h = w.fork(header="Notes so far:\n")
    assert h.brief(PARAPHRASE, text).cache.text.endswith("Notes so far:\n" + text)
    assert w.fork(reserve=160)._caches   # any other change starts from copies of the warm caches


def test_a_keyword_question_is_the_same_whatever_the_hash_seed():
    """`recall_cases`' keyword question picks the three longest content words of a sentence: ties of length are
    broken by the word, not by a set's order (which changes with PYTHONHASHSEED from one process to the next)."""
    import subprocess
    import sys

    code = ("import random; from benchmarks.recall_cases import make_case_text; "
            "t = ' '.join(['Intro words here.'] * 6 + ['Several people bought cheaper better faster tickets for "
            "trains and planes yesterday.'] * 3 + ['Closing words here.'] * 6); "
            "print(make_case_text(t, 'e', 'keywords', random.Random(0)).question)")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(out) == 1 and "uses the words" in out.pop()
