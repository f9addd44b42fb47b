"""Long-trajectory suite: trajectories several times the worker's window, served by a folding KV cache.

    python -m benchmarks.rlm_bench.long [--lengths 8192 16384 32768 65536] [--episodes 24] [--first-episode 0]
                             [--window 8192] [--conditions ...] [--split dev|heldout] [--workers 2] [--out DIR]
    rlm bench --suite long ...          (the same options)
    python -m benchmarks.rlm_bench.long --report bench_out/long/results.json [--readme docs/benchmarks.md]
        # rewrite results.md and long.png (and the long-suite block of docs/benchmarks.md) from the JSON
    python -m benchmarks.rlm_bench.long --call-case 12400 --out DIR   # two BriefedWorker calls past the window

Built from the suite's layers: episodes (`long_episodes`), conditions as the library's own workers answering through
`brief()` (`long_conditions`), the family suite's runner (`runner.run_all`: a process pool or Ray, every finished
episode appended to <out>/episodes.jsonl and a stopped run resumed from it) and one report (`long_report`, intervals
from `benchmarks.stats`).

Figures: accuracy by length and by depth quarter with 95% bootstrap intervals (over questions), paired differences
(over questions and over episodes), per-call latency and prefilled tokens against trajectory length, fold time (and
its ratio to the estimated prefill time of the folded span, at the cache's own measured prefill rate), peak RSS by
length, KV bytes held, what the folds kept of each fact (`held`) and what the call's context held of it (`covered`:
kept, recalled or pasted). Timings depend on the machine's load: results record the load.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.rlm_bench.long_conditions import (CONDITIONS, FOLD_GUIDANCE, LATENT, RECALL, RECALL_VARIANTS,
                                                  STREAMING, LongConfig)
from benchmarks.rlm_bench.long_episodes import (QUARTERS, SPLIT_SEED, SPLIT_SPAN, LongSpec, make_long_episode,
                                                question_event, question_text)
from benchmarks.rlm_bench.long_report import (README_END, README_START, markdown, merge, readme_markers, summarize,
                                              targets, update_readme, write)

__all__ = ["CONDITIONS", "FOLD_GUIDANCE", "LATENT", "QUARTERS", "README_END", "README_START", "RECALL",
           "RECALL_VARIANTS", "SPLIT_SEED", "STREAMING", "build_parser", "main", "make_long_episode", "merge",
           "question_event", "question_text", "readme_markers", "run", "write"]


def call_case(lm: Any, tokens: int = 12400, seed: int = 7) -> dict:
    """The motivating case with the default BriefedWorker (folding cache): a call on a trajectory of `tokens`
    tokens, then a call after one appended line (which must prefill only that line)."""
    from agents import BriefedWorker

    ep = make_long_episode(seed, tokens)
    traj = ep.text
    w = BriefedWorker(lm=lm, max_new_tokens=16)
    out: dict[str, Any] = {"trajectory_tokens": lm.count_tokens(traj), "load_average_start": os.getloadavg()}
    t0 = time.perf_counter()
    a1 = w.answer(ep.questions[0].question, traj)
    out["first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    more = traj + "[orchestrator]\nOne more line.\n\n"
    a2 = w.answer(ep.questions[1].question, more)
    out["second_call_s"] = time.perf_counter() - t0
    cache = w.sync(more)
    rate = cache.prefill_s / max(1, cache.prefilled_tokens)
    out.update(first=a1.model_dump(), second=a2.model_dump(), cache_positions=cache.length, cache_budget=cache.budget,
               prefill_s_per_token=rate, kv_bytes=cache.kv_bytes(),
               folds=[dict(f.model_dump(), ratio_to_prefill=f.time_s / (f.span * rate)) for f in cache.folds],
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, load_average_end=os.getloadavg())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlm bench --suite long", description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--episodes", type=int, default=24, help="episodes per length (4 questions each)")
    p.add_argument("--first-episode", type=int, default=0,
                   help="index of the first episode (seeds follow it), to split one suite over machines and merge "
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
                   help="recall conditions: tokens recalled per call (default: the worker's, "
                        "agents.recall.default_recall_tokens of the cache budget: an eighth, raised toward 384 "
                        "as far as a quarter and the fold's room allow)")
    p.add_argument("--workers", type=int, default=1, help="local processes (one model and one torch thread each)")
    p.add_argument("--ray", metavar="ADDRESS", help="run episodes on Ray: auto, a cluster address, or local")
    p.add_argument("--threads", type=int, default=1, help="torch threads of a serial run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="bench_out/long")
    p.add_argument("--report", metavar="JSON", nargs="+",
                   help="only rewrite results.md and long.png from a results.json (several, e.g. runs split by length "
                        "over machines: merged, written to --out)")
    p.add_argument("--readme", metavar="MARKDOWN",
                   help="with --report: also rewrite the long-suite block of this file (docs/benchmarks.md)")
    p.add_argument("--readme-block", metavar="NAME",
                   help="with --readme: the named block <!-- long-suite-NAME:start -->")
    p.add_argument("--call-case", type=int, metavar="TOKENS",
                   help="only the motivating case: two BriefedWorker calls on a trajectory of TOKENS tokens "
                        "(writes call_case.json)")
    return p


def specs(args: argparse.Namespace) -> list[LongSpec]:
    """Episode-major: a run stopped early still covers every length evenly; episode e has one seed at every length."""
    if args.first_episode < 0 or args.first_episode + args.episodes > SPLIT_SPAN:
        raise SystemExit(f"--first-episode {args.first_episode} is out of range; give an index from 0 with "
                         f"--first-episode + --episodes at most {SPLIT_SPAN} (the seeds of a split).")
    return [LongSpec(args.split, e, n) for e in range(args.first_episode, args.first_episode + args.episodes)
            for n in args.lengths]


def run(args: argparse.Namespace, lm: Any = None, log=print, out: Path | None = None) -> dict:
    """Run the suite through the runner; returns the result (rows, folds, summary, targets)."""
    import torch

    import briefing
    from benchmarks.rlm_bench.runner import run_all

    todo = specs(args)
    torch.set_num_threads(args.threads)
    suite = LongConfig(conditions=tuple(args.conditions), window=args.window, reserve=args.reserve,
                       recent=args.recent, share=args.share, summary_tokens=args.summary_tokens,
                       bm25_budget=args.bm25_budget, recall_budget=args.recall_budget)
    if lm is None and args.workers <= 1 and not args.ray:
        lm = briefing.load_model(args.model)
    sizer = lm if lm is not None else briefing.load_model(args.model)
    sizes = suite.sizes(sizer)
    t_start = time.time()
    checkpoint = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / "episodes.jsonl"
    done = run_all(todo, suite, model=args.model, lm=lm, workers=args.workers, ray=args.ray,
                   progress=not args.no_progress, log=log, checkpoint=checkpoint)
    rows = [r for _, rs in done for r in rs]
    folds = [f for record, _ in done for f in record["folds"]]
    rss: dict[str, float] = {}
    for record, _ in done:   # the process-wide peak at the end of each length's episodes
        key = str(record["length"])
        rss[key] = max(rss.get(key, 0.0), record["peak_rss_mb"])
    cfg = dict(lengths=args.lengths, episodes=args.episodes, first_episode=args.first_episode,
               window=sizes["window"], reserve=sizes["reserve"], recent=sizes["recent"],
               keep=briefing.FoldPolicy().keep, share=args.share, conditions=args.conditions, split=args.split,
               model=sizer.name, bm25_budget=sizes["bm25_budget"], summary_tokens=args.summary_tokens,
               threads=args.threads, workers=args.workers, recall_budget=sizes["recall_budget"],
               episodes_done={str(m): len({r["episode"] for r in rows if r["length"] == m}) for m in args.lengths})
    summary = summarize(rows, folds, rss)
    return dict(config=cfg, rows=rows, folds=folds, summary=summary, targets=targets(summary),
                load_average=[round(x, 2) for x in os.getloadavg()], wall_s=round(time.time() - t_start, 1))


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
