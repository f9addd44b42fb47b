"""`rlm bench`: the end-to-end benchmark (RULER-style task families in real trajectory events).

    rlm bench                      # default suite: held-out seeds, 7 families x 1k/2k/4k/8k tokens (126 episodes)
    rlm bench --quick              # development seeds, 7 episodes at 1k (a few minutes)
    rlm bench --sweep              # development seeds: tau x smoothing x protected window (chooses the defaults)
    rlm bench --workers 2          # local process pool; --ray auto|ADDRESS|local: Ray
    rlm bench --readme docs/results/rlm_bench/results.json   # rewrite docs/benchmarks.md's rlm-bench table from it
    rlm bench --replay LOG.jsonl [--max-calls 8]      # our JSONL log or an alexzhang13/rlm trace log
    rlm bench --suite long [...]                      # trajectories past the window (benchmarks.rlm_bench.long --help)

Writes results.json (every row, per-condition summary with paired bootstrap 95% intervals, per family /
length / depth), results.md and PNG plots (pareto.png, families.png, latency.png).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks.rlm_bench.families import FAMILIES, SPLITS

QUICK = {"lengths": [1000], "per_cell": [1], "split": "dev", "summary": False}
DEFAULT = {"lengths": [1000, 2000, 4000, 8000], "per_cell": [5, 5, 5, 3], "split": "heldout", "summary": True}
SWEEP = {"lengths": [1000, 2000], "per_cell": [1, 1], "split": "dev", "summary": False,
         "sweep": tuple((tau, sk, rec, None) for tau in (0.5, 1.0, 2.0) for sk in (1, 5) for rec in (0, 64))
         + tuple((1.0, sk, rec, 0.1) for sk in (1, 5, 9) for rec in (0, 32, 128))}
BOOTSTRAP = 2000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlm bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="development seeds, one 1k episode per family (a few minutes)")
    p.add_argument("--sweep", action="store_true", help="development seeds: sweep tau, smoothing and protected window")
    p.add_argument("--out", default="bench_out/rlm_bench")
    p.add_argument("--lengths", type=int, nargs="+", help="trajectory lengths in tokens (worker tokenizer)")
    p.add_argument("--per-cell", type=int, nargs="+", help="episodes per (family, length): one value or one per length")
    p.add_argument("--families", nargs="+", choices=FAMILIES)
    p.add_argument("--split", choices=list(SPLITS), help="seed range: dev (design, tuning) or heldout (reported)")
    p.add_argument("--seed-offset", type=int, default=0, help="start this far into the split's seed range")
    p.add_argument("--tau", type=float, default=1.0)
    # defaults chosen on the development seeds (docs/results/rlm_bench/dev_sweep/dev_sweep.md)
    p.add_argument("--smooth", type=int, default=5, help="score smoothing kernel of Attention Matching, tau mode")
    p.add_argument("--ratio-smooth", type=int, default=9, help="score smoothing kernel at a fixed kept ratio")
    p.add_argument("--recent", type=int, default=32,
                   help="protected recent window (positions) of the +recent conditions")
    p.add_argument("--budget", type=float, default=0.1,
                   help="kept share of the fixed-ratio conditions (am_b*, topk_b*, random_b*, sink_recent_b*, "
                        "am_recent_b*, bm25+am_b*, and the importance's amg_b* / amh_b*), in (0, 1); default 0.1")
    p.add_argument("--conditions", nargs="+", metavar="NAME",
                   help="run only these conditions (names as in results.md, e.g. am_b0.17 amh_b0.17) and full text, "
                        "the reference; default: every one")
    p.add_argument("--no-summary", action="store_true", help="skip the worker-model summary condition")
    p.add_argument("--no-timing", action="store_true", help="skip the fixed 12-token decode used for latency")
    p.add_argument("--importance", nargs="?", const="global", default="", choices=["global", "hybrid"],
                   help="also run an opt-in allocation of the query-agnostic importance (issue 28) at tau and at the "
                        "budget: global (the default; conditions amg_tau*, amg_b*) or hybrid (amh_tau*, amh_b*); the "
                        "shared cache scores the importance")
    p.add_argument("--importance-share", type=float, default=None, metavar="S",
                   help="with --importance: the importance's share of the kept positions in its conditions, in "
                        "(0, 1] (default: 0.9, the share of --importance's selector)")
    p.add_argument("--contrast", type=float, default=None, metavar="C",
                   help="also run Attention Matching with the guidance contrasted with a neutral question's "
                        "(conditions amc_tau*, amc_b*): the exponent C in (0, 4] of the neutral attention, e.g. 1")
    p.add_argument("--workers", type=int, default=1, help="local processes (one model each, one torch thread each)")
    p.add_argument("--ray", metavar="ADDRESS", help="run episodes on Ray: auto, a cluster address, or local")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--model", default=None, help="local Hugging Face model directory (default: embedded SmolLM2-135M)")
    p.add_argument("--readme", metavar="RESULTS_JSON",
                   help="rewrite the rlm-bench block of docs/benchmarks.md from this JSON and exit")
    p.add_argument("--report", metavar="RESULTS_JSON", help="rewrite results.md, the plots (and dev_sweep.*) next to "
                                                            "this JSON from it and exit")
    p.add_argument("--replay", metavar="LOG", help="replay the briefing conditions on the worker calls of a log")
    p.add_argument("--max-calls", type=int, default=8, help="replay: at most this many calls")
    p.add_argument("--taus", type=float, nargs="+", help="replay: taus")
    p.add_argument("--budgets", type=float, nargs="+", help="replay: budgets")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads in this process (default 1: shared machine)")
    return p


def _machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"


def suite_settings(args: argparse.Namespace) -> dict:
    cfg = dict(SWEEP if args.sweep else QUICK if args.quick else DEFAULT)
    if args.lengths:
        cfg["lengths"] = args.lengths
    if args.per_cell:
        cfg["per_cell"] = args.per_cell
    if len(cfg["per_cell"]) == 1:
        cfg["per_cell"] = cfg["per_cell"] * len(cfg["lengths"])
    if len(cfg["per_cell"]) != len(cfg["lengths"]):
        raise SystemExit(f"--per-cell must give one value or one per length ({len(cfg['lengths'])}), got "
                         f"{cfg['per_cell']}")
    if args.split:
        cfg["split"] = args.split
    if args.no_summary:
        cfg["summary"] = False
    cfg["families"] = list(args.families or FAMILIES)
    return cfg


def suite_config(args: argparse.Namespace, cfg: dict):
    """The run's `SuiteConfig`; ValueError (one line, naming the option) for a budget outside (0, 1), an importance
    share outside (0, 1] or without --importance, or a condition the run does not have."""
    from benchmarks.rlm_bench.conditions import SuiteConfig, family_plan

    if not 0 < args.budget < 1:
        raise ValueError(f"--budget: {args.budget!r} is not a kept share; give a number in (0, 1), e.g. 0.1 "
                         "(10% kept)")
    share = args.importance_share
    if share is not None and not args.importance:
        raise ValueError(f"--importance-share {share!r}: it sets the share of the importance's conditions; add "
                         "--importance hybrid (or global), or leave it out")
    if share is not None and not 0 < share <= 1:
        raise ValueError(f"--importance-share: {share!r} is not a share of the kept positions; give a number in "
                         "(0, 1], e.g. 0.5")
    if args.contrast is not None and not 0 < args.contrast <= 4:
        raise ValueError(f"--contrast: {args.contrast!r} is not an exponent of the neutral question's attention; "
                         "give a number in (0, 4], e.g. 1")
    suite = SuiteConfig(tau=args.tau, smooth_kernel=args.smooth, ratio_smooth_kernel=args.ratio_smooth,
                        recent=args.recent, budget=args.budget, summary=cfg["summary"],
                        timing=not args.no_timing, sweep=cfg.get("sweep", ()), importance=args.importance,
                        importance_share=share, contrast=args.contrast, conditions=tuple(args.conditions or ()))
    names = [name for name, _ in family_plan(None, suite)]
    unknown = [c for c in suite.conditions if c not in names]
    if unknown:
        what = "is not a condition" if len(unknown) == 1 else "are not conditions"
        raise ValueError(f"--conditions: {', '.join(unknown)} {what} of this run; pick among {', '.join(names)} "
                         "(--budget, --tau, --recent, --importance, --contrast, --sweep and --no-summary change the "
                         "names)")
    return suite


def run_suite(args: argparse.Namespace, lm=None, log=print) -> dict:
    from benchmarks.rlm_bench import report, stats
    from benchmarks.rlm_bench.families import suite_specs
    from benchmarks.rlm_bench.runner import run_all

    cfg = suite_settings(args)
    specs = suite_specs(cfg["lengths"], cfg["per_cell"], cfg["split"], tuple(cfg["families"]), offset=args.seed_offset)
    # shortest first, then round-robin over families: an interrupted run has a balanced slice (--out's episodes.jsonl)

    order = {f: i for i, f in enumerate(cfg["families"])}
    specs.sort(key=lambda s: (s.target_tokens, s.seed % 1000, order[s.family]))
    suite = suite_config(args, cfg)
    t_start = time.perf_counter()
    if lm is None and args.workers <= 1 and not args.ray:
        import briefing

        lm = briefing.load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run_all(specs, suite, model=args.model, lm=lm, workers=args.workers, ray=args.ray,
                  progress=not args.no_progress, log=log, checkpoint=out / "episodes.jsonl")
    episodes = [e for e, _ in res]
    rows = [r for _, rs in res for r in rs]
    seeds = [s.seed for s in specs]
    result = {"mode": "sweep" if args.sweep else "quick" if args.quick else "default", "split": cfg["split"],
              "seed_range": f"{min(seeds)}..{max(seeds)} (split {cfg['split']}: {SPLITS[cfg['split']].start}.."
                            f"{SPLITS[cfg['split']].stop - 1})",
              "model": lm.name if lm is not None else (args.model or "SmolLM2-135M-Instruct"),
              "machine": _machine(), "workers": "ray " + args.ray if args.ray else args.workers,
              "lengths": cfg["lengths"], "per_cell": cfg["per_cell"], "families": cfg["families"],
              "n_episodes": len(episodes), "config": {**cfg, "suite": suite.__dict__}, "bootstrap": BOOTSTRAP,
              "accuracy_metric": "argmax of the summed log-prob of the candidate after the answer lead-in "
                                 "(candidates of equal token count)",
              "full_condition": "text with prefix-KV reuse: KeepAll on the trajectory cache prefilled once "
                                "(numerically the pasted text), only the call prompt forwarded per call",
              "episodes": episodes, "rows": rows}
    result["summary"] = stats.summarize(rows, B=BOOTSTRAP)
    result["by_family"] = stats.breakdown(rows, "family", B=BOOTSTRAP)
    result["by_length"] = stats.breakdown(rows, "target_tokens", B=BOOTSTRAP)
    result["by_depth"] = stats.breakdown(rows, "depth", B=BOOTSTRAP)
    result["overhead_fit"] = report.overhead_fits(rows)
    result["wall_s"] = time.perf_counter() - t_start
    result["episodes_wall_s"] = sum(e.get("wall_s", 0.0) for e in episodes)  # compute time, also over resumed runs
    return result


def write_suite(result: dict, out: Path) -> list[str]:
    from benchmarks.rlm_bench import report

    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = report.plots(result, out)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(report.markdown(result))
    if result["mode"] == "sweep":
        choice = report.sweep_choice(result)
        (out / "dev_sweep.json").write_text(json.dumps(choice, indent=1))
        (out / "dev_sweep.md").write_text(report.sweep_markdown(choice))
        return ["results.json", "results.md", "dev_sweep.json", "dev_sweep.md", *result["plots"]]
    return ["results.json", "results.md", *result["plots"],
            *(["episodes.jsonl"] if (out / "episodes.jsonl").is_file() else [])]


def run_replay(args: argparse.Namespace, log=print) -> int:
    import briefing
    from agents.workers.prompt import WorkerPrompt
    from benchmarks.rlm_bench.replay import replay_log
    from benchmarks.rlm_bench.report import linear_fit

    lm = briefing.load_model(args.model)
    taus = args.taus or [0.0, 1.0, 2.0]
    budgets = args.budgets or [0.1]
    rows = replay_log(lm, WorkerPrompt.for_model(lm), args.replay, taus, budgets, max_calls=args.max_calls)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lb = [r for r in rows if r["method"] == "latent_briefing"]
    fit = linear_fit([r["trajectory_tokens"] for r in lb], [r["overhead_s"] for r in lb])
    (out / "replay.json").write_text(json.dumps({"log": args.replay, "rows": rows, "overhead_fit": fit}, indent=1))
    lines = [f"# replay of {args.replay}", "",
             "| call | synthetic | T | condition | kept | kept ratio | overhead s | KL vs full |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['call']} | {r['synthetic']} | {r['trajectory_tokens']} | {r['condition']} | {r['kept']} | "
                     f"{r['kept_ratio']:.3f} | {r['overhead_s']:.2f} | {r['kl']:.4f} |")
    (out / "replay.md").write_text("\n".join(lines) + "\n")
    log(f"replayed {len({r['call'] for r in rows})} calls; wrote {out / 'replay.json'} and {out / 'replay.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    if "--suite" in argv:  # the long-trajectory suite has its own options (`rlm` may pass "--suite" after "long")
        argv.remove("--suite")
        if "long" not in argv:
            raise SystemExit("rlm bench --suite: the only suite is 'long' (rlm bench --suite long --help).")
        argv.remove("long")
        from benchmarks.rlm_bench import long

        return long.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.readme:
        from benchmarks.readme import DOC
        from benchmarks.rlm_bench.report import update_readme

        changed = update_readme(DOC, Path(args.readme), args.readme)
        print(f"{DOC} {'updated' if changed else 'unchanged'} from {args.readme}")
        return 0
    if args.report:
        path = Path(args.report)
        files = write_suite(json.loads(path.read_text()), path.parent)
        print(f"wrote {', '.join(files)} to {path.parent}")
        return 0
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.replay:
        return run_replay(args)
    try:   # the suite's options, checked before any model loads
        suite_config(args, suite_settings(args))
    except ValueError as e:
        parser.error(str(e))
    result = run_suite(args)
    files = write_suite(result, Path(args.out))
    for x in result["summary"]:
        print(f"{x['condition']:<26} acc {x['accuracy']:.2f} [{x['accuracy_ci95'][0]:.2f}, "
              f"{x['accuracy_ci95'][1]:.2f}] "
              f"vs full {x['diff_full']:+.2f} saved {x['token_reduction']:.1%} latency {x['latency_s_median']:.2f}s")
    print(f"wrote {', '.join(files)} to {args.out} in {result['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
