"""Long-trajectory suite: trajectories several times the worker's window, served by a folding KV cache.

    python -m benchmarks.rlm_bench.long [--lengths 8192 16384 32768 65536] [--episodes 24] [--first-episode 0]
                             [--window 8192]
                             [--conditions fold-task fold-span fold-span-only fold-mix fold-recall fold-recall-all
                                           fold-recall-ranked fold-recall-all-ranked truncated streaming
                                           streaming-recall bm25 summary plain]
                             [--split dev|heldout] [--out bench_out/long]
    rlm bench --suite long ...          (the same options)
    python -m benchmarks.rlm_bench.long --report bench_out/long/results.json [--readme docs/benchmarks.md]
        # rewrite results.md and long.png (and the long-suite block of docs/benchmarks.md) from the JSON
    python -m benchmarks.rlm_bench.long --call-case 12400 --out DIR   # two BriefedWorker calls past the window (call_case.json)

Episodes: a scripted orchestrator reads essay sections (REPL outputs), asks the worker about each one and takes
notes, rendered by the runtime's own events (`rlm.events`, `rlm.trajectory.Trajectory`). Four target facts of four
kinds ("The safe combination is 4417", "The piano teacher is named Mary", "The mailbox is painted red", "The pub
sign is a tiger") are planted one per quarter of the trajectory (in a REPL output, a worker answer or a note,
cycling), plus one distractor of each kind (another key, another value) anywhere. At the end the worker is asked
for each target (one call per fact); the candidates are the answer, the distractor's value and two values never
planted (chance 1/4), scored by summed log-prob after the lead-in, e.g. "The mailbox is painted"
(`benchmarks.rlm_bench.conditions.choose`).

Conditions (all see the same events; `window` is the worker model's positions, `reserve` of it left for the call):
- fold-task / fold-span / fold-mix: `briefing.TrajectoryCache` with `FoldPolicy(guidance=...)` and the briefed
  worker's per-call compaction (AttentionMatching, tau 1); the worker prompts of the trajectory's own worker calls
  are observed as they happen (task guidance), exactly as a BriefedWorker sees them; fold-span-only: span guidance
  drawing only the folded span's own prefill queries (`SpanGuidance(scope="span")`; fold-span draws from the
  trajectory read so far, mostly the recent window's tokens);
- fold-recall: fold-mix, plus BM25 top chunks of the text the cache no longer holds whole (everything before its
  unfolded tail; the trajectory keeps it) pasted into the call prompt in text order
  (`agents.recall.recall_folded(tail=False, ranked=False)`, BriefedWorker's recall until fold-recall-all-ranked
  won on dev episodes), `recall_budget` tokens (an eighth of the cache budget by default) taken out of the cache's
  budget, so that the call still fits the same window: bounded memory, a per-call prompt bounded by the budget;
- fold-recall-all: fold-recall's cache (shared when both run), recalling from the whole trajectory
  (`recall_folded(tail=True, ranked=False)`): the unfolded tail too, which the cache holds verbatim but thousands of
  positions from the question;
- fold-recall-ranked / fold-recall-all-ranked: the same two scopes with the recalled chunks by rising BM25 score
  (the best chunk last, next to the question) instead of text order; fold-recall-all-ranked is what
  BriefedWorker does;
- streaming: the same cache folding with keep 0 (attention sink + recent window, StreamingLLM), KeepAll per call;
- streaming-recall: streaming plus the same recall as fold-recall (what the recall alone brings, without the folds'
  kept positions);
- truncated: the last window of the text, as TextWorker pastes it (re-prefilled on every call);
- bm25: BM25 top chunks of the whole trajectory for the question, at about the token budget a folded briefing call
  keeps (a quarter of the cache budget by default);
- summary: a running text summary of the dropped part by the worker model, plus the recent text (rlm's compaction);
- plain: the question alone.

Figures: accuracy by length and by depth quarter with 95% bootstrap intervals (over questions, 2,000 resamples),
per-call latency and prefilled tokens against trajectory length, fold time (and its ratio to the estimated
prefill time of the folded span, at the cache's own measured prefill rate), peak RSS after each length
(the process's, monotonic) and KV bytes held. Timings depend on the machine's load: results record the load.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.readme import replace_block
from rlm.data import essay_names, read_essay
from rlm.events import CellOutput, CodeCell, OrchestratorMessage, RunStart, WorkerCall
from rlm.trajectory import Trajectory

CONDITIONS = ["fold-task", "fold-span", "fold-span-only", "fold-mix", "fold-recall", "fold-recall-all", "fold-recall-ranked",
              "fold-recall-all-ranked", "truncated", "streaming", "streaming-recall", "bm25",
              "summary", "plain"]
# recall variants of fold-recall: scope (tail: the unfolded tail too) and order (ranked: the best chunk last); they
# share fold-recall's cache when run together
RECALL_VARIANTS = {"fold-recall": dict(tail=False, ranked=False), "fold-recall-all": dict(tail=True, ranked=False),
                   "fold-recall-ranked": dict(tail=False, ranked=True),
                   "fold-recall-all-ranked": dict(tail=True, ranked=True)}   # BriefedWorker's recall
FOLD_GUIDANCE = {"fold-task": "task", "fold-span": "span", "fold-span-only": "span-only", "fold-mix": "mix", **dict.fromkeys(RECALL_VARIANTS, "mix")}
STREAMING = ("streaming", "streaming-recall")   # folds that keep nothing of the span (sink + recent window)
RECALL = (*RECALL_VARIANTS, "streaming-recall")  # + BM25 chunks of the trajectory text in the call prompt
QUARTERS = {1: (0.03, 0.22), 2: (0.28, 0.47), 3: (0.53, 0.72), 4: (0.78, 0.97)}
CARRIERS = ("output", "worker", "note")
SPLIT_SEED = {"dev": 0, "heldout": 100_000}
SPLIT_SPAN = 100_000   # episode e of a split has seed SPLIT_SEED + e


@dataclass(frozen=True)
class Kind:
    """A fact form. Values are one token with a leading space (names, colours, animals) or four digits (codes), so
    the candidates of a question have equal token counts."""

    statement: str  # "{key}", "{value}"
    question: str   # "{key}"
    lead: str       # the answer's lead-in, "{key}"
    keys: tuple[str, ...]
    values: tuple[str, ...]


KINDS = [
    Kind("The {key} is {value}", "What is the {key}?", "The {key} is", ("safe combination", "alarm code", "locker number", "garage code",
         "printer PIN", "gate code"), ()),
    Kind("The {key} is named {value}", "What is the name of the {key}?", "The {key} is named", ("new landlord", "magazine editor", "family dentist",
         "piano teacher", "tax lawyer", "next-door neighbour"),
         ("Peter", "John", "Mary", "Alice", "Robert", "David", "Sarah", "Michael", "Emma", "James", "Anna", "Paul")),
    Kind("The {key} is painted {value}", "What colour is the {key} painted?", "The {key} is painted", ("front door", "garden fence", "old bicycle", "mailbox",
         "rowing boat", "delivery van"),
         ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey")),
    Kind("The {key} is a {value}", "What animal is the {key}?", "The {key} is a", ("football team's mascot", "hotel logo", "chess club emblem",
         "pub sign", "garden statue", "company flag"),
         ("horse", "tiger", "eagle", "rabbit", "wolf", "bear", "snake", "mouse", "whale", "shark", "lion", "zebra")),
]


@dataclass
class Question:
    key: str
    answer: str
    quarter: int
    offset: float   # character offset of the statement / trajectory length
    question: str   # "What is the safe combination?"
    lead: str       # the answer's lead-in ("The safe combination is")
    candidates: list[str]  # the answer, the same-kind distractor's value and two values never planted


@dataclass
class LongEpisode:
    id: str
    seed: int
    target_tokens: int
    task: str
    chunks: list[tuple[str, str | None]]  # (trajectory text added, worker query asked after it or None)
    questions: list[Question]

    @property
    def text(self) -> str:
        return "".join(c for c, _ in self.chunks)


def _codes(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = str(rng.randint(1000, 9999))
        if not any(sum(a == b for a, b in zip(v, o)) >= 2 for o in out):
            out.append(v)
    return out


def _sections(rng: random.Random, chars: int) -> list[str]:
    names = essay_names()
    out, total, i, start = [], 0, 0, rng.randrange(len(names))
    while total < chars:
        paras = [p.strip() for p in read_essay(names[(start + i) % len(names)]).split("\n") if p.strip()]
        i += 1
        cur = ""
        for p in paras:
            cur = f"{cur}\n{p}" if cur else p
            if len(cur) >= 900:
                out.append(cur[:1500])
                total += len(out[-1]) + 450
                cur = ""
                if total >= chars:
                    break
    return out


def make_long_episode(seed: int, target_tokens: int, chars_per_token: float = 4.1) -> LongEpisode:
    """One episode of about `target_tokens` tokens, deterministic from (seed, target_tokens).

    Four target facts of four kinds (a code, a name, a colour, an animal), one per quarter in shuffled kind order;
    one distractor of each kind (other key, other value) anywhere. A question's candidates are its value, its
    distractor's value and two values of that kind never planted (chance 1/4)."""
    rng = random.Random(f"rlm-long:{seed}:{target_tokens}")
    sections = _sections(rng, int(target_tokens * chars_per_token))
    n = len(sections)
    kinds = rng.sample(KINDS, 4)
    facts = []  # (kind, key, value, quarter or 0, other values)
    for qt, kind in enumerate(kinds, start=1):
        keys = rng.sample(kind.keys, 2)
        pool = _codes(rng, 4) if not kind.values else rng.sample(kind.values, 4)
        facts.append((kind, keys[0], pool[0], qt, pool))
        facts.append((kind, keys[1], pool[1], 0, pool))
    at: dict[int, list[tuple[int, Any]]] = {}
    for j, f in enumerate(facts):
        lo, hi = QUARTERS[f[3]] if f[3] else (0.05, 0.95)
        at.setdefault(min(n - 1, int(rng.uniform(lo, hi) * n)), []).append((j, f))
    task = "Go through the document, collect every fact it states about people, objects and codes, then answer questions."
    traj = Trajectory(run_id=f"long-{seed}")
    chunks: list[tuple[str, str | None]] = []
    mark = 0
    calls = 0
    offsets: dict[int, int] = {}

    def add(e: Any) -> None:
        e.run_id, e.seq = traj.run_id, len(traj.events)
        traj.append(e, stamp=False)

    def call(it: int, query: str, answer: str) -> None:
        nonlocal mark, calls
        chunks.append((traj.text[mark:], query))  # the worker is called here, on the text so far
        mark = len(traj.text)
        calls += 1
        add(WorkerCall(call_id=f"long-{seed}.{calls}", iteration=it, index=calls, query=query, answer=answer, worker="worker"))

    add(RunStart(query=task, context_length=sum(map(len, sections)), worker={"name": "worker"}))
    add(OrchestratorMessage(iteration=0, text=f"I will read the document in {n} sections, ask the worker about each "
                                              "one and note every fact I find."))
    for s, section in enumerate(sections):
        it = s + 1
        add(OrchestratorMessage(iteration=it, text=f"Reading section {it} of {n}."))
        add(CodeCell(iteration=it, cell=0, code=f"section = sections[{s}]\nprint(section)"))
        add(CellOutput(iteration=it, cell=0, stdout=section))
        first = section.replace("\n", " ").split(". ")[0][:150]
        call(it, f"In one sentence, what is section {it} about?", f"Section {it} says: {first}.")
        for j, (kind, key, value, _, _) in at.get(s, []):
            statement = kind.statement.format(key=key, value=value)
            carrier = CARRIERS[(seed + j) % 3]
            before = len(traj.text)
            if carrier == "output":
                add(CodeCell(iteration=it, cell=1, code="print(extract_facts(section))"))
                add(CellOutput(iteration=it, cell=1, stdout=f"Found: {statement}."))
            elif carrier == "worker":
                call(it, f"Does section {it} state a fact about a person, an object or a code? Quote it.",
                     f"Yes: {statement}.")
            else:
                add(OrchestratorMessage(iteration=it, text=f"Note to self: {statement}. I will need this later."))
            offsets[j] = traj.text.index(statement, before)
    chunks.append((traj.text[mark:], None))
    total = len(traj.text)
    questions = []
    for j, (kind, key, value, qt, pool) in enumerate(facts):
        if qt:
            cands = sorted(pool, key=lambda v: random.Random(f"{seed}:{key}:{v}").random())
            questions.append(Question(key, value, qt, offsets[j] / total, kind.question.format(key=key),
                                      kind.lead.format(key=key), cands))
    return LongEpisode(f"long-s{seed}-t{target_tokens}", seed, target_tokens, task, chunks, questions)


