"""Worker conditions of the benchmark and the per-call metrics, all through the agents' worker prompt.

Every condition answers the same final question with the same `agents.workers.prompt.WorkerPrompt`
format (cache text = chat head + trajectory header + trajectory; per-call prompt = rest of the system
turn + query + assistant opening):

- plain:   `briefing.plain_context` on `WorkerPrompt.plain_prompt(query)` (no trajectory);
- full:    `KeepAll` on the trajectory cache (numerically the same as the pasted text in the same
           position, without prefilling it a second time); this is the reference for fidelity;
- text:    optional, the pasted text prompt on `plain_context` (a check that it equals `full`);
- am_tau*: `AttentionMatching(tau)` (latent briefing), am_b*: `AttentionMatching(ratio)`;
- topk/random/recent at the same budgets and at the kept count of each am_tau run (matched);
- summary: the worker model summarises the trajectory (on the full cache), then answers on plain
           context with the summary in the trajectory slot (its input tokens + the summary cost);
- bm25:    top BM25 chunks of the trajectory (rank_bm25), pasted as text in the trajectory slot.

Accuracy: argmax over candidates of the summed log-probability of the candidate value's tokens after a
shared answer lead-in that restates the question's key: the continuation is " " + lead-in + " " +
candidate, e.g. " The safe combination is 4417", and only the value's tokens (after the lead-in) are
scored. The lead-in comes from the question, so it carries no information about the value; the
candidates of an episode have the same token count (4-digit codes, or single-token words, see
`benchmarks.rlm_bench.episodes`), so the sum needs no length normalisation. Plus greedy generation (16 tokens) with a
case-insensitive substring match. KL vs full: on the whole continuation with the true answer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import briefing
from agents.recall import bm25_chunks
from briefing.metrics import answer_kl
from briefing.options import check_int, check_number

QUERY = "Using the trajectory above, answer with the value only. {question}"
SUMMARY_QUERY = ("Summarise the trajectory above in at most three sentences. Keep every code, name, label and "
                 "hint it mentions, with what each belongs to.")
GEN = briefing.GenerationConfig(max_new_tokens=16, temperature=0.0, stop=["\n"])


def kv_bytes(lm: Any, kept: int) -> int:
    """Bytes of kept trajectory K+V held for a call: layers x kv_heads x kept x head_dim x 2 x 4 (fp32)."""
    cfg = lm.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    return int(lm.num_layers * heads * kept * head_dim * 2 * 4)


def continuation(prefix: str, candidate: str) -> str:
    return f" {prefix} {candidate}" if prefix else " " + candidate


def choose(ctx: Any, candidates: list[str], prefix: str = "") -> tuple[str, list[float]]:
    """Argmax of the summed log-prob of the candidate's tokens after the shared answer lead-in (see module doc)."""
    import torch

    n_prefix = len(ctx.lm.encode(" " + prefix)) if prefix else 0
    scores = []
    for c in candidates:
        ids, lp = briefing.token_logprobs(ctx, continuation(prefix, c))
        tok = lp.gather(-1, torch.tensor(ids)[:, None])[:, 0]
        scores.append(float(tok[n_prefix:].sum() if len(ids) > n_prefix else tok.sum()))
    best = max(range(len(candidates)), key=lambda i: scores[i])
    return candidates[best], scores


def choose_with_logprobs(ctx: Any, candidates: list[str], prefix: str, answer: str) -> tuple[str, list[float], Any]:
    """`choose`, plus the log-probs [n_tokens, vocab] of the true answer's continuation (for the answer KL,
    so the KL costs no extra forward)."""
    import torch

    n_prefix = len(ctx.lm.encode(" " + prefix)) if prefix else 0
    scores, answer_lp = [], None
    for c in candidates:
        ids, lp = briefing.token_logprobs(ctx, continuation(prefix, c))
        tok = lp.gather(-1, torch.tensor(ids)[:, None])[:, 0]
        scores.append(float(tok[n_prefix:].sum() if len(ids) > n_prefix else tok.sum()))
        if c == answer:
            answer_lp = lp
    best = max(range(len(candidates)), key=lambda i: scores[i])
    return candidates[best], scores, answer_lp


