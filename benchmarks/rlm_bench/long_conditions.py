"""The long suite's conditions, each one a library worker answering through its `brief()` handle (no copy of a
worker's logic here), and the rows of one episode.

Every condition sees the same events; `window` is the worker's positions, `reserve` of it left for the call:
- fold-task / fold-span / fold-span-only / fold-mix: `BriefedWorker` with `FoldPolicy(guidance=...)`, no recall; the
  trajectory's own worker calls are observed as they happen (`BriefedWorker.observe`: task guidance), as a briefed
  worker sees the calls another worker answered. fold-span-only: `SpanGuidance(scope="span")`;
- fold-recall, fold-recall-all, fold-recall-ranked, fold-recall-all-ranked: fold-mix with `TextRecall` (tail: the
  unfolded tail too; ranked: the best chunk last; fold-recall-all-ranked is `TextRecall()`, BriefedWorker's default
  recall until round 4), at `recall_budget` tokens taken out of the cache's budget, so every call still fits the
  window; the four share one cache (`BriefedWorker.fork`) and differ only at question time;
- fold-latent, fold-latent-both, fold-latent-text: fold-mix with `LatentRecall` (the worker's own hidden states rank
  the archived blocks, their keys and values re-attached; both: fused with BM25; text: the blocks' text re-prefilled
  before the question instead), at the same `recall_budget` out of the cache's budget; the three share one cache
  (its archive kept from the first extend: the suite's shared prefill keeps one when a latent condition runs);
- fold-routed, fold-routed-alone, fold-routed-half, fold-routed-always, fold-routed-text, fold-routed-hedged,
  fold-routed-tail, fold-routed-pin, fold-routed-pin-full, fold-routed-unpinned, fold-routed-confident-pin,
  fold-routed-overlap, fold-routed-peaks, fold-routed-means, fold-routed-verify: fold-latent's cache with `RoutedRecall`
  (BM25 where its best chunk stands out, else BM25's best chunks in a share of the budget and latent recall in the
  rest): its defaults, BriefedWorker's default recall (the others pin BM25's chunks side by side, `TextRecall()`, the
  default of rounds 4-23, unless they name their own); share 0 (latent recall alone below the margin); share 0.5; no
  margin enough (every call splits the budget); the latent blocks' text re-prefilled (attach=False); BM25 keeps 3/4
  above the margin and latent recall takes the rest (confident_share=0.75); the unfolded tail ranked too, less the last
  512 tokens (`LatentRecall(tail_skip=512)`); the unfolded tail's best blocks kept whole in every head by the call's
  compaction, within half the recall budget or all of it (`LatentRecall(pin=...)`; all of it is the default since round
  7); none (pin=0, the default until then); the tail's best blocks pinned on BM25's confident route too, nothing
  fetched there (confident_pin); below the margin, BM25's share only where its best chunk holds at least half of the
  question's content words (min_overlap=0.5); the latent ranking adds each block's 4 best tokens to its mean, BM25's
  confident route unchecked (`LatentRecall(peaks=4)`, `verify=False`: round 11's probe, the default of rounds 12-14);
  the block means alone, unchecked (`LatentRecall(peaks=0)`, `verify=False`: the default until round 12); at or above
  the margin, BM25 alone only where the latent ranking agrees that its best chunk is among the best
  (`RoutedRecall(verify=True)`: round 14's probe, the default of rounds 15-23, spelled out);
- fold-routed-stride, fold-routed-sentences: fold-routed whose BM25 chunks overlap by half, or hold whole sentences
  (`TextRecall(chunks="overlap")`, `"sentences"`: a statement across two side-by-side chunks' edge lies whole in one;
  round 19's probes); fold-routed-sentences-confident: whole sentences where BM25's recall is the call's own (at or
  above the margin), side-by-side chunks for its share below the margin (round 22's probe, the default of rounds
  24-27, spelled out); fold-routed-stride and fold-routed-sentences cut BM25's share below the margin their own way too;
  fold-routed-units: the shipped default whose latent recall ranks and recalls the trajectory's sentences instead of
  its blocks (`LatentRecall(units="sentences")`, round 25's probe); fold-routed-by-model: sentences where the recall
  is re-attached, blocks where it is pasted (`LatentRecall(units=None)`, round 27's probe, the default since round
  28, spelled out); fold-routed-bar0, fold-routed-bar1: fold-routed-by-model fetching only the pieces (sentences
  where re-attached) that score at least the unfolded tail's best less 0 or 1 (`LatentRecall(tail_margin=...)`,
  round 29's probe); fold-routed-tail-units: fold-routed-by-model ranking the unfolded tail's pieces too, less the
  last 128 tokens (`LatentRecall(tail_skip=128)`: a fact in view comes back as a copy nearest the question; round
  29's second probe). Every routed and latent condition but fold-routed and these five ranks blocks
  (`units="blocks"`): what each was run with;
- fold-routed-sink: fold-routed-verify's recall on a cache of its own whose fold keeps the worker's header whole where
  the cache's room allows (the fold's sink holds the cache text before the trajectory: the chat template's head and
  the header; `fold_policy`; round 18's probe);
- ceiling: the same trajectory all in view (`BriefedWorker` with the model's whole context as its cache, `KeepAll`
  per call, no fold): the in-window ceiling a recall is judged against; no rows where the trajectory does not fit;
- streaming: a fold that keeps nothing (attention sink + recent window, StreamingLLM), KeepAll per call;
  streaming-recall: the same with fold-recall's recall;
- truncated: `TextWorker` on the model with its context limited to the window (it cuts the oldest text);
- bm25: `TextWorker` on the BM25 top chunks of the whole trajectory for the question (`bm25_budget` tokens);
  bm25-sentences: the same with chunks of whole sentences (`bm25_chunks(sentences=True)`; round 19);
- summary: a running summary of the dropped text by the worker model (`PlainWorker`), plus the recent text, pasted
  for `TextWorker` (rlm's compaction);
- plain: `PlainWorker`, the question alone.
The folding conditions share their prefill until the first fold (`BriefedWorker.fork`), then each folds its own way.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

from agents.recall import default_recall_tokens, fold_room
from benchmarks.rlm_bench.long_episodes import (QUARTERS, WHOLE, LongEpisode, LongSpec, Question, question_event,
                                                question_text)

CONDITIONS = ["fold-task", "fold-span", "fold-span-only", "fold-mix", "fold-recall", "fold-recall-all",
              "fold-recall-ranked", "fold-recall-all-ranked", "fold-latent", "fold-latent-both", "fold-latent-text",
              "fold-routed", "fold-routed-alone", "fold-routed-half", "fold-routed-always", "fold-routed-text",
              "fold-routed-hedged", "fold-routed-tail", "fold-routed-pin", "fold-routed-pin-full",
              "fold-routed-unpinned", "fold-routed-confident-pin", "fold-routed-overlap", "fold-routed-peaks",
              "fold-routed-means", "fold-routed-verify", "fold-routed-sink", "fold-routed-stride",
              "fold-routed-sentences", "fold-routed-sentences-confident", "fold-routed-units",
              "fold-routed-by-model", "fold-routed-bar0", "fold-routed-bar1",
              "fold-routed-tail-units", "ceiling", "truncated",
              "streaming", "streaming-recall", "bm25", "bm25-sentences", "summary", "plain"]
# recall variants of fold-recall: scope (tail: the unfolded tail too) and order (ranked: the best chunk last); they
# share fold-recall's cache
RECALL_VARIANTS = {"fold-recall": dict(tail=False, ranked=False), "fold-recall-all": dict(tail=True, ranked=False),
                   "fold-recall-ranked": dict(tail=False, ranked=True),
                   "fold-recall-all-ranked": dict(tail=True, ranked=True)}   # TextRecall()
# LatentRecall's settings (rank, and attach: the keys and values re-attached, or the text re-prefilled); one cache
LATENT = {"fold-latent": dict(rank="latent"), "fold-latent-both": dict(rank="both"),
          "fold-latent-text": dict(rank="latent", attach=False)}
# agents.RoutedRecall: BM25 where its best chunk stands out, latent recall otherwise (fold-routed: its defaults,
# BriefedWorker's recall: BM25's best chunks keep a share of the budget; alone: latent recall takes it all; half: BM25
# keeps half; always: no margin is ever enough, every call splits the budget; text: the latent blocks' text
# re-prefilled before the question instead of their keys and values re-attached; hedged: above the margin BM25 keeps
# three quarters and latent recall takes the rest; tail: latent recall ranks the unfolded tail too, less the last 512
# tokens; pin: the call's compaction keeps the unfolded tail's best blocks whole, within pin_share of the recall
# budget (pin-full: the default since round 7, spelled out; unpinned: none, the default until then); confident-pin:
# the tail's best blocks pinned on BM25's confident route too; overlap: below the margin BM25 keeps its share only
# where its best chunk holds at least half of the question's content words; peaks: each block's 4 best tokens beside
# its mean, BM25's confident route unchecked, the default of rounds 12-14; means: the block means alone, unchecked,
# the default until round 12; verify: BM25's confident route checked by the latent ranking, the default of rounds
# 15-22; sentences-confident: whole sentences on BM25's own route, the default since round 24); on fold-latent's cache
ROUTED = {"fold-routed": {}, "fold-routed-alone": dict(share=0.0), "fold-routed-half": dict(share=0.5),
          "fold-routed-always": dict(margin=1e9), "fold-routed-text": dict(attach=False),
          "fold-routed-hedged": dict(confident_share=0.75), "fold-routed-tail": dict(tail_skip=512),
          "fold-routed-pin": dict(pin_share=0.5), "fold-routed-pin-full": dict(pin_share=1.0),
          "fold-routed-unpinned": dict(pin_share=0.0), "fold-routed-confident-pin": dict(confident_pin=True),
          "fold-routed-overlap": dict(min_overlap=0.5), "fold-routed-peaks": dict(peaks=4, verify=False),
          "fold-routed-means": dict(peaks=0, verify=False), "fold-routed-verify": dict(verify=True),
          "fold-routed-sink": {}, "fold-routed-stride": dict(chunks="overlap", shared="overlap"),
          "fold-routed-sentences": dict(chunks="sentences", shared="sentences"),
          "fold-routed-sentences-confident": dict(chunks="sentences", shared="words"),
          "fold-routed-units": dict(chunks="sentences", shared="words", units="sentences"),
          "fold-routed-by-model": dict(chunks="sentences", shared="words", units=None),
          "fold-routed-bar0": dict(chunks="sentences", shared="words", units=None, tail_margin=0.0),
          "fold-routed-bar1": dict(chunks="sentences", shared="words", units=None, tail_margin=1.0),
          "fold-routed-tail-units": dict(chunks="sentences", shared="words", units=None, tail_skip=128)}
# every routed condition but fold-routed (the shipped default) pins BM25's chunks: side by side, the default of rounds
# 4-22, unless it names its own, so each probe answers as it did in its round
# conditions whose fold keeps the worker's own header whole where the cache's room allows: the fold's sink holds the
# cache text before the trajectory (the chat template's head and the worker's header), on a cache of their own
HEADER_SINK = ("fold-routed-sink",)
FOLD_GUIDANCE = {"fold-task": "task", "fold-span": "span", "fold-span-only": "span-only", "fold-mix": "mix",
                 **dict.fromkeys(RECALL_VARIANTS, "mix"), **dict.fromkeys(LATENT, "mix"),
                 **dict.fromkeys(ROUTED, "mix")}
STREAMING = ("streaming", "streaming-recall")   # folds that keep nothing of the span (sink + recent window)
# a recall at question time, its budget out of the cache's
RECALL = (*RECALL_VARIANTS, "streaming-recall", *LATENT, *ROUTED)
TEXT = ("truncated", "bm25", "bm25-sentences", "summary", "plain")
SCORED_TOKENS = 16  # the room a call leaves for its answer: the candidates are scored, a lead-in and one value


@dataclass(frozen=True)
class LongConfig:
    """The suite's settings (None: derived from the model's window). The runner calls `run` on each episode."""

    conditions: tuple[str, ...] = tuple(CONDITIONS)
    window: int | None = None
    reserve: int | None = None
    recent: int | None = None
    share: str = "uniform"
    summary_tokens: int = 96
    bm25_budget: int | None = None
    recall_budget: int | None = None

    def sizes(self, lm: Any) -> dict[str, int]:
        window = self.window or lm.max_context
        if window > lm.max_context:
            raise SystemExit(f"--window {window} is past {lm.name}'s context length {lm.max_context}.")
        import briefing

        reserve = self.reserve or max(64, window // 16)
        budget = window - reserve
        recent = self.recent if self.recent is not None else budget // 2
        room = fold_room(budget, reserve, briefing.FoldPolicy().sink, recent)   # the worker's default recall's
        return dict(window=window, reserve=reserve, budget=budget, recent=recent,
                    bm25_budget=self.bm25_budget or budget // 4,
                    recall_budget=self.recall_budget or default_recall_tokens(budget, room))

    def run(self, lm: Any, prompts: Any, spec: LongSpec) -> tuple[dict, list[dict]]:
        """(episode record with its folds and peak RSS, rows) of one episode."""
        ep = spec.build()
        rows, folds = episode_rows(lm, prompts, ep, self)
        return dict(id=ep.id, seed=ep.seed, length=ep.target_tokens, folds=folds,
                    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), rows


def fold_policy(cfg: LongConfig, sizes: dict, condition: str, header: int = 0) -> Any:
    """The condition's FoldPolicy; header: the tokens before the trajectory, the sink of a HEADER_SINK condition as far
    as the cache's room allows with at least half the recent window kept where it can be (the recent window gives up
    what the larger sink and the recall would otherwise take past that room; with no room, TrajectoryCache's budget
    check says so)."""
    import briefing

    if condition in STREAMING:
        return briefing.FoldPolicy(keep=0, recent=sizes["recent"])
    guidance = {"task": briefing.TaskGuidance(), "span": briefing.SpanGuidance(), "mix": briefing.MixGuidance(),
                "span-only": briefing.SpanGuidance(scope="span")}[FOLD_GUIDANCE[condition]]
    if condition in HEADER_SINK:   # TrajectoryCache.check_budget: budget - t >= sink + recent + reserve + t
        room = sizes["budget"] - 2 * sizes["recall_budget"] - sizes["reserve"]   # for the sink and the recent window
        sink = max(briefing.FoldPolicy().sink, min(header, room - sizes["recent"] // 2))   # half the window at least
        return briefing.FoldPolicy(guidance=guidance, sink=sink, recent=max(0, min(sizes["recent"], room - sink)),
                                   share=cfg.share)
    return briefing.FoldPolicy(guidance=guidance, recent=sizes["recent"], share=cfg.share)


def cache_group(condition: str) -> str:
    """The condition whose cache `condition` asks on (forks of one cache differ only at question time): the recall
    variants fold-recall's, the latent and routed ones fold-latent's, a HEADER_SINK condition and the rest their own."""
    if condition in RECALL_VARIANTS:
        return "fold-recall"
    if condition in HEADER_SINK:
        return condition
    return "fold-latent" if condition in LATENT or condition in ROUTED else condition


def fact_range(text: str, q: Question) -> tuple[int, int]:
    """Character range of the question's planted statement ("The mailbox is painted red") in `text` (a paraphrased
    question's lead-in is not the statement's: its `statement` is searched)."""
    return statement_range(text, q.statement or f"{q.lead} {q.answer}")


def statement_range(text: str, statement: str) -> tuple[int, int]:
    """Character range of a planted statement in `text`."""
    start = text.index(statement)
    return start, start + len(statement)


def distractors_held(q: Question, held: Any) -> int:
    """How many of the question's same-kind distractor statements the call's context held whole; held(statement) ->
    the share of its characters held (a paraphrase's weak worker cannot tell the fact from them: docs/benchmarks.md,
    round 28)."""
    return sum(held(s) >= WHOLE for s in q.distractors)


def ask(worker: Any, ep: LongEpisode, condition: str, full: str, q: Question, i: int, tokens: int,
        body: str | None = None) -> dict:
    """One question through `worker.brief` (on `body` instead of the trajectory, for a condition that pastes other
    text); the row: what it picked, what it cost, what the call's context held of the fact."""
    from benchmarks.rlm_bench.conditions import choose

    t0 = time.perf_counter()
    b = worker.brief(question_text(q), full if body is None else body)
    picked, _ = choose(b.context, q.candidates, q.lead)
    latency = time.perf_counter() - t0
    row = dict(episode=ep.id, seed=ep.seed, length=ep.target_tokens, trajectory_tokens=tokens, condition=condition,
               question=i, quarter=q.quarter, offset=round(q.offset, 4), form=q.form, fact=q.fact,
               answer=q.answer, picked=picked,
               correct=picked == q.answer, latency_s=round(latency, 4), prompt_tokens=len(b.context.prompt_ids))
    if b.stats is not None:  # a briefed worker: what its cache did
        lo, hi = (int(f * len(full)) for f in QUARTERS[q.quarter])
        fact = fact_range(full, q)
        row.update(prefilled_tokens=b.stats.prefilled_tokens, cache_positions=b.stats.cache_positions,
                   kv_bytes=b.cache.kv_bytes(), kept=b.stats.kept, folds=len(b.cache.folds), position=b.cache.position,
                   recalled_tokens=b.stats.recalled_tokens, held_fact=round(b.held(*fact), 4),
                   held_quarter=round(b.held(lo, hi), 4), covered_fact=round(b.coverage(*fact), 4),
                   recall_s=round(b.stats.recall_s, 4), lookup_s=round(b.stats.lookup_s, 4), recall_how=b.stats.recall,
                   archive_bytes=b.stats.archive_bytes)
        if b.recalled.tail_gap is not None:   # the unfolded tail's best score over a fetch's, where a lookup ran
            row["tail_gap"] = round(b.recalled.tail_gap, 4)
    else:  # a context built from text for this call: everything in it was forwarded
        n = len(b.context.prompt_ids)
        row.update(prefilled_tokens=n, cache_positions=n, kv_bytes=kv_bytes(b.context))
        if body is None:
            row["covered_fact"] = round(b.coverage(*fact_range(full, q)), 4)
        elif q.quarter:   # pasted other text (BM25 chunks, a summary): the fact is there word for word or not
            row["covered_fact"] = float((q.statement or f"{q.lead} {q.answer}") in body)
    if "covered_fact" in row:   # the distractors the same way: word for word in pasted text, else by coverage
        row["distractors_held"] = distractors_held(q, (lambda s: float(s in body)) if body is not None
                                                   else (lambda s: b.coverage(*statement_range(full, s))))
    return row