def question_event(q: Question, i: int) -> str:
    """Text the orchestrator adds before asking about a fact (so each final call has new tokens to extend by)."""
    return f"[orchestrator]\nAll sections read. Question {i + 1}: I ask the worker for the {q.key}.\n\n"


def question_text(q: Question) -> str:
    return f"{q.question} Answer in one word."


# -- conditions -------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    lm: Any
    prompts: Any
    window: int
    reserve: int
    recent: int | None
    summary_tokens: int = 96
    share: str = "uniform"
    bm25_budget: int = 0
    recall_budget: int = 0
    rows: list[dict] = field(default_factory=list)
    folds: list[dict] = field(default_factory=list)

    @property
    def budget(self) -> int:
        return self.window - self.reserve


def _policy(setup: Setup, condition: str):
    import briefing

    if condition in STREAMING:
        return briefing.FoldPolicy(keep=0, recent=setup.recent)
    guidance = {"task": briefing.TaskGuidance(), "span": briefing.SpanGuidance(), "mix": briefing.MixGuidance(),
                "span-only": briefing.SpanGuidance(scope="span")}
    return briefing.FoldPolicy(guidance=guidance[FOLD_GUIDANCE[condition]], recent=setup.recent, share=setup.share)


def _row(setup: Setup, ep: LongEpisode, condition: str, q: Question, i: int, picked: str, latency: float,
         prefilled: int, positions: int, kv_bytes: int, tokens: int, **extra: Any) -> None:
    setup.rows.append(dict(episode=ep.id, seed=ep.seed, length=ep.target_tokens, trajectory_tokens=tokens,
                           condition=condition, question=i, quarter=q.quarter, offset=round(q.offset, 4),
                           answer=q.answer, picked=picked, correct=picked == q.answer, latency_s=round(latency, 4),
                           prefilled_tokens=prefilled, cache_positions=positions, kv_bytes=kv_bytes, **extra))