@dataclass
class Spec:
    name: str          # condition name (row key)
    method: str        # family: plain/full/text/latent_briefing/topk/random/recent/summary/bm25
    selector: Any = None
    param: Any = None
    matched_to: str | None = None


class EpisodeRunner:
    """All conditions on one episode: one trajectory cache, prefilled once."""

    def __init__(self, lm: Any, prompts: Any, episode: Any, with_generation: bool | set[str] = True,
                 importance: bool = False) -> None:
        self.lm, self.prompts, self.ep = lm, prompts, episode
        self.with_generation = with_generation  # True, False, or the set of condition names to generate for
        self.query = QUERY.format(question=episode.question)
        self.call_prompt = prompts.call_prompt(self.query)
        t0 = time.perf_counter()
        self.cache = briefing.TrajectoryCache(lm, prompts.cache_text(episode.trajectory), fold=None,
                                              importance=importance)
        self.importance_s = self.cache.importance_s     # scored for the global allocation's conditions only
        self.prefill_s = time.perf_counter() - t0 - self.importance_s
        self.T = self.cache.length
        self.n_prompt = lm.count_tokens(self.call_prompt)
        self.full_input = self.T + self.n_prompt
        t0 = time.perf_counter()
        self.full = self.cache.compact(self.call_prompt, briefing.KeepAll())
        self.full_build_s = time.perf_counter() - t0
        self.full_choice, _ = choose(self.full, episode.candidates, episode.answer_prefix)

    def base_row(self) -> dict[str, Any]:
        e = self.ep
        return {"episode": e.id, "seed": e.seed, "target_tokens": e.target_tokens, "trajectory_tokens": self.T,
                "depth": e.depth, "fact_offset": e.fact_offset, "carrier": e.fact_carrier, "kind": e.kind,
                "n_distractors": e.n_distractors, "answer": e.answer, "full_input_tokens": self.full_input,
                "prefill_s": self.prefill_s, "importance_s": self.importance_s}

    def common_row(self, spec: Spec, choice: str, input_tokens: int, kept: int, overhead_s: float) -> dict[str, Any]:
        """The fields every runner's row has: the condition, what it kept and billed, and its choice."""
        e = self.ep
        return self.base_row() | {
            "condition": spec.name, "method": spec.method, "param": spec.param, "matched_to": spec.matched_to,
            "kept": kept, "kept_ratio": kept / self.T if self.T else 0.0, "input_tokens": input_tokens,
            "input_ratio": input_tokens / self.full_input, "kv_bytes": kv_bytes(self.lm, kept),
            "choice": choice, "correct": choice == e.answer, "agree_full": choice == self.full_choice,
            "overhead_s": overhead_s,
        }

    def finish(self, row: dict, ctx: Any, cfg: Any, extra: dict | None) -> dict:
        """Decode with `cfg` (None: no decode) for the latency and a generation check, then add `extra`."""
        gen_s = 0.0
        if cfg is not None:
            out = briefing.generate(ctx, cfg)
            gen_s = out.time_s
            row["generated"] = out.text.strip()
            row["gen_match"] = self.ep.answer.lower() in out.text.lower()
        row["generate_s"] = gen_s
        row["latency_s"] = row["overhead_s"] + gen_s
        if extra:
            row.update(extra)
        return row

    def score(self, spec: Spec, ctx: Any, input_tokens: int, kept: int, overhead_s: float,
              extra: dict | None = None) -> dict:
        e = self.ep
        choice, _ = choose(ctx, e.candidates, e.answer_prefix)
        row = self.common_row(spec, choice, input_tokens, kept, overhead_s)
        row["kl"] = 0.0 if spec.method == "full" else answer_kl(self.full, ctx, continuation(e.answer_prefix, e.answer))
        gen = self.with_generation
        return self.finish(row, ctx, GEN if gen is True or (gen and spec.name in gen) else None, extra)

    def run_compaction(self, spec: Spec) -> dict:
        t0 = time.perf_counter()
        ctx = self.cache.compact(self.call_prompt, spec.selector)
        dt = time.perf_counter() - t0
        st = ctx.stats
        extra = {"compaction": {k: v for k,
                                v in st.model_dump().items() if k.startswith("time_") or k.startswith("fit")},
                 "fallback": st.fallback}
        return self.score(spec, ctx, int(st.kept) + self.n_prompt, int(st.kept), dt, extra)

    def run_plain(self, spec: Spec) -> dict:
        t0 = time.perf_counter()
        prompt = self.prompts.plain_prompt(self.query)
        ctx = briefing.plain_context(self.lm, prompt)
        return self.score(spec, ctx, len(ctx.prompt_ids), 0, time.perf_counter() - t0)

    def run_full(self, spec: Spec) -> dict:
        return self.score(spec, self.full, self.full_input, self.T, self.full_build_s)

    def run_text(self, spec: Spec) -> dict:
        t0 = time.perf_counter()
        ctx = briefing.plain_context(self.lm, self.prompts.text_prompt(self.ep.trajectory, self.query))
        return self.score(spec, ctx, len(ctx.prompt_ids), self.T, time.perf_counter() - t0)

    def run_pasted(self, spec: Spec, text: str, extra: dict, t_start: float) -> dict:
        prompt = self.prompts.text_prompt(text, self.query)
        ctx = briefing.plain_context(self.lm, prompt)
        n = len(ctx.prompt_ids)
        return self.score(spec, ctx, n, 0, time.perf_counter() - t_start, extra | {"pasted_tokens": n - self.n_prompt})

    def run_summary(self, spec: Spec) -> dict:
        t0 = time.perf_counter()
        sprompt = self.prompts.call_prompt(SUMMARY_QUERY)
        sctx = self.cache.compact(sprompt, briefing.KeepAll())
        out = briefing.generate(sctx, briefing.GenerationConfig(max_new_tokens=int(spec.param or 64), temperature=0.0,
                                                                stop=["\n\n"]))
        summary = out.text.strip()
        extra = {"summary": summary, "summary_cost_input_tokens": self.T + len(sctx.prompt_ids),
                 "summary_cost_output_tokens": len(out.token_ids), "summary_s": out.time_s,
                 "summary_has_answer": self.ep.answer.lower() in summary.lower()}
        return self.run_pasted(spec, "[summary of the trajectory]\n" + summary + "\n", extra, t0)

    def run_bm25(self, spec: Spec) -> dict:
        t0 = time.perf_counter()
        text = bm25_chunks(self.ep.trajectory, self.ep.question, int(spec.param), self.lm).text
        return self.run_pasted(spec, text, {"bm25_has_answer": self.ep.answer in text}, t0)

    def run(self, spec: Spec) -> dict:
        fn = {"plain": self.run_plain, "full": self.run_full, "text": self.run_text, "summary": self.run_summary,
              "bm25": self.run_bm25}.get(spec.method, self.run_compaction)
        return fn(spec)