def kv_bytes(ctx: Any) -> int:
    return sum(t.numel() * t.element_size() for layer in ctx.kv.layers for t in (layer.keys, layer.values))


def episode_rows(lm: Any, prompts: Any, ep: LongEpisode, cfg: LongConfig) -> tuple[list[dict], list[dict]]:
    """Every condition of `cfg` on one episode: its rows (one per question) and the folds of its folding
    conditions (each fold with its time against the estimated prefill of its span)."""
    import briefing
    from agents import BriefedWorker, LatentRecall

    sizes = cfg.sizes(lm)
    tail = "".join(question_event(q, i) for i, q in enumerate(ep.questions))
    tokens = lm.count_tokens(ep.text + tail)
    rows: list[dict] = []
    folds: list[dict] = []
    folding = [c for c in cfg.conditions if c in FOLD_GUIDANCE or c in STREAMING]
    if folding:
        # a latent condition needs the archive from the first extend: the shared prefill keeps one then (it asks
        # nothing, so its recall is never used; the text-recall forks ignore the archive)
        archived = any(c in LATENT or c in ROUTED for c in folding)
        peaks = max((latent_of(recall_of(c, sizes)).peaks for c in folding if c in LATENT or c in ROUTED),
                    default=0)   # the shared archive keeps token states where a condition ranks by them
        latent = LatentRecall(tokens=sizes["recall_budget"], peaks=peaks) if archived else None
        base = BriefedWorker(lm=lm, fold=briefing.FoldPolicy(recent=sizes["recent"]), cache_budget=sizes["budget"],
                             reserve=sizes["reserve"], recall=latent, max_new_tokens=SCORED_TOKENS)
        text, k, held = "", 0, 0
        while k < len(ep.chunks):  # shared phase: stop before the first sync that would fold
            piece, query = ep.chunks[k]
            if held + lm.count_tokens(piece) + 16 > sizes["budget"]:
                break
            text += piece
            if query:
                base.observe(query, text)
            held = base.sync(text).length
            k += 1
        built: dict[str, Any] = {}
        for condition in folding:
            same = cache_group(condition)
            if same in built:   # fold-recall's (fold-latent's) cache, another recall: its folds are that condition's
                worker = built[same].fork(recall=recall_of(condition, sizes))
            else:
                recall = None
                budget, reserve = sizes["budget"], sizes["reserve"]
                if condition in RECALL:  # the recalled text comes out of the cache's budget: every call fits the window
                    recall = recall_of(condition, sizes)
                    budget, reserve = budget - sizes["recall_budget"], reserve + sizes["recall_budget"]
                    if same == "fold-latent" and peaks:   # a peaks condition will ask on this cache
                        recall = keeping_token_states(recall, lm)
                # the tokens before the trajectory (the prefix tokenised alone: a merge at its end moves it by one)
                header = len(lm.encode(base.prompts().cache_text(""))) if condition in HEADER_SINK else 0
                worker = base.fork(fold=fold_policy(cfg, sizes, condition, header), cache_budget=budget,
                                   reserve=reserve, recall=recall,
                                   selector=briefing.KeepAll() if condition in STREAMING else None)
                full = text
                for piece, query in ep.chunks[k:]:
                    full += piece
                    if query and condition not in STREAMING:
                        worker.observe(query, full)
                    else:
                        worker.sync(full)
                cache = worker.sync(full)
                rate = cache.prefill_s / max(1, cache.prefilled_tokens)  # s per token at this cache's sizes
                folds += [dict(episode=ep.id, length=ep.target_tokens, condition=condition, **f.model_dump(),
                               prefill_estimate_s=f.span * rate, ratio_to_prefill=f.time_s / max(1e-9, f.span * rate))
                          for f in cache.folds]
                if same in ("fold-recall", "fold-latent"):   # before its questions: the variants ask on this cache
                    built[same] = worker.fork()
            full = ep.text
            for i, q in enumerate(ep.questions):
                full += question_event(q, i)
                rows.append(ask(worker, ep, condition, full, q, i, tokens))
    if "ceiling" in cfg.conditions:
        rows += ceiling_rows(lm, ep, sizes, tokens)
    text_conditions = [c for c in cfg.conditions if c in TEXT]
    if text_conditions:
        rows += text_rows(lm, prompts, ep, cfg, sizes, tokens, text_conditions)
    return rows, folds