def fact_spans(lm: Any, text: str, questions: list[Question]) -> list[tuple[int, int]]:
    """Token range [start, stop) of each question's planted statement ("The mailbox is painted red") in the
    tokenisation of `text` (the cache's text: the cache's ids are that tokenisation, seam-exact)."""
    offsets = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = []
    for q in questions:
        c0 = text.index(f"{q.lead} {q.answer}")
        c1 = c0 + len(q.lead) + 1 + len(q.answer)
        inside = [i for i, (a, b) in enumerate(offsets) if a < c1 and b > c0]
        spans.append((inside[0], inside[-1] + 1))
    return spans


def run_folding(setup: Setup, ep: LongEpisode, conditions: list[str], log=print) -> None:
    """The folding conditions share their prefill until the first fold, then each folds its own way."""
    import briefing
    from agents.recall import recall_folded, recall_query
    from benchmarks.rlm_bench.conditions import choose

    lm, prompts = setup.lm, setup.prompts
    shared = briefing.TrajectoryCache(lm, budget=setup.budget, reserve=setup.reserve,
                                      fold=briefing.FoldPolicy(recent=setup.recent))
    text, k = prompts.cache_text(""), 0
    while k < len(ep.chunks):  # shared phase: stop before the first sync that would fold
        piece, query = ep.chunks[k]
        if shared.length + lm.count_tokens(piece) + 16 > setup.budget:
            break
        text += piece
        shared.sync(text)
        if query:
            shared.observe(prompts.call_prompt(query))
        k += 1
    spans = fact_spans(lm, prompts.cache_text(ep.text), ep.questions)
    built: dict[str, Any] = {}  # conditions that differ only in their calls share the trajectory's cache
    for condition in conditions:
        same = "fold-recall" if condition in RECALL_VARIANTS else condition
        reused = same in built   # its folds are fold-recall's: recorded once, under fold-recall
        if reused:
            cache, full = built[same].clone(), text + "".join(c for c, _ in ep.chunks[k:])
        else:
            cache = shared.clone()
            cache.fold = _policy(setup, condition)
            if condition in RECALL:  # the recalled text comes out of the cache's budget: every condition fits the window
                cache.budget = setup.budget - setup.recall_budget
                cache.reserve = setup.reserve + setup.recall_budget  # and RoPE positions re-base that much earlier
                cache.check_budget()
            full = text
            for piece, query in ep.chunks[k:]:
                full += piece
                cache.sync(full)
                if query and condition not in STREAMING:
                    cache.observe(prompts.call_prompt(query))
            if same == "fold-recall" and len(set(RECALL_VARIANTS) & set(conditions)) > 1:
                built[same] = cache.clone()
        selector = briefing.KeepAll() if condition in STREAMING else briefing.AttentionMatching(tau=1.0)
        rate = cache.prefill_s / max(1, cache.prefilled_tokens)  # s per token at this cache's sizes
        for f in cache.folds if not reused else ():
            setup.folds.append(dict(episode=ep.id, length=ep.target_tokens, condition=condition, **f.model_dump(),
                                    prefill_estimate_s=f.span * rate,
                                    ratio_to_prefill=f.time_s / max(1e-9, f.span * rate)))
        for i, q in enumerate(ep.questions):
            full += question_event(q, i)
            t0 = time.perf_counter()
            before = cache.prefilled_tokens
            cache.sync(full)
            query = question_text(q)
            if condition in RECALL:  # recall from the text the folds compacted (tail: and the unfolded tail)
                n_query = lm.count_tokens(prompts.call_prompt(query))
                variant = RECALL_VARIANTS.get(condition, RECALL_VARIANTS["fold-recall"])  # streaming-recall: as fold-recall
                recalled = recall_folded(cache, query, setup.recall_budget, **variant)
                query = recall_query(query, recalled)
            else:
                n_query = None
            ctx = cache.compact(prompts.call_prompt(query), selector, query_tokens=n_query)
            picked, _ = choose(ctx, q.candidates, q.lead)
            latency = time.perf_counter() - t0
            # what the folds kept of the fact's statement, against what they kept of its whole depth quarter
            lo, hi = (int(f * cache.tokens) for f in QUARTERS[q.quarter])
            _row(setup, ep, condition, q, i, picked, latency, cache.prefilled_tokens - before,
                 cache.length, cache.kv_bytes(), cache.tokens, kept=ctx.stats.kept, folds=len(cache.folds),
                 prompt_tokens=len(ctx.prompt_ids), position=cache.position,
                 held_fact=round(cache.held(*spans[i]), 4), held_quarter=round(cache.held(lo, hi), 4))
        log(f"  {condition}: {cache.tokens} tokens, {cache.length} positions, {len(cache.folds)} folds, "
            f"{sum(r['correct'] for r in setup.rows[-4:])}/4")