def episode_rows(lm: Any, prompts: Any, episode: Any, taus: list[float], budgets: list[float], *,
                 matched: bool = True, text_check: bool = False, summary: bool = True, bm25_tokens: int = 150,
                 with_generation: bool | set[str] = True, seed: int = 0,
                 matched_taus: list[float] | None = None) -> list[dict]:
    r = EpisodeRunner(lm, prompts, episode, with_generation)
    specs = [Spec("plain", "plain"), Spec("full", "full")]
    if text_check:
        specs.append(Spec("text", "text"))
    rows = [r.run(s) for s in specs]
    for tau in taus:
        row = r.run(Spec(f"am_tau{tau:g}", "latent_briefing", briefing.AttentionMatching(tau=tau), tau))
        rows.append(row)
        if matched and (matched_taus is None or tau in matched_taus):
            k = max(1, row["kept"])
            for name, sel in (("topk", briefing.TopK(tokens=k)), ("random", briefing.RandomKeep(tokens=k, seed=seed)),
                              ("recent", briefing.RecentWindow(tokens=k))):
                rows.append(r.run(Spec(f"{name}@am_tau{tau:g}", name, sel, k, matched_to=f"am_tau{tau:g}")))
    for b in budgets:
        for name, sel in (("latent_briefing", briefing.AttentionMatching(ratio=b)), ("topk", briefing.TopK(ratio=b)),
                          ("random", briefing.RandomKeep(ratio=b, seed=seed)), ("recent",
                                                                                briefing.RecentWindow(ratio=b))):
            label = "am" if name == "latent_briefing" else name
            rows.append(r.run(Spec(f"{label}_b{b:g}", name, sel, b, matched_to=f"budget{b:g}")))
    if summary:
        rows.append(r.run(Spec("summary", "summary", param=64)))
    if bm25_tokens:
        rows.append(r.run(Spec(f"bm25_{bm25_tokens}", "bm25", param=bm25_tokens)))
    return rows