def latent_of(recall: Any) -> Any:
    """The LatentRecall of a LatentRecall or RoutedRecall."""
    from agents import RoutedRecall

    return recall.latent if isinstance(recall, RoutedRecall) else recall


def keeping_token_states(recall: Any, lm: Any) -> Any:
    """`recall` (a LatentRecall or RoutedRecall) whose caches' archive keeps the token states that a `peaks` recall
    forking from them ranks by (the archive it would build otherwise, plus the states)."""
    import dataclasses

    latent = latent_of(recall)
    latent.archive_policy = dataclasses.replace(latent.archive(lm), token_states=True)
    return recall


def recall_of(condition: str, sizes: dict) -> Any:
    """The question-time recall of a recall condition, at the suite's recall budget."""
    from agents import LatentRecall, RoutedRecall, TextRecall

    if condition in ROUTED:
        kw = dict(ROUTED[condition])
        if condition != "fold-routed":
            kw.setdefault("chunks", "words")
            kw.setdefault("units", "blocks")
        if "pin_share" in kw:
            kw["pin"] = int(kw.pop("pin_share") * sizes["recall_budget"])
        own = {k: kw.pop(k) for k in ("attach", "tail_skip", "pin", "peaks", "units", "tail_margin")
               if k in kw}   # LatentRecall's
        if own:
            kw["latent"] = LatentRecall(tokens=sizes["recall_budget"], **own)
        if "chunks" in kw:   # TextRecall's
            kw["text"] = TextRecall(tokens=sizes["recall_budget"], chunks=kw.pop("chunks"))
        if "shared" in kw:   # the TextRecall of BM25's share below the margin
            kw["shared"] = TextRecall(tokens=sizes["recall_budget"], chunks=kw.pop("shared"))
        return RoutedRecall(tokens=sizes["recall_budget"], **kw)
    if condition in LATENT:
        return LatentRecall(tokens=sizes["recall_budget"], units="blocks", **LATENT[condition])
    return TextRecall(tokens=sizes["recall_budget"], **RECALL_VARIANTS.get(condition, RECALL_VARIANTS["fold-recall"]))