def _fresh(setup: Setup, body: str, questions: list[Question], ep: LongEpisode, condition: str, log=print,
           tokens: int | None = None) -> None:
    """One context built from text (prefilled from scratch), all questions answered on it with KeepAll."""
    import briefing
    from benchmarks.rlm_bench.conditions import choose

    lm, prompts = setup.lm, setup.prompts
    t0 = time.perf_counter()
    cache = briefing.TrajectoryCache(lm, prompts.cache_text(body), fold=None)
    build = time.perf_counter() - t0
    for i, q in enumerate(questions):
        t1 = time.perf_counter()
        ctx = cache.compact(prompts.call_prompt(question_text(q)), briefing.KeepAll())
        picked, _ = choose(ctx, q.candidates, q.lead)
        _row(setup, ep, condition, q, i, picked, build + time.perf_counter() - t1, cache.tokens, cache.length,
             cache.kv_bytes(), tokens or cache.tokens, prompt_tokens=len(ctx.prompt_ids))
    log(f"  {condition}: {cache.tokens} tokens, {sum(r['correct'] for r in setup.rows[-len(questions):])}/{len(questions)}")


def _cut(lm: Any, text: str, keep: int) -> str:
    ids = lm.encode(text)
    from agents.workers.text import CUT_MARK

    return text if len(ids) <= keep else CUT_MARK + lm.decode(ids[len(ids) - keep:])


def run_truncated(setup: Setup, ep: LongEpisode, log=print) -> None:
    """TextWorker's handoff: the last window of text (one prefill per call; the calls' texts differ only by the
    short question events, so one prefill of the final text serves all four and is counted per call)."""
    full = ep.text + "".join(question_event(q, i) for i, q in enumerate(ep.questions))
    head = setup.lm.count_tokens(setup.prompts.cache_text(""))
    body = _cut(setup.lm, full, setup.budget - head - 16)
    _fresh(setup, body, ep.questions, ep, "truncated", log, tokens=setup.lm.count_tokens(full))