# --- the family suite (issue 13): fair baselines, protected recent window, BM25 + briefing ----------------------

@dataclass(kw_only=True)
class ProtectedAttentionMatching(briefing.AttentionMatching):
    """Attention Matching that always keeps a protected set: the last `recent` trajectory positions (like
    SnapKV's observation window, Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before
    Generation") and any given positions `keep` (e.g. the tokens of the top BM25 chunks).

    tau mode: the tau rule's own count plus the protected positions; ratio/tokens mode: that many in all (the
    protected positions first, the best-scored fill the rest). A bench condition, not a library selector.
    """

    recent: int = 0
    keep: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("ProtectedAttentionMatching", "recent", self.recent, low=0, what="positions", error=ValueError)

    def select(self, layers: int, kv_heads: int, length: int, scores: Any, *, count: int | None = None,
               device: Any = None) -> Any:
        import torch

        from briefing.selection.base import broadcast, smooth, top_positions

        scores = self.score(scores)
        shared = smooth(scores.shared, self.smooth_kernel)                       # [T]
        prot = torch.zeros(length, dtype=torch.bool, device=shared.device)        # [T]
        prot[: min(self.sinks, length)] = True
        if self.recent:
            prot[max(0, length - self.recent):] = True
        if self.keep:
            idx = torch.tensor([p for p in self.keep if 0 <= p < length], dtype=torch.long, device=shared.device)
            prot[idx] = True
        n_prot = int(prot.sum())
        own = self.count_scored(shared) if count is None else count
        t = min(length, own + n_prot if self.tau is not None and count is None else max(own, n_prot))
        if self.per_head:
            per_head = smooth(scores.per_head, self.smooth_kernel).clone()        # [L, H, T]
            per_head[..., prot] = float("inf")
            return top_positions(per_head, t, 0)
        shared = shared.clone()
        shared[prot] = float("inf")
        return broadcast(top_positions(shared, t, 0), layers, kv_heads)


# A question with no content: the same prompt with it in place of the worker's question guides the contrast's
# baseline (what any question attends to: the sinks, the recent end, the prompt's own format).
NEUTRAL_QUESTION = "What does the text say?"


