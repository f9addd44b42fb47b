"""BriefedWorker: latent briefing, the trajectory handed over as a compacted KV cache.

Idea: "Latent Briefing" (share the orchestrator's state with workers at the representation level) on top of
Attention Matching KV compaction (Zweiger et al., "Fast KV Compaction via Attention Matching"), with task-guided
queries: the worker prompt of the current call decides which trajectory positions are kept (docs/design.md).

Per call (`brief`, then `answer` generates):
1. `cache.sync(head + header + trajectory)`: a persistent `briefing.TrajectoryCache` prefills only the text added
   since the previous call (the trajectory rendering is append-only); past its budget the cache folds in place
   (`briefing.FoldPolicy`), so no call re-prefills text already in the cache and no trajectory text is dropped;
2. once the cache has folded, `recall` brings back what the question needs before it (`agents.recall.RoutedRecall`,
   the default: BM25 chunks of the text where the question's words single one out and the worker's own ranking finds
   that chunk among its best blocks too; else BM25 chunks in a quarter of the budget (where the ranking overruled
   BM25, its best chunk alone, whole) and the blocks the worker's own hidden states find, their archived keys and
   values re-attached, over which step 3 then compacts too, and the blocks of the unfolded tail they rank best
   pinned; `TextRecall`: BM25 chunks only; `LatentRecall`: the blocks only);
3. `cache.compact(prompt, selector)`: with the default `AttentionMatching(tau=1.0)`, scores positions with the
   prompt's queries, keeps those above median + tau * MAD (and every re-attached or pinned position), fits beta and
   values; the cache is not touched;
4. `cache.remember(ctx)`: the call's queries become task guidance for later folds;
5. `briefing.generate` on the compacted cache.

Parameters:
    lm: `briefing.LoadedModel` (None loads the embedded SmolLM2-135M on first use)
    selector: the `briefing.Selector` that compacts the trajectory per call (None: `AttentionMatching(tau=1.0)`)
    max_new_tokens (>= 1), temperature (>= 0), stop: generation
    max_caches: trajectories kept warm at once, >= 1 (a new run starts a new cache; the least recently used goes)
    fold: `briefing.FoldPolicy` of the persistent cache (None: the default policy)
    cache_budget: positions the persistent cache keeps (None: the model's window minus `reserve` and the recall's
        budget)
    reserve: positions left for the call prompt and generation (prompt + max_new_tokens must fit)
    device, dtype: where the embedded default runs when `lm` is None ("auto": CUDA if there is one, bf16 there)
    recall: an `agents.recall.Recall` (None: no recall), by default `RoutedRecall()`. Its budget (`tokens`; None, the
        default: `agents.recall.default_recall_tokens`, an eighth of the cache's share of the window, 960 tokens at
        an 8k window, raised toward 384 as far as the fold leaves room) is taken out of the cache's when
        `cache_budget` is None, so a call with its recall fits the window (`layout`); with a `cache_budget`, recall
        gets what the reserve leaves after the prompt and max_new_tokens. A recall that needs an archive
        (`LatentRecall`, `RoutedRecall`) makes the worker's caches keep one
        (`briefing.ArchivePolicy`: int8 keys and values of what the folds compact away, at most 1 GiB per cache;
        on a model with sliding-window layers, whose recall re-prefills text, the block representatives alone).
Billed input tokens per call: kept positions + prompt tokens. `text_handoff_tokens`: tokens of the same text pasted
whole (what `TextWorker` bills).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from agents.recall import Recall, Recalled, RoutedRecall, default_recall_tokens, fold_room, recall_query
from agents.workers.base import BriefingStats, Worker, WorkerAnswer, check_generation
from agents.workers.local import Briefing, LocalModelMixin
from agents.workers.prompt import TRAJECTORY_HEADER
from briefing.options import check_int, check_type

if TYPE_CHECKING:  # briefing imports torch: only at run time, lazily
    import briefing

RETOKENISE_SLACK = 8  # a re-tokenised concatenation may differ from the sum of its parts by a few tokens


@dataclass
class BriefedWorker(LocalModelMixin, Worker):
    lm: briefing.LoadedModel | None = None
    selector: briefing.Selector | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    header: str = TRAJECTORY_HEADER
    max_caches: int = 2
    fold: briefing.FoldPolicy | None = None
    cache_budget: int | None = None
    reserve: int = 512
    recall: Recall | None = field(default_factory=RoutedRecall)
    device: str = "auto"
    dtype: str = "auto"
    name: str = "briefed"
    thread_safe: ClassVar[bool] = False   # one persistent KV cache: a batch goes through answer_batch
    _caches: list[briefing.TrajectoryCache] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "BriefedWorker"
        if self.lm is not None or self.selector is not None or self.fold is not None:
            import briefing

            check_type(owner, "lm", self.lm, briefing.LoadedModel, "a briefing.LoadedModel or None (the embedded "
                       "default)", none=True, error=ValueError)
            check_type(owner, "selector", self.selector, briefing.Selector, "a briefing.Selector (e.g. "
                       "briefing.AttentionMatching(tau=1.0)) or None for that default", none=True, error=ValueError)
            check_type(owner, "fold", self.fold, briefing.FoldPolicy, "a briefing.FoldPolicy or None for the default",
                       none=True, error=ValueError)
        check_generation(owner, self.max_new_tokens, self.temperature)
        check_int(owner, "max_caches", self.max_caches, low=1, error=ValueError)
        check_int(owner, "reserve", self.reserve, low=1, what="positions for the call", error=ValueError)
        check_int(owner, "cache_budget", self.cache_budget, low=1, none=True, error=ValueError)
        check_type(owner, "recall", self.recall, Recall, "an agents.recall.Recall (e.g. RoutedRecall()) or "
                   "None for no recall", none=True, error=ValueError)

    def make_selector(self) -> briefing.Selector:
        if self.selector is not None:
            return self.selector
        import briefing

        return briefing.AttentionMatching(tau=1.0)

    def _cache_for(self, text: str) -> briefing.TrajectoryCache:
        """The warm cache whose text is the longest prefix of `text` (or a new one), not yet synced."""
        import briefing

        self._caches = [c for c in self._caches if not c.broken]  # a cache an extend broke is rebuilt from the text
        best = max((c for c in self._caches if text.startswith(c.text)), key=lambda c: len(c.text), default=None)
        if best is None:
            fold = self.fold if self.fold is not None else briefing.FoldPolicy()
            agnostic = max(getattr(s, "agnostic", 0.0) for s in (self.make_selector(), fold.selector))
            lm = self.model()
            archive = self.recall.archive(lm) if self.recall is not None else None
            budget, reserve, _ = self.layout(lm)
            best = briefing.TrajectoryCache(lm, budget=budget, reserve=reserve, fold=fold,
                                            importance=agnostic > 0,   # scored only where a selector reads it
                                            archive=archive)
            self._caches.append(best)
            del self._caches[: max(0, len(self._caches) - self.max_caches)]
        else:   # most recently used last
            self._caches.remove(best)
            self._caches.append(best)
        return best

    def layout(self, lm: briefing.LoadedModel) -> tuple[int, int, int]:
        """How a call fills `lm`'s window: (the cache's budget, the cache's reserve, the recall's budget in tokens).
        The recall's budget is its `tokens`, or for None `agents.recall.default_recall_tokens` of the cache's share of
        the window (`cache_budget`, or the window less `reserve`): an eighth, raised toward 384 tokens as far as a
        quarter allows and, with no `cache_budget`, as far as the cache then still holds its fold's sink, recent
        window and reserve. With no `cache_budget` it is taken out of the cache's, so that a call with its recall still
        fits the window; with one, the recall gets what `reserve` leaves after the prompt and `max_new_tokens`."""
        share = self.cache_budget if self.cache_budget is not None else lm.max_context - self.reserve
        if self.recall is None:
            return share, self.reserve, 0
        if self.recall.tokens is not None:
            tokens = self.recall.tokens
        elif self.cache_budget is not None:
            tokens = default_recall_tokens(share)
        else:   # as much as the folding cache can give up
            import briefing

            fold = self.fold if self.fold is not None else briefing.FoldPolicy()
            tokens = default_recall_tokens(share, fold_room(share, self.reserve, fold.sink, fold.recent))
        if tokens >= share:
            import briefing

            raise briefing.BriefingError(
                f"BriefedWorker: recall's budget ({tokens} tokens) is not below the cache's share of the window "
                f"({share} positions). Lower the recall's tokens or raise cache_budget.")
        if self.cache_budget is not None:
            return share, self.reserve, tokens
        return share - tokens, self.reserve + tokens, tokens

    def _check_prompt(self, query: str) -> int:
        """The call prompt's token count; a clear error when it and max_new_tokens do not fit the reserve."""
        import briefing

        check_type(f"BriefedWorker {self.name!r}", "query", query, str, "a string")
        n_query = self.count(self.prompts().call_prompt(query))
        if n_query + self.max_new_tokens > self.reserve:
            raise briefing.BriefingError(
                f"The worker prompt ({n_query} tokens) plus max_new_tokens ({self.max_new_tokens}) exceed the cache "
                f"reserve ({self.reserve} positions). Shorten the query or raise BriefedWorker(reserve=...).")
        return n_query

    def sync(self, trajectory: str) -> briefing.TrajectoryCache:
        """Extend the cache of this trajectory to `trajectory` without a call (e.g. ahead of one, or to read what it
        holds); returns the cache."""
        text = self.prompts().cache_text(trajectory)
        cache = self._cache_for(text)
        cache.sync(text)
        return cache

    def observe(self, query: str, trajectory: str) -> None:
        """A call this worker does not answer (another worker did): sync the cache and remember the call's prompt
        as fold guidance, as `brief` would, without compacting."""
        self._check_prompt(query)
        self.sync(trajectory).observe(self.prompts().call_prompt(query))

    def brief(self, query: str, trajectory: str) -> Briefing:
        """Steps 1-4 of a call: the context the worker answers on, and what the cache did for it."""
        out = self.brief_batch([query], trajectory)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def brief_batch(self, queries: list[str], trajectory: str) -> list[Briefing | Exception]:
        """`brief` for several queries on one trajectory, sharing the work: one sync of the cache, one forward of all
        the call prompts over it and one batched fit (`briefing.compact_many`). Each query gets the context `brief`
        alone gives it; the cache remembers the queries in order, as calls one after another would. A query that
        fails (e.g. its prompt does not fit the reserve) gives its exception in its place and the rest stand. What
        the sync did (prefilled tokens, folds) is reported by the first query, as by the first of sequential calls."""
        from briefing import latent

        owner = f"BriefedWorker {self.name!r}"
        check_type(owner, "queries", queries, (list, tuple), "a list of query strings (one query: brief() or answer())")
        check_type(owner, "trajectory", trajectory, str, "a string")
        prompts = self.prompts()
        checked: list[int | Exception] = []
        for query in queries:
            try:
                checked.append(self._check_prompt(query))
            except Exception as e:   # this query's failure, in its place
                checked.append(e)
        if all(isinstance(c, Exception) for c in checked):
            return list(checked)  # type: ignore[arg-type]
        text = prompts.cache_text(trajectory)
        cache = self._cache_for(text)
        folds_before, prefilled_before = len(cache.folds), cache.prefilled_tokens
        cache.sync(text)
        head = len(prompts.cache_text(""))                                  # the ranges index the trajectory's text
        calls: list[tuple[int, str, int | None, Recalled, int]] = []       # (index, prompt, query tokens, recalled, n)
        recall_s: dict[int, float] = {}
        out: list[Briefing | Exception] = list(checked)  # type: ignore[arg-type]
        for i, (query, n_query) in enumerate(zip(queries, checked)):
            if isinstance(n_query, Exception):
                continue
            try:
                recalled = Recalled()
                if self.recall is not None:
                    # recall fills what the cache's reserve leaves after the prompt with its recall header, and
                    # generation, up to the recall's budget
                    room = min(self.layout(cache.lm)[2], cache.reserve - self.max_new_tokens
                               - self.count(prompts.call_prompt(recall_query(query, "."))) - RETOKENISE_SLACK)
                    t0 = time.perf_counter()
                    recalled = self.recall.recall(cache, query, room, prompt=prompts.call_prompt(query))
                    recalled = recalled.shifted(-head)
                    recall_s[i] = time.perf_counter() - t0
                prompt = prompts.call_prompt(recall_query(query, recalled))
                # the question guides the compaction, not the recalled text before it (the fit grows with queries^2)
                calls.append((i, prompt, n_query if recalled.text.strip() else None, recalled, n_query))
            except Exception as e:
                out[i] = e
        plain = [c for c in calls if c[3].blocks is None]   # one batched compaction; attached blocks: each its own
        contexts = dict(zip([c[0] for c in plain], self._compact(cache, [c[1] for c in plain], [c[2] for c in plain])))
        origins: dict[int, Any] = {}
        for i, prompt, q, recalled, _ in calls:
            if recalled.blocks is not None:
                try:
                    contexts[i], origins[i] = latent.compact_attached(cache, recalled.blocks, prompt,
                                                                      self.make_selector(), query_tokens=q)
                except Exception as e:
                    contexts[i] = e
        # what coverage() and held() read, as it is at this call (the cache moves on with the next one)
        held = cache.origins() if calls else None                           # [L, H, length]
        spans = None if cache.spans is None or not calls else list(cache.spans)
        first = True
        for i, prompt, _, recalled, n_query in calls:
            ctx = contexts[i]
            if isinstance(ctx, Exception):
                out[i] = ctx
                continue
            cache.remember(ctx)
            n_recalled = recalled.tokens or (self.count(recalled.text) if recalled.text.strip() else 0)
            stats = BriefingStats(
                kept=ctx.stats.kept, total=ctx.stats.original_length, compaction=ctx.stats,
                folds=cache.folds[folds_before:] if first else [],
                prefilled_tokens=cache.prefilled_tokens - prefilled_before if first else 0,
                cache_positions=cache.length, trajectory_tokens=cache.tokens, recalled_tokens=n_recalled,
                recalled=recalled.ranges, recall=recalled.how if recalled else "", recall_s=recall_s.get(i, 0.0),
                lookup_s=recalled.lookup_s,
                archive_bytes=cache.archive.nbytes() if cache.archive is not None else 0, pinned=recalled.pinned)
            first = False
            out[i] = Briefing(context=ctx, query=queries[i], input_tokens=ctx.stats.kept + self.count(prompt),
                              text_handoff_tokens=cache.tokens + n_query, stats=stats, recalled=recalled, cache=cache,
                              offset=head, origins=origins.get(i), held_origins=held, spans=spans,
                              chars=len(trajectory))
        return out

    def _compact(self, cache: briefing.TrajectoryCache, prompts: list[str],
                 query_tokens: list[int | None]) -> list[briefing.CompactedCache | Exception]:
        """One batched compaction of the prompts; if the batch fails, each prompt alone, so that a failure stays
        with the prompt that caused it."""
        if not prompts:
            return []
        try:
            return list(cache.compact_many(prompts, selector=self.make_selector(), query_tokens=query_tokens))
        except Exception:
            if len(prompts) == 1:
                raise
        out: list[briefing.CompactedCache | Exception] = []
        for prompt, q in zip(prompts, query_tokens):
            try:
                out.append(cache.compact(prompt, selector=self.make_selector(), query_tokens=q))
            except Exception as e:
                out.append(e)
        return out

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        out = self.answer_batch([query], trajectory)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def answer_batch(self, queries: list[str], trajectory: str) -> list[WorkerAnswer | Exception]:
        """Several queries on one trajectory as one batch: `brief_batch` (one sync, one scoring forward, one batched
        fit), then one batched decode (`briefing.generate_batch`). Greedy answers equal those of `answer` one query
        after another; answers in query order, a failed query's exception in its place. latency_s: the batch's."""
        import briefing

        t0 = time.monotonic()
        briefs = self.brief_batch(queries, trajectory)
        ready = [b for b in briefs if isinstance(b, Briefing)]
        try:
            results = briefing.generate_batch([b.context for b in ready], self.gen_config())
        except Exception:
            if len(ready) <= 1:
                raise
            results = [b.generate(self.gen_config()) for b in ready]
        latency = time.monotonic() - t0
        done = iter(results)
        out: list[WorkerAnswer | Exception] = []
        for b in briefs:
            if isinstance(b, Exception):
                out.append(b)
                continue
            r = next(done)
            out.append(WorkerAnswer(text=r.text.strip(), worker=self.name, input_tokens=b.input_tokens,
                                    output_tokens=len(r.token_ids), text_handoff_tokens=b.text_handoff_tokens,
                                    latency_s=latency, briefing=b.stats))
        return out

    def fork(self, **changes: Any) -> BriefedWorker:
        """A worker with `changes` (e.g. another fold policy, cache budget, reserve, recall or selector) that starts
        from copies of this worker's warm caches: branches that share one prefill of the trajectory so far. A cache's
        fold policy, budget and reserve follow the new worker's; what the caches hold and remember is kept. Another
        model (`lm`) starts from no caches: its own are built from the trajectory's text."""
        import dataclasses

        other = dataclasses.replace(self, **changes)
        if changes.get("lm", self.lm) is not self.lm or changes.get("header", self.header) != self.header:
            other._caches, other._prompts = [], None   # another model or header: its own caches, from the text
            return other
        fold = other.fold if "fold" in changes else None
        resized = bool({"cache_budget", "reserve", "recall", "fold"} & set(changes))   # the fold sets the recall's room
        lm = self._caches[0].lm if self._caches else None
        need = other.recall.archive(lm) if other.recall is not None and lm is not None else None
        archived = need is not None
        # a cache without the archive the new recall needs (or with representatives alone where it needs keys and
        # values, or without the token states it ranks by) is not carried over: it is rebuilt from the text; one whose
        # archive the new recall does not read drops it (no more blocks archived, nor representatives read)
        other._caches = []
        for c in self._caches:
            if archived and (c.archive is None or (need.budget_bytes and not c.archive.policy.budget_bytes)
                             or (need.token_states and not c.archive.policy.token_states)):
                continue
            budget, reserve, _ = other.layout(c.lm) if resized else (None, None, 0)   # the new worker's layout
            other._caches.append(c.clone(fold=fold, budget=budget, reserve=reserve))
            if archived and not need.budget_bytes and c.archive.policy.budget_bytes:   # the representatives alone
                other._caches[-1].archive.representatives_only()
        for c in other._caches if not archived else ():
            c.archive = None
        other._prompts = getattr(self, "_prompts", None)
        return other

    def reset(self) -> None:
        self._caches.clear()

    def describe(self) -> dict[str, Any]:
        fold = self.fold
        return {"name": self.name, **self.describe_model(),
                "selector": repr(self.selector) if self.selector is not None else "AttentionMatching(tau=1.0)",
                "fold": repr(fold) if fold is not None else "FoldPolicy()", "cache_budget": self.cache_budget,
                "reserve": self.reserve, "recall": repr(self.recall)}
