"""Replay: run the briefing conditions on every worker call of an existing trajectory log.

Reads our JSONL event log or an alexzhang13/rlm trace log (`rlm.view.load_events` converts the latter:
worker calls are the `rlm_calls` of `code_blocks[].result`). For each worker call, the trajectory is the
rendering of the run's events before the call (`rlm.events.render`), cut to its most recent part when it
would not fit the model's context. When a log has no worker call at all (e.g. the example trace, whose
runs never call `llm_query`), a synthetic call is placed after each orchestrator message with the run's
query, and the rows say so (`synthetic: true`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import briefing
from agents.workers.text import CUT_MARK
from briefing.metrics import answer_kl
from rlm.events import render


def call_points(events: list[Any]) -> list[dict]:
    """(run_id, trajectory text before the call, query, answer, synthetic) for every worker call."""
    by_run: dict[str, list[Any]] = {}
    for e in events:
        by_run.setdefault(e.run_id, []).append(e)
    points = []
    for run_id, evs in by_run.items():
        evs = sorted(evs, key=lambda e: e.seq)
        text, query = "", ""
        real = any(e.type == "worker_call" for e in evs)
        for e in evs:
            if e.type == "run_start":
                query = e.query
            if e.type == "worker_call":
                points.append({"run_id": run_id, "call": e.call_id or f"{run_id}.{e.index}", "trajectory": text,
                               "query": e.query, "answer": e.answer or "", "synthetic": False})
            text += render(e)
            if not real and e.type == "message":
                points.append({"run_id": run_id, "call": f"{run_id}.after{e.seq}", "trajectory": text,
                               "query": query[-2000:], "answer": "", "synthetic": True})
    return points


def replay_log(lm: Any, prompts: Any, path: str | Path, taus: list[float], budgets: list[float],
               max_calls: int | None = None, reserve: int = 600) -> list[dict]:
    from rlm.view import load_events

    fmt, events = load_events(path)
    points = [p for p in call_points(events) if p["trajectory"].strip()]
    if max_calls:
        points = points[:max_calls]
    rows = []
    limit = int(lm.max_context) - reserve
    for p in points:
        query = p["query"].strip() or "What has been found so far?"
        ids = lm.encode(query)
        if len(ids) > 400:
            query = lm.decode(ids[-400:])
        call_prompt = prompts.call_prompt(query)
        traj = p["trajectory"]
        tids = lm.encode(prompts.cache_text(traj))
        cut = False
        if len(tids) > limit:
            keep = lm.encode(traj)[-(limit - 200):]
            traj, cut = CUT_MARK + lm.decode(keep), True
        t0 = time.perf_counter()
        cache = briefing.TrajectoryCache(lm, prompts.cache_text(traj), fold=None)
        prefill = time.perf_counter() - t0
        full = cache.compact(call_prompt, briefing.KeepAll())
        reference = p["answer"].strip() or briefing.generate(full, briefing.GenerationConfig(max_new_tokens=16)).text
        reference = " " + (lm.decode(lm.encode(reference)[:32]).strip() or "I")
        base = {"log": str(path), "format": fmt, "run_id": p["run_id"], "call": p["call"], "synthetic": p["synthetic"],
                "trajectory_tokens": cache.length, "cut": cut, "prefill_s": prefill}
        sels = [(f"am_tau{t:g}", "latent_briefing", briefing.AttentionMatching(tau=t)) for t in taus]
        sels += [(f"am_b{b:g}", "latent_briefing", briefing.AttentionMatching(ratio=b)) for b in budgets]
        sels += [(f"topk_b{b:g}", "topk", briefing.TopK(ratio=b)) for b in budgets]
        for name, method, sel in sels:
            t0 = time.perf_counter()
            ctx = cache.compact(call_prompt, sel)
            dt = time.perf_counter() - t0
            rows.append(base | {"condition": name, "method": method, "kept": ctx.stats.kept,
                                "kept_ratio": ctx.stats.kept_ratio, "overhead_s": dt,
                                "kl": answer_kl(full, ctx, reference)})
        plain = briefing.plain_context(lm, prompts.plain_prompt(query))
        rows.append(base | {"condition": "plain", "method": "plain", "kept": 0, "kept_ratio": 0.0, "overhead_s": 0.0,
                            "kl": answer_kl(full, plain, reference)})
    return rows