@dataclass(kw_only=True)
class ContrastAttentionMatching(briefing.AttentionMatching):
    """Attention Matching whose guidance is the question's attention contrasted with a neutral question's (issue 28,
    round 33; a bench condition, not a library selector): per (layer, KV head) and position,
    score = (s_q + e) / (s_n + e)^contrast with e = 1 / T (uniform attention), so the positions this question
    attends to more than a question with no content does rank first (the shared score, which the tau rule counts
    on, is contrasted the same way: the ratio of the layer-and-head means). `baseline`: the neutral prompt's
    `Scores` over the same cache (`FamilyRunner.neutral_scores`). contrast: the exponent, >= 0 (0: the guidance)."""

    contrast: float = 1.0
    baseline: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("ContrastAttentionMatching", "contrast", self.contrast, low=0,
                     what="exponent of the neutral question's attention (0: off)", error=ValueError)

    def score(self, scores: Any) -> Any:
        import torch

        if self.baseline is None:
            raise ValueError("ContrastAttentionMatching: baseline is None; give the neutral prompt's Scores "
                             "(FamilyRunner.neutral_scores makes them)")
        e = 1.0 / scores.per_head.shape[-1]                                       # uniform attention over T

        def contrasted(q: torch.Tensor, n: torch.Tensor) -> torch.Tensor:     # (q + e) / (n + e)^c, same shape
            return torch.exp(torch.log(q + e) - self.contrast * torch.log(n.to(q) + e))

        return replace(scores, per_head=contrasted(scores.per_head, self.baseline.per_head),   # [L, H, T]
                       shared=contrasted(scores.shared, self.baseline.shared))                # [T]


@dataclass(kw_only=True)
class _Capture(briefing.AttentionMatching):
    """Keeps the guidance `Scores` it is given (the neutral prompt's, for the contrast's baseline)."""

    captured: Any = field(default=None, repr=False, compare=False)

    def score(self, scores: Any) -> Any:
        self.captured = scores
        return scores


def bm25_positions(lm: Any, cache_text: str, offset: int, trajectory: str, query: str, k_tokens: int,
                   chunk_words: int = 60) -> list[int]:
    """Cache positions (token indices of `cache_text`, the trajectory starting at character `offset`) of the
    top BM25 chunks of the trajectory, up to `k_tokens`."""
    spans = [(offset + a, offset + b) for a, b in bm25_chunks(trajectory, query, k_tokens, lm, chunk_words).ranges]
    enc = lm.tokenizer(cache_text, add_special_tokens=False, return_offsets_mapping=True)
    return [p for p, (a, b) in enumerate(enc["offset_mapping"]) if any(a < e and b > s for s, e in spans)]


DECODE = briefing.GenerationConfig(max_new_tokens=12, temperature=0.0, stop=[])  # fixed-length decode: latency


def choice_kl(ref_scores: list[float], scores: list[float]) -> float:
    """KL(full || condition) of the choice distributions (softmax of the candidates' summed log-probs)."""
    import math

    def soft(xs: list[float]) -> list[float]:
        m = max(xs)
        e = [math.exp(x - m) for x in xs]
        return [v / sum(e) for v in e]

    p, q = soft(ref_scores), soft(scores)
    return float(sum(a * (math.log(a) - math.log(max(b, 1e-300))) for a, b in zip(p, q, strict=True) if a > 0))