def run_bm25(setup: Setup, ep: LongEpisode, log=print) -> None:
    from agents.recall import bm25_chunks

    full = ep.text
    for i, q in enumerate(ep.questions):
        body = bm25_chunks(full, question_text(q), setup.bm25_budget or setup.budget // 4, setup.lm)
        n = len(setup.rows)
        _fresh(setup, body, [q], ep, "bm25", log=lambda *_: None, tokens=setup.lm.count_tokens(full))
        setup.rows[n]["question"] = i
    log(f"  bm25: {sum(r['correct'] for r in setup.rows[-4:])}/4")


def run_summary(setup: Setup, ep: LongEpisode, log=print) -> None:
    """rlm-style compaction: when the text passes the window, the oldest half is summarised by the worker model
    (with the running summary) and dropped; the final context is the summary plus the recent text."""
    import briefing

    lm, prompts = setup.lm, setup.prompts
    cfg = briefing.GenerationConfig(max_new_tokens=setup.summary_tokens, stop=["\n\n\n"])
    summary, recent, t_sum = "", "", 0.0
    limit = setup.budget - lm.count_tokens(prompts.cache_text("")) - setup.summary_tokens - 64
    for piece, _ in ep.chunks:
        recent += piece
        ids = lm.encode(recent)
        if len(ids) > limit:
            cut = len(ids) // 2
            dropped, recent = lm.decode(ids[:cut]), lm.decode(ids[cut:])
            ask = ("Summarise the trajectory excerpt below in a few lines. Keep every code, PIN, combination and "
                   "number exactly as written.\n\nEarlier summary:\n" + (summary or "(none)") + "\n\nExcerpt:\n" + dropped)
            ask_ids = lm.encode(prompts.plain_prompt(ask))
            if len(ask_ids) + setup.summary_tokens >= lm.max_context:
                ask = ask[-(lm.max_context - setup.summary_tokens - 64) * 3:]
            t0 = time.perf_counter()
            summary = briefing.generate(briefing.plain_context(lm, prompts.plain_prompt(ask)), cfg).text.strip()
            t_sum += time.perf_counter() - t0
    full_tail = "".join(question_event(q, i) for i, q in enumerate(ep.questions))
    body = (f"[summary of the earlier trajectory]\n{summary}\n\n" if summary else "") + recent + full_tail
    n = len(setup.rows)
    _fresh(setup, body, ep.questions, ep, "summary", log, tokens=lm.count_tokens(ep.text + full_tail))
    for r in setup.rows[n:]:
        r["summary_s"] = round(t_sum, 3)


def run_plain(setup: Setup, ep: LongEpisode, log=print) -> None:
    import briefing
    from benchmarks.rlm_bench.conditions import choose

    for i, q in enumerate(ep.questions):
        t0 = time.perf_counter()
        ctx = briefing.plain_context(setup.lm, setup.prompts.plain_prompt(question_text(q)))
        picked, _ = choose(ctx, q.candidates, q.lead)
        _row(setup, ep, "plain", q, i, picked, time.perf_counter() - t0, len(ctx.prompt_ids), 0, 0, 0,
             prompt_tokens=len(ctx.prompt_ids))
    log(f"  plain: {sum(r['correct'] for r in setup.rows[-4:])}/4")


# -- statistics and report -----------------------------------------------------------------------------------------


def bootstrap_ci(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    return cluster_ci([[v] for v in values], reps, seed)


def cluster_ci(groups: list[list[float]], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of all values, resampling whole groups (an episode's questions
    share one trajectory, so they are not independent draws)."""
    if not groups:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(groups)
    means = []
    for _ in range(reps):
        pick = [groups[rng.randrange(n)] for _ in range(n)]
        means.append(sum(sum(g) for g in pick) / sum(len(g) for g in pick))
    means.sort()
    return means[int(0.025 * reps)], means[min(reps - 1, int(0.975 * reps))]


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def summarize(rows: list[dict], folds: list[dict], rss: dict) -> dict:
    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in rows)]
    lengths = sorted({r["length"] for r in rows})
    acc, by_depth, calls = [], [], []
    for c in conds:
        for n in lengths:
            rs = [r for r in rows if r["condition"] == c and r["length"] == n]
            if not rs:
                continue
            ys = [float(r["correct"]) for r in rs]
            lo, hi = bootstrap_ci(ys)
            acc.append(dict(condition=c, length=n, accuracy=sum(ys) / len(ys), ci95=[lo, hi], questions=len(ys),
                            episodes=len({r["episode"] for r in rs})))
            first_half = [float(r["correct"]) for r in rs if r["quarter"] <= 2]
            if first_half:
                lo, hi = bootstrap_ci(first_half)
                acc[-1].update(first_half=sum(first_half) / len(first_half), first_half_ci95=[lo, hi],
                               first_half_questions=len(first_half))
            for qt in (1, 2, 3, 4):
                ys = [float(r["correct"]) for r in rs if r["quarter"] == qt]
                if ys:
                    lo, hi = bootstrap_ci(ys)
                    by_depth.append(dict(condition=c, length=n, quarter=qt, accuracy=sum(ys) / len(ys), ci95=[lo, hi],
                                         questions=len(ys)))
            calls.append(dict(condition=c, length=n,
                              trajectory_tokens=_median([r["trajectory_tokens"] for r in rs]),
                              latency_s_median=_median([r["latency_s"] for r in rs]),
                              latency_s_min=min(r["latency_s"] for r in rs),
                              prefilled_tokens_median=_median([r["prefilled_tokens"] for r in rs]),
                              prompt_tokens_median=(_median([r["prompt_tokens"] for r in rs])
                                                    if all("prompt_tokens" in r for r in rs) else None),
                              cache_positions_max=max(r["cache_positions"] for r in rs),
                              kv_bytes_max=max(r["kv_bytes"] for r in rs)))
    fold_summary = []
    for c in sorted({f["condition"] for f in folds}):
        for n in lengths:
            fs = [f for f in folds if f["condition"] == c and f["length"] == n]
            if fs:
                fold_summary.append(dict(condition=c, length=n, folds=len(fs),
                                         time_s_median=_median([f["time_s"] for f in fs]),
                                         ratio_to_prefill_median=_median([f["ratio_to_prefill"] for f in fs]),
                                         ratio_to_prefill_max=max(f["ratio_to_prefill"] for f in fs),
                                         span_median=_median([f["span"] for f in fs]),
                                         kept_median=_median([f["kept"] for f in fs])))
    held = []  # what the folds kept of each fact, and whether the fact was answered when kept or not
    for c in conds:
        for n in lengths:
            for qt in (1, 2, 3, 4):
                rs = [r for r in rows if r["condition"] == c and r["length"] == n and r["quarter"] == qt and "held_fact" in r]
                if not rs:
                    continue
                kept = [r for r in rs if r["held_fact"] >= 0.5]
                lost = [r for r in rs if r["held_fact"] < 0.5]
                held.append(dict(condition=c, length=n, quarter=qt, questions=len(rs),
                                 held_fact_mean=sum(r["held_fact"] for r in rs) / len(rs),
                                 held_quarter_mean=sum(r["held_quarter"] for r in rs) / len(rs),
                                 kept_questions=len(kept), accuracy_kept=sum(r["correct"] for r in kept) / len(kept) if kept else None,
                                 accuracy_lost=sum(r["correct"] for r in lost) / len(lost) if lost else None))
    return dict(accuracy=acc, by_depth=by_depth, calls=calls, folds=fold_summary, held=held,
                paired=paired(rows, conds, lengths), peak_rss_mb=rss)


PAIRED_REFERENCES = ("fold-recall", "fold-recall-all-ranked")  # the first recall, and BriefedWorker's


def paired(rows: list[dict], conds: list[str], lengths: list[int]) -> list[dict]:
    """Each condition against each reference (fold-recall and BriefedWorker's recall, else the first folding
    condition) on the questions both answered (same episode, same question): the accuracy difference with a
    paired 95% bootstrap interval over those questions, overall and on first-half facts, and the questions it
    won and lost against the reference. Conditions run on fewer episodes are compared there only; a pair of
    references is compared once, against the first."""
    refs = [c for c in PAIRED_REFERENCES if c in conds] or [c for c in FOLD_GUIDANCE if c in conds][:1]
    by = {(r["condition"], r["episode"], r["question"]): r for r in rows}
    out = []
    for i, ref in enumerate(refs):
        for n in lengths:
            ref_keys = [(e, q) for (c, e, q), r in by.items() if c == ref and r["length"] == n]
            for c in conds:
                keys = [k for k in ref_keys if (c, *k) in by] if c not in refs[:i + 1] else []
                if not keys:
                    continue
                d = [float(by[(c, *k)]["correct"]) - float(by[(ref, *k)]["correct"]) for k in keys]
                first = [x for x, k in zip(d, keys) if by[(ref, *k)]["quarter"] <= 2]
                episodes: dict[str, list[float]] = {}
                for x, (e, _) in zip(d, keys):
                    episodes.setdefault(e, []).append(x)
                out.append(dict(reference=ref, condition=c, length=n, questions=len(d),
                                episodes=len(episodes), diff=sum(d) / len(d), ci95=list(bootstrap_ci(d)),
                                episode_ci95=list(cluster_ci(list(episodes.values()))),
                                won=sum(x > 0 for x in d), lost=sum(x < 0 for x in d),  # the discordant pairs
                                first_half_diff=sum(first) / len(first) if first else None,
                                first_half_ci95=list(bootstrap_ci(first)) if first else None))
    return out


def targets(summary: dict) -> dict:
    """The issue's targets, computed from the summary (None where the run did not cover them)."""
    out: dict[str, Any] = {}
    calls = {(c["condition"], c["length"]): c for c in summary["calls"]}
    lengths = sorted({c["length"] for c in summary["calls"]})
    if len(lengths) >= 2:
        lo, hi = lengths[0], lengths[-1]
        for c in FOLD_GUIDANCE:
            if (c, lo) in calls and (c, hi) in calls:
                out[f"{c} latency {hi}/{lo}"] = calls[(c, hi)]["latency_s_median"] / calls[(c, lo)]["latency_s_median"]
                out[f"{c} prefilled tokens per call at {hi}"] = calls[(c, hi)]["prefilled_tokens_median"]
        rss = summary["peak_rss_mb"]
        if str(lo) in rss and str(hi) in rss:
            out[f"peak RSS {hi}/{lo}"] = rss[str(hi)] / rss[str(lo)]
    if summary["folds"]:
        out["fold time / span prefill, max"] = max(f["ratio_to_prefill_max"] for f in summary["folds"])
    for a in summary["accuracy"]:
        if a["condition"] in FOLD_GUIDANCE or a["condition"] == "truncated":
            if "first_half" in a:
                out[f"{a['condition']} first-half accuracy at {a['length']}"] = a["first_half"]
    return out


def markdown(result: dict) -> str:
    s, cfg = result["summary"], result["config"]
    done = cfg.get("episodes_done", {})
    load = result["load_average"]
    if load and isinstance(load[0], list):  # merged runs: the 1-minute load at the end of each run, as a range
        one = [x[0] for x in load]
        load = f"(1 minute, at the end of each of {len(one)} runs) {min(one):.2f} to {max(one):.2f}"
    lines = [f"Long-trajectory suite: window {cfg['window']} positions (reserve {cfg['reserve']}, recent window "
             f"{cfg['recent']}), lengths {cfg['lengths']} tokens, episodes done per length {done or cfg['episodes']} "
             f"(of {cfg['episodes']}) x 4 questions, split {cfg['split']}; machine load average "
             f"{load} (timings under that load). Regenerate: `python -m benchmarks.rlm_bench.long "
             f"--report results.json`.", "",
             "| condition | length | accuracy [95% CI] | first half [95% CI] | questions | median latency s | "
             "prefilled tokens per call | call prompt tokens | max cache positions | KV MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    calls = {(c["condition"], c["length"]): c for c in s["calls"]}
    for a in s["accuracy"]:
        c = calls[(a["condition"], a["length"])]
        fh = (f"{a['first_half']:.2f} [{a['first_half_ci95'][0]:.2f}, {a['first_half_ci95'][1]:.2f}]"
              if "first_half" in a else "-")
        lines.append(f"| {a['condition']} | {a['length']} | {a['accuracy']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] "
                     f"| {fh} | {a['questions']} | {c['latency_s_median']:.2f} | {c['prefilled_tokens_median']:.0f} | "
                     f"{'-' if c.get('prompt_tokens_median') is None else format(c['prompt_tokens_median'], '.0f')} | "
                     f"{c['cache_positions_max']} | {c['kv_bytes_max'] / 2**20:.1f} |")
    lines += ["", "Accuracy by depth quarter (1 = first quarter of the trajectory), 95% interval and questions:", "",
              "| condition | length | Q1 | Q2 | Q3 | Q4 |", "|---|---|---|---|---|---|"]
    depth = {(d["condition"], d["length"], d["quarter"]): d for d in s["by_depth"]}
    for a in s["accuracy"]:
        cells = []
        for qt in (1, 2, 3, 4):
            d = depth.get((a["condition"], a["length"], qt))
            cells.append(f"{d['accuracy']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}] ({d['questions']})" if d else "-")
        lines.append(f"| {a['condition']} | {a['length']} | " + " | ".join(cells) + " |")
    if s.get("paired"):
        lines += ["", "Paired on the same questions (difference of accuracy, condition minus reference, paired "
                  "bootstrap 95% interval over questions, and over episodes, which resamples an episode's questions "
                  "together; a condition run on fewer episodes is compared on those):"]
        for ref, group in itertools.groupby(s["paired"], key=lambda d: d["reference"]):
            lines += ["", f"Against {ref}:", "",
                      "| condition | length | episodes | questions | difference | episode-bootstrap interval | "
                      "won / lost | first-half difference |",
                      "|---|---|---|---|---|---|---|---|"]
            for d in group:
                fh = ("-" if d["first_half_diff"] is None else
                      f"{d['first_half_diff']:+.2f} [{d['first_half_ci95'][0]:+.2f}, {d['first_half_ci95'][1]:+.2f}]")
                lines.append(f"| {d['condition']} | {d['length']} | {d['episodes']} | {d['questions']} | "
                             f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | "
                             f"[{d['episode_ci95'][0]:+.2f}, {d['episode_ci95'][1]:+.2f}] | {d['won']} / {d['lost']} | {fh} |")
    if s["folds"]:
        lines += ["", "| folding condition | length | folds | median span | median kept | median fold s | "
                  "fold / span prefill (median, max) |", "|---|---|---|---|---|---|---|"]
        for f in s["folds"]:
            lines.append(f"| {f['condition']} | {f['length']} | {f['folds']} | {f['span_median']:.0f} | "
                         f"{f['kept_median']:.0f} | {f['time_s_median']:.2f} | {f['ratio_to_prefill_median']:.3f}, "
                         f"{f['ratio_to_prefill_max']:.3f} |")
    if s.get("held"):
        lines += ["", "What the folds kept at question time, by depth quarter: the share of the fact statement's tokens "
                  "still held (mean over layers and KV heads), the share of the whole quarter's tokens held (what an "
                  "indifferent selection would keep of the fact), and accuracy on questions whose fact is at least half "
                  "held against the rest:", "",
                  "| condition | length | quarter | questions | fact held | quarter held | fact >= half held | "
                  "accuracy if held | accuracy if not |", "|---|---|---|---|---|---|---|---|---|"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        for h in s["held"]:
            lines.append(f"| {h['condition']} | {h['length']} | Q{h['quarter']} | {h['questions']} | "
                         f"{h['held_fact_mean']:.3f} | {h['held_quarter_mean']:.3f} | {h['kept_questions']} | "
                         f"{fmt(h['accuracy_kept'])} | {fmt(h['accuracy_lost'])} |")
    lines += ["", "Peak RSS after the episodes of each length (MB, process-wide peak so far; episodes run length by "
              "length within each episode index): "
              + ", ".join(f"{k}: {v:.0f}" for k, v in s["peak_rss_mb"].items()), "", "Targets:", ""]
    lines += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in result["targets"].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    conds = [c for c in CONDITIONS if any(a["condition"] == c for a in s["accuracy"])]
    for c in conds:
        rs = [a for a in s["accuracy"] if a["condition"] == c]
        xs = [a["length"] for a in rs]
        ys = [a["accuracy"] for a in rs]
        err = [[a["accuracy"] - a["ci95"][0] for a in rs], [a["ci95"][1] - a["accuracy"] for a in rs]]
        axes[0].errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=c)
        cs = [x for x in s["calls"] if x["condition"] == c]
        axes[1].plot([x["trajectory_tokens"] for x in cs], [x["latency_s_median"] for x in cs], marker="o", label=c)
        axes[2].plot([x["trajectory_tokens"] for x in cs], [max(1, x["prefilled_tokens_median"]) for x in cs],
                     marker="o", label=c)
    axes[0].axhline(1 / 4, color="grey", ls=":", label="chance")
    for ax, title, ylabel in ((axes[0], "accuracy (95% bootstrap CI)", "accuracy"),
                              (axes[1], "per-call latency (under load)", "seconds"),
                              (axes[2], "prefilled tokens per call", "tokens")):
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("trajectory tokens")
        ax.set_ylabel(ylabel)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "long.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write(result: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result))
    return [str(out / "results.json"), str(out / "results.md"), plot(result, out)]


def call_case(lm: Any, tokens: int = 12400, seed: int = 7) -> dict:
    """The issue's motivating case with the default BriefedWorker (folding cache): a call on a trajectory of
    `tokens` tokens, then a call after one appended line (which must prefill only that line)."""
    from agents import BriefedWorker

    ep = make_long_episode(seed, tokens)
    traj = ep.text
    w = BriefedWorker(lm=lm, max_new_tokens=16)
    out: dict[str, Any] = {"trajectory_tokens": lm.count_tokens(traj), "load_average_start": os.getloadavg()}
    t0 = time.perf_counter()
    a1 = w.answer(ep.questions[0].question, traj)
    out["first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    a2 = w.answer(ep.questions[1].question, traj + "[orchestrator]\nOne more line.\n\n")
    out["second_call_s"] = time.perf_counter() - t0
    cache = w._caches[0]
    rate = cache.prefill_s / max(1, cache.prefilled_tokens)
    out.update(first=a1.model_dump(), second=a2.model_dump(), cache_positions=cache.length, cache_budget=cache.budget,
               prefill_s_per_token=rate, kv_bytes=cache.kv_bytes(),
               folds=[dict(f.model_dump(), ratio_to_prefill=f.time_s / (f.span * rate)) for f in cache.folds],
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, load_average_end=os.getloadavg())
    return out


# -- entry ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlm bench --suite long", description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--episodes", type=int, default=24, help="episodes per length (4 questions each)")
    p.add_argument("--first-episode", type=int, default=0,
                   help="index of the first episode (seeds follow it), to split one suite over processes and merge "
                        "the runs with --report")
    p.add_argument("--window", type=int, default=None, help="worker positions (default: the model's context)")
    p.add_argument("--reserve", type=int, default=None, help="positions left for the call (default: window // 16)")
    p.add_argument("--recent", type=int, default=None,
                   help="protected recent window (default: the FoldPolicy default, half the cache budget)")
    p.add_argument("--share", choices=["uniform", "recency"], default="uniform",
                   help="FoldPolicy.share of the folding conditions: kept positions split uniformly over the "
                        "trajectory folded so far, or the whole span competing (old folds halved at each fold)")
    p.add_argument("--conditions", nargs="+", default=CONDITIONS, choices=CONDITIONS)
    p.add_argument("--split", choices=list(SPLIT_SEED), default="heldout")
    p.add_argument("--summary-tokens", type=int, default=96)
    p.add_argument("--bm25-budget", type=int, default=None,
                   help="BM25 context tokens (default: a quarter of the cache budget, about the kept count of a "
                        "folded briefing call at tau 1)")
    p.add_argument("--recall-budget", type=int, default=None,
                   help="fold-recall: BM25 tokens recalled from the folded text per call (default: an eighth of the "
                        "cache budget)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="bench_out/long")
    p.add_argument("--report", metavar="JSON", nargs="+",
                   help="only rewrite results.md and long.png from a results.json (several, e.g. runs split by length "
                        "over processes: merged, written to --out)")
    p.add_argument("--readme", metavar="MARKDOWN",
                   help="with --report: also rewrite the long-suite block of this file (docs/benchmarks.md)")
    p.add_argument("--readme-block", metavar="NAME",
                   help="with --readme: the named block <!-- long-suite-NAME:start -->")
    p.add_argument("--call-case", type=int, metavar="TOKENS",
                   help="only the motivating case: two BriefedWorker calls on a trajectory of TOKENS tokens "
                        "(writes call_case.json)")
    return p


def run(args: argparse.Namespace, lm: Any = None, log=print, out: Path | None = None) -> dict:
    """Run the suite; with `out`, results.json/md/png are rewritten after every episode."""
    import torch

    import briefing
    from agents.workers.prompt import WorkerPrompt

    if args.first_episode < 0 or args.first_episode + args.episodes > SPLIT_SPAN:
        raise SystemExit(f"--first-episode {args.first_episode} is out of range; give an index from 0 with "
                         f"--first-episode + --episodes at most {SPLIT_SPAN} (the seeds of a split).")
    torch.set_num_threads(args.threads)
    lm = lm or briefing.load_model(args.model)
    window = args.window or lm.max_context
    if window > lm.max_context:
        raise SystemExit(f"--window {window} is past {lm.name}'s context length {lm.max_context}.")
    reserve = args.reserve or max(64, window // 16)
    setup = Setup(lm=lm, prompts=WorkerPrompt.for_model(lm), window=window, reserve=reserve,
                  recent=args.recent, summary_tokens=args.summary_tokens, share=args.share)
    setup.bm25_budget = args.bm25_budget or setup.budget // 4
    setup.recall_budget = args.recall_budget or setup.budget // 8
    rss: dict[str, float] = {}
    t_start = time.time()
    folding = [c for c in args.conditions if c in FOLD_GUIDANCE or c in STREAMING]
    cfg = dict(lengths=args.lengths, episodes=args.episodes, first_episode=args.first_episode, window=window, reserve=reserve,
               recent=setup.recent if setup.recent is not None else setup.budget // 2, keep=briefing.FoldPolicy().keep,
               share=args.share,
               conditions=args.conditions, split=args.split, model=lm.name, bm25_budget=setup.bm25_budget,
               summary_tokens=args.summary_tokens, threads=args.threads, recall_budget=setup.recall_budget)
    result: dict[str, Any] = {}
    for e in range(args.first_episode, args.first_episode + args.episodes):  # episode-major: a run stopped early still covers every length evenly
        for n in args.lengths:
            ep = make_long_episode(SPLIT_SEED[args.split] + e, n)  # episode e has one seed at every length
            log(f"[{time.time() - t_start:7.0f}s] {ep.id}: {lm.count_tokens(ep.text)} tokens")
            if folding:
                run_folding(setup, ep, folding, log)
            for c, fn in (("truncated", run_truncated), ("bm25", run_bm25), ("summary", run_summary),
                          ("plain", run_plain)):
                if c in args.conditions:
                    fn(setup, ep, log)
            rss[str(n)] = max(rss.get(str(n), 0.0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            summary = summarize(setup.rows, setup.folds, rss)
            result = dict(config=dict(cfg, episodes_done={str(m): len({r["episode"] for r in setup.rows
                                                                       if r["length"] == m}) for m in args.lengths}),
                          rows=setup.rows, folds=setup.folds, summary=summary, targets=targets(summary),
                          load_average=[round(x, 2) for x in os.getloadavg()], wall_s=round(time.time() - t_start, 1))
            if out is not None:  # partial results after every episode
                write(result, out)
    return result


def merge(results: list[dict]) -> dict:
    """One result from runs over disjoint lengths or conditions of the same settings (summary recomputed). A row
    (episode, condition) given by several runs is taken from the first, so a re-run placed first replaces an
    older one. Peak RSS per length is each run's own (the first run that has the length)."""
    base = dict(results[0])
    for other in results[1:]:
        for k in ("window", "reserve", "recent", "split", "model", "share", "keep", "recall_budget", "bm25_budget",
                  "summary_tokens"):
            if other["config"].get(k) != base["config"].get(k):
                raise SystemExit(f"--report: cannot merge runs with different {k}: {base['config'].get(k)} vs "
                                 f"{other['config'].get(k)}.")
    if len(results) > 1:
        cfg = dict(base["config"])
        cfg["lengths"] = sorted({n for r in results for n in r["config"]["lengths"]})
        cfg["conditions"] = [c for c in CONDITIONS if any(c in r["config"]["conditions"] for r in results)]
        seen, rows, folds = set(), [], []
        for r in results:  # a row (episode, condition, question) or fold already merged in is not counted twice
            keys = {(row["episode"], row["condition"]) for row in r["rows"]} - seen
            rows += [row for row in r["rows"] if (row["episode"], row["condition"]) in keys]
            folds += [f for f in r["folds"] if (f["episode"], f["condition"]) in keys]
            seen |= keys
        cfg["episodes_done"] = {str(n): len({row["episode"] for row in rows if row["length"] == n})
                                for n in cfg["lengths"]}  # runs over disjoint episodes of a length add up
        cfg["episodes"] = max(cfg["episodes_done"].values(), default=0)
        base.update(config=cfg, rows=rows, folds=folds,
                    load_average=[r["load_average"] for r in results], wall_s=sum(r["wall_s"] for r in results),
                    merged_from=len(results))
        rss = {}
        for r in results:  # a length's peak from the first run that has it, as rows are (duplicates: first wins)
            for k, v in r["summary"]["peak_rss_mb"].items():
                rss.setdefault(k, v)
    else:
        rss = base["summary"]["peak_rss_mb"]
    base["summary"] = summarize(base["rows"], base["folds"], rss)
    base["targets"] = targets(base["summary"])
    return base


README_START, README_END = "<!-- long-suite:start -->", "<!-- long-suite:end -->"


def readme_markers(block: str | None = None) -> tuple[str, str]:
    """The markers of the long-suite block in docs/benchmarks.md (`block`: a named one, e.g. another window)."""
    if not block:
        return README_START, README_END
    return f"<!-- long-suite-{block}:start -->", f"<!-- long-suite-{block}:end -->"


def update_readme(readme: Path, table: str, command: str, block: str | None = None) -> None:
    """Replace the block between the long-suite markers of `readme` with `table` (generated, never typed)."""
    start, end = readme_markers(block)
    replace_block(readme, start, end, f"<!-- generated by `{command}` -->\n{table}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        result = merge([json.loads(Path(p).read_text()) for p in args.report])
        out = Path(args.report[0]).parent if len(args.report) == 1 else Path(args.out)  # merged: into --out
        for path in write(result, out):
            print(path)
        if args.readme:
            sources = " ".join(args.report) + ("" if len(args.report) == 1 else f" --out {args.out}")
            block = f" --readme-block {args.readme_block}" if args.readme_block else ""
            command = f"python -m benchmarks.rlm_bench.long --report {sources} --readme {args.readme}{block}"
            update_readme(Path(args.readme), markdown(result), command, args.readme_block)
            print(args.readme)
        return 0
    if args.call_case:
        import briefing

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        case = call_case(briefing.load_model(args.model), args.call_case)
        (out / "call_case.json").write_text(json.dumps(case, indent=1, default=str))
        print(out / "call_case.json")
        return 0
    result = run(args, out=Path(args.out))
    for path in write(result, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