def ceiling_rows(lm: Any, ep: LongEpisode, sizes: dict, tokens: int) -> list[dict]:
    """The in-window ceiling: every question on the whole trajectory in view (no fold, every position kept), where
    the model's context holds it; none where it does not."""
    import briefing
    from agents import BriefedWorker

    reserve = sizes["reserve"]
    if tokens + 64 > lm.max_context - reserve:   # the header and the question's event come on top of the text
        return []
    worker = BriefedWorker(lm=lm, cache_budget=lm.max_context - reserve, reserve=reserve, recall=None,
                           selector=briefing.KeepAll(), max_new_tokens=SCORED_TOKENS)
    rows, full = [], ep.text
    for i, q in enumerate(ep.questions):
        full += question_event(q, i)
        rows.append(ask(worker, ep, "ceiling", full, q, i, tokens))
        if rows[-1]["folds"]:
            raise RuntimeError(f"ceiling: the cache folded on episode {ep.id}; its trajectory does not fit.")
    return rows


def text_rows(lm: Any, prompts: Any, ep: LongEpisode, cfg: LongConfig, sizes: dict, tokens: int,
              conditions: list[str]) -> list[dict]:
    from agents import LocalChatBackend, PlainWorker, TextWorker
    from agents.recall import bm25_chunks

    window = LocalChatBackend(lm, context_limit=sizes["window"])
    text_worker = TextWorker(backend=window, max_new_tokens=SCORED_TOKENS)
    rows: list[dict] = []
    full = ep.text
    questions = []
    for i, q in enumerate(ep.questions):
        full += question_event(q, i)
        questions.append((i, q, full))
    for condition in conditions:
        if condition == "truncated":   # TextWorker's handoff: the last window of the text
            rows += [ask(text_worker, ep, condition, f, q, i, tokens) for i, q, f in questions]
        elif condition == "plain":
            plain = PlainWorker(backend=window, max_new_tokens=SCORED_TOKENS)
            rows += [ask(plain, ep, condition, f, q, i, tokens) for i, q, f in questions]
        elif condition in ("bm25", "bm25-sentences"):   # BM25 chunks of the whole trajectory for the question, pasted
            for i, q, f in questions:
                body = bm25_chunks(ep.text, question_text(q), sizes["bm25_budget"], lm,
                                   sentences=condition == "bm25-sentences").text
                rows.append(ask(text_worker, ep, condition, f, q, i, tokens, body=body))
        elif condition == "summary":
            body, t_sum = running_summary(lm, prompts, ep, cfg, sizes)
            tail = full[len(ep.text):]
            for i, q, f in questions:
                rows.append(ask(text_worker, ep, condition, f, q, i, tokens, body=body + tail[:len(f) - len(ep.text)]))
                rows[-1]["summary_s"] = round(t_sum, 3)
    return rows