class FamilyRunner(EpisodeRunner):
    """All conditions of the family suite on one episode: one trajectory prefill shared by every condition.

    `full` is the text handoff with prefix-KV reuse (the trajectory prefilled once, then only the call prompt
    is forwarded: what vLLM/SGLang prefix caching gives); `text_cold_s` adds that prefill. Latency of every
    condition = its build time (prompt forward, compaction, BM25 or summary) + a fixed 12-token greedy decode.
    """

    def __init__(self, lm: Any, prompts: Any, episode: Any, timing: bool = True, importance: bool = False) -> None:
        super().__init__(lm, prompts, episode, with_generation=False, importance=importance)
        self.timing = timing
        _, self.full_scores, self.full_lp = choose_with_logprobs(self.full, episode.candidates, episode.answer_prefix,
                                                                 episode.answer)

    def base_row(self) -> dict[str, Any]:
        return super().base_row() | {"family": self.ep.family, "n_candidates": len(self.ep.candidates)}

    def score(self, spec: Spec, ctx: Any, input_tokens: int, kept: int, overhead_s: float,
              extra: dict | None = None) -> dict:
        e = self.ep
        choice, scores, lp = choose_with_logprobs(ctx, e.candidates, e.answer_prefix, e.answer)
        kl = float((self.full_lp.exp() * (self.full_lp - lp)).sum(-1).mean())  # = briefing.metrics.answer_kl
        row = self.common_row(spec, choice, input_tokens, kept, overhead_s) | {
            "choice_kl": 0.0 if spec.method == "full" else choice_kl(self.full_scores, scores),
            "kl": 0.0 if spec.method == "full" else max(0.0, kl), "text_cold_s": self.prefill_s + self.full_build_s,
        }
        return self.finish(row, ctx, DECODE if self.timing else None, extra)

    def run_bm25(self, spec: Spec) -> dict:
        t0 = time.perf_counter()
        k = max(16, round(float(spec.param) * self.T))
        text = bm25_chunks(self.ep.trajectory, self.ep.question, k, self.lm).text
        return self.run_pasted(spec, text, {"bm25_has_answer": self.ep.answer in text}, t0)

    def neutral_scores(self) -> tuple[Any, float]:
        """(the neutral question's guidance `Scores` over this episode's cache, the seconds its prompt pass took),
        computed once per episode: the worker prompt built with `NEUTRAL_QUESTION` in place of the question."""
        if not hasattr(self, "_neutral"):
            t0 = time.perf_counter()
            capture = _Capture(tokens=1, fit=None)   # the scores come before selection: keep one position
            self.cache.compact(self.prompts.call_prompt(QUERY.format(question=NEUTRAL_QUESTION)), capture)
            self._neutral = (capture.captured, time.perf_counter() - t0)
        return self._neutral

    def run_contrast(self, name: str, size: dict, contrast: float, param: float, matched_to: str | None) -> dict:
        """A `ContrastAttentionMatching` condition: the neutral question's scores over the same cache (once per
        episode; its seconds in the row's `neutral_s`, added to its overhead and latency), then the selection."""
        baseline, neutral_s = self.neutral_scores()
        sel = ContrastAttentionMatching(**size, contrast=contrast, baseline=baseline)
        row = self.run(Spec(name, "latent_briefing_contrast", sel, param, matched_to=matched_to))
        row["neutral_s"] = neutral_s
        row["overhead_s"] += neutral_s
        row["latency_s"] += neutral_s
        return row

    def run_bm25_briefing(self, spec: Spec, tau: float, smooth_kernel: int, bm25_ratio: float, budget: float) -> dict:
        t0 = time.perf_counter()
        cache_text = self.prompts.cache_text(self.ep.trajectory)
        offset = len(cache_text) - len(self.ep.trajectory)
        keep = bm25_positions(self.lm, cache_text, offset, self.ep.trajectory, self.ep.question,
                              max(16, round(bm25_ratio * self.T)))
        sel = ProtectedAttentionMatching(ratio=budget, smooth_kernel=smooth_kernel, keep=tuple(keep))
        ctx = self.cache.compact(self.call_prompt, sel)
        st = ctx.stats
        return self.score(spec, ctx, int(st.kept) + self.n_prompt, int(st.kept), time.perf_counter() - t0,
                          {"bm25_positions": len(keep), "fallback": st.fallback})


def importance_pick(allocation: str, share: float | None = None, **size: Any) -> briefing.Selector:
    """Issue 28's opt-in selections: "global", the selection dev split's pick (`benchmarks.selection_bench.PICK`);
    "hybrid", round 7's (`HYBRID`). share: the importance's share of the kept positions (`agnostic`) instead of the
    selector's own 0.9 (None: its own); nothing else of the selector changes."""
    from benchmarks.selection_bench import HYBRID, PICK, VARIANTS

    selector = VARIANTS[{"global": PICK, "hybrid": HYBRID}[allocation]](**size)
    return selector if share is None else replace(selector, agnostic=share)


@dataclass(frozen=True)
class SuiteConfig:
    """Conditions of the family suite. tau, smooth_kernel and recent were chosen on the development seeds
    (`rlm bench --sweep`, docs/results/rlm_bench/dev_sweep.json) and are reported on the held-out seeds."""

    tau: float = 1.0
    smooth_kernel: int = 5          # tau mode
    ratio_smooth_kernel: int = 9    # fixed-ratio mode (am_b*, am_recent_b*, bm25+am_b*)
    recent: int = 32
    budget: float = 0.1
    budget_hi: float = 0.2
    bm25_ratio: float = 0.1
    summary_tokens: int = 64
    summary: bool = True
    timing: bool = True
    # dev sweep: extra AM variants (tau, smooth_kernel, recent, budget or None); rows named sweep_*
    sweep: tuple[tuple[float, int, int, float | None], ...] = ()
    # issue 28's opt-in allocation of the importance at tau and at the budget: "global" (amg_tau*, amg_b*) or "hybrid"
    # (amh_tau*, amh_b*); "": neither
    importance: str = ""
    # the importance's share of the kept positions in those conditions (None: the selector's own, 0.9)
    importance_share: float | None = None
    # the contrast's exponent in the amc_tau* / amc_b* conditions (ContrastAttentionMatching); None: neither
    contrast: float | None = None
    # the conditions to run (names of `family_plan`; full text always runs, the reference); (): every one
    conditions: tuple[str, ...] = ()

    def run(self, lm: Any, prompts: Any, spec: Any) -> tuple[dict, list[dict]]:
        """(episode summary, rows) of one family episode (what the runner calls)."""
        ep = spec.build(count_tokens=lm.count_tokens)
        return ep.summary(), family_rows(lm, prompts, ep, self, seed=spec.seed)