def running_summary(lm: Any, prompts: Any, ep: LongEpisode, cfg: LongConfig, sizes: dict) -> tuple[str, float]:
    """rlm-style compaction: when the text passes the window, the oldest half is summarised by the worker model
    (with the running summary) and dropped. Returns (summary + recent text, time spent summarising)."""
    from agents import LocalChatBackend, PlainWorker

    writer = PlainWorker(backend=LocalChatBackend(lm), max_new_tokens=cfg.summary_tokens, stop=["\n\n\n"])
    limit = sizes["budget"] - lm.count_tokens(prompts.cache_text("")) - cfg.summary_tokens - 64
    summary, recent, t_sum = "", "", 0.0
    for piece, _ in ep.chunks:
        recent += piece
        ids = lm.encode(recent)
        if len(ids) > limit:
            cut = len(ids) // 2
            dropped, recent = lm.decode(ids[:cut]), lm.decode(ids[cut:])
            ask_text = ("Summarise the trajectory excerpt below in a few lines. Keep every code, PIN, combination and "
                        "number exactly as written.\n\nEarlier summary:\n" + (summary or "(none)") + "\n\nExcerpt:\n"
                        + dropped)
            if len(lm.encode(prompts.plain_prompt(ask_text))) + cfg.summary_tokens >= lm.max_context:
                ask_text = ask_text[-(lm.max_context - cfg.summary_tokens - 64) * 3:]
            t0 = time.perf_counter()
            summary = writer.answer(ask_text, "").text.strip()
            t_sum += time.perf_counter() - t0
    body = (f"[summary of the earlier trajectory]\n{summary}\n\n" if summary else "") + recent
    return body, t_sum