def family_plan(r: Any, cfg: SuiteConfig, seed: int = 0) -> list[tuple[str, Any]]:
    """The family suite's conditions in run order: (name, a function that runs it on the `FamilyRunner` r and
    returns its row). Nothing runs until a function is called, so `[name for name, _ in family_plan(None, cfg)]`
    names the conditions of a config. The matched rows (`*@am_tau*`) keep the count of the am_tau row, which
    runs first whenever one of them is asked for."""
    plan: list[tuple[str, Any]] = [("plain", lambda: r.run(Spec("plain", "plain"))),
                                   ("full", lambda: r.run(Spec("full", "full")))]
    am = f"am_tau{cfg.tau:g}"
    done: dict[str, dict] = {}

    def am_row() -> dict:   # once per episode, whether asked for itself or for a matched row's count
        if am not in done:
            done[am] = r.run(Spec(am, "latent_briefing",
                                  briefing.AttentionMatching(tau=cfg.tau, smooth_kernel=cfg.smooth_kernel), cfg.tau))
        return done[am]

    def matched(name: str, make: Any) -> Any:
        def run() -> dict:
            k = max(1, am_row()["kept"])
            return r.run(Spec(f"{name}@{am}", name, make(k), k, matched_to=am))
        return run

    plan.append((am, am_row))
    plan += [(f"topk@{am}", matched("topk", lambda k: briefing.TopK(tokens=k))),
             (f"random@{am}", matched("random", lambda k: briefing.RandomKeep(tokens=k, seed=seed))),
             (f"sink_recent@{am}", matched("sink_recent", lambda k: briefing.RecentWindow(tokens=k, sinks=4)))]
    if cfg.recent:
        plan.append((f"{am}+recent{cfg.recent}", lambda: r.run(Spec(
            f"{am}+recent{cfg.recent}", "latent_briefing_protected",
            ProtectedAttentionMatching(tau=cfg.tau, smooth_kernel=cfg.smooth_kernel, recent=cfg.recent), cfg.tau))))
    b = cfg.budget
    rsk = cfg.ratio_smooth_kernel
    for name, sel in (("am", briefing.AttentionMatching(ratio=b, smooth_kernel=rsk)),
                      ("am_recent", ProtectedAttentionMatching(ratio=b, smooth_kernel=rsk, recent=cfg.recent)),
                      ("topk", briefing.TopK(ratio=b)), ("random", briefing.RandomKeep(ratio=b, seed=seed)),
                      ("sink_recent", briefing.RecentWindow(ratio=b, sinks=4))):
        method = {"am": "latent_briefing", "am_recent": "latent_briefing_protected"}.get(name, name)
        spec = Spec(f"{name}_b{b:g}", method, sel, b, matched_to=f"budget{b:g}")
        plan.append((spec.name, lambda spec=spec: r.run(spec)))
    if f"{cfg.budget_hi:g}" != f"{b:g}":   # the same name (and kept share) is am_b* above
        spec = Spec(f"am_b{cfg.budget_hi:g}", "latent_briefing",
                    briefing.AttentionMatching(ratio=cfg.budget_hi, smooth_kernel=rsk), cfg.budget_hi)
        plan.append((spec.name, lambda spec=spec: r.run(spec)))
    plan.append((f"bm25_r{cfg.bm25_ratio:g}", lambda: r.run(Spec(f"bm25_r{cfg.bm25_ratio:g}", "bm25",
                                                                 param=cfg.bm25_ratio))))
    plan.append((f"bm25+am_b{b:g}", lambda: r.run_bm25_briefing(
        Spec(f"bm25+am_b{b:g}", "bm25_briefing", param=b, matched_to=f"budget{b:g}"), cfg.tau, rsk,
        cfg.bm25_ratio / 2, b)))
    if cfg.summary:
        plan.append(("summary", lambda: r.run(Spec("summary", "summary", param=cfg.summary_tokens))))
    if cfg.importance:   # docs/benchmarks.md, "Global allocation of the importance" and "Round 7"
        tag, method = f"am{cfg.importance[0]}", f"latent_briefing_{cfg.importance}"
        share = cfg.importance_share
        for spec in (Spec(f"{tag}_tau{cfg.tau:g}", method, importance_pick(
                cfg.importance, share, tau=cfg.tau, smooth_kernel=cfg.smooth_kernel), cfg.tau),
                     Spec(f"{tag}_b{b:g}", method, importance_pick(cfg.importance, share, ratio=b, smooth_kernel=rsk),
                          b, matched_to=f"budget{b:g}")):
            plan.append((spec.name, lambda spec=spec: r.run(spec)))
    if cfg.contrast is not None:   # docs/benchmarks.md, "Contrastive guidance" (round 33)
        for name, size, param, to in ((f"amc_tau{cfg.tau:g}", {"tau": cfg.tau, "smooth_kernel": cfg.smooth_kernel},
                                       cfg.tau, None),
                                      (f"amc_b{b:g}", {"ratio": b, "smooth_kernel": rsk}, b, f"budget{b:g}")):
            plan.append((name, lambda name=name, size=size, param=param, to=to: r.run_contrast(
                name, size, cfg.contrast, param, to)))
    for tau, sk, rec, bud in cfg.sweep:
        sel = (ProtectedAttentionMatching(tau=tau, smooth_kernel=sk, recent=rec) if bud is None
               else ProtectedAttentionMatching(ratio=bud, smooth_kernel=sk, recent=rec))
        mode = f"tau{tau:g}" if bud is None else f"b{bud:g}"
        spec = Spec(f"sweep_{mode}_s{sk}_r{rec}", "sweep", sel, [tau, sk, rec, bud])
        plan.append((spec.name, lambda spec=spec: r.run(spec)))
    return plan


def family_rows(lm: Any, prompts: Any, episode: Any, cfg: SuiteConfig, seed: int = 0) -> list[dict]:
    """The conditions of the family suite on one episode (one shared prefill): every one of `family_plan`, or those
    `cfg.conditions` names and full text (the reference of every difference), in the plan's order."""
    r = FamilyRunner(lm, prompts, episode, timing=cfg.timing, importance=bool(cfg.importance))
    want = set(cfg.conditions)
    return [run() for name, run in family_plan(r, cfg, seed) if not want or name in want or name == "full"]
