"""`rlm bench`: the benchmark and evaluation harness.

    rlm bench [--quick] [--out bench_out/rlm_bench] [--lengths 1000 2000 4000] [--episodes 3] [--seed 0]
    rlm bench --replay LOG.jsonl [--max-calls 8]      # our JSONL log or an alexzhang13/rlm trace log

Writes results.json (every row, per-condition summary, targets, overhead fits), results.md and PNG plots
(pareto.png, overhead.png, kept_vs_tau.png); replay writes replay.json and replay.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

QUICK = dict(lengths=[600], episodes=6, taus=[0.0, 1.0], budgets=[0.1], matched_taus=[1.0], summary_tokens=32)
DEFAULT = dict(lengths=[1000, 2000, 4000], episodes=3, taus=[-0.5, 0.0, 0.5, 1.0, 2.0], budgets=[0.05, 0.1, 0.2, 0.35],
               matched_taus=[0.0, 1.0], summary_tokens=64)
GENERATE_FOR = {"plain", "full", "text", "am_tau1", "summary"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlm bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one short length, 6 episodes, few conditions (~2-3 min)")
    p.add_argument("--out", default="bench_out/rlm_bench")
    p.add_argument("--lengths", type=int, nargs="+", help="trajectory lengths in tokens (approximate)")
    p.add_argument("--episodes", type=int, help="episodes per length")
    p.add_argument("--taus", type=float, nargs="+")
    p.add_argument("--budgets", type=float, nargs="+")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="local Hugging Face model directory (default: embedded SmolLM2-135M)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--text-check", action="store_true", help="also run the pasted-text prompt (equals `full`)")
    p.add_argument("--generate-all", action="store_true", help="generated-answer match for every condition")
    p.add_argument("--replay", metavar="LOG", help="replay the briefing conditions on the worker calls of a log")
    p.add_argument("--max-calls", type=int, default=8, help="replay: at most this many calls")
    return p


def _machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"


def run_suite(args: argparse.Namespace, lm=None, log=print) -> dict:
    import briefing
    from agents.workers.prompt import WorkerPrompt
    from benchmarks.rlm_bench import report
    from benchmarks.rlm_bench.conditions import episode_rows
    from benchmarks.rlm_bench.episodes import make_suite

    cfg = dict(QUICK if args.quick else DEFAULT)
    for k in ("lengths", "taus", "budgets"):
        if getattr(args, k, None):
            cfg[k] = getattr(args, k)
    if getattr(args, "episodes", None):
        cfg["episodes"] = args.episodes
    import torch

    torch.set_num_threads(max(1, getattr(args, "threads", 1) or 1))  # oversubscribed threads are far slower here
    t_start = time.perf_counter()
    lm = lm or briefing.load_model(args.model)
    prompts = WorkerPrompt.for_model(lm)
    episodes = make_suite(cfg["lengths"], cfg["episodes"], seed=args.seed)
    rows: list[dict] = []
    gen = True if args.generate_all else GENERATE_FOR
    for i, ep in enumerate(episodes, 1):
        t0 = time.perf_counter()
        ep_rows = episode_rows(lm, prompts, ep, cfg["taus"], cfg["budgets"], text_check=args.text_check,
                               summary=True, with_generation=gen, seed=args.seed, matched_taus=cfg["matched_taus"])
        for r in ep_rows:
            if r["method"] == "summary":
                r["param"] = cfg["summary_tokens"]
        rows.extend(ep_rows)
        acc = {r["condition"]: int(r["correct"]) for r in ep_rows}
        log(f"[{i}/{len(episodes)}] {ep.id} T={ep_rows[0]['trajectory_tokens']} answer={ep.answer!r} "
            f"plain={acc['plain']} full={acc['full']} am_tau1={acc.get('am_tau1')} ({time.perf_counter() - t0:.0f}s)")
    summary = report.summarize(rows)
    result = {"mode": "quick" if args.quick else "default", "model": lm.name, "machine": _machine(),
              "lengths": cfg["lengths"], "n_episodes": len(episodes), "config": cfg, "seed": args.seed,
              "accuracy_metric": "argmax of the summed log-prob of the candidate value after the lead-in restating the key "
                                 "(candidates of equal token count)",
              "full_condition": "KeepAll on the trajectory cache (numerically the pasted text in the same position)",
              "episodes": [e.summary() for e in episodes], "rows": rows, "summary": summary}
    result["overhead_fit"] = report.overhead_fits(rows)
    result["targets"] = report.targets(summary, rows)
    result["wall_s"] = time.perf_counter() - t_start
    return result


def write_suite(result: dict, out: Path) -> list[str]:
    from benchmarks.rlm_bench import report

    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = report.plots(result, out)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(report.markdown(result))
    return ["results.json", "results.md", *result["plots"]]


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
    lines = [f"# replay of {args.replay}", "", "| call | synthetic | T | condition | kept | kept ratio | overhead s | KL vs full |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['call']} | {r['synthetic']} | {r['trajectory_tokens']} | {r['condition']} | {r['kept']} | "
                     f"{r['kept_ratio']:.3f} | {r['overhead_s']:.2f} | {r['kl']:.4f} |")
    (out / "replay.md").write_text("\n".join(lines) + "\n")
    log(f"replayed {len({r['call'] for r in rows})} calls; wrote {out / 'replay.json'} and {out / 'replay.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.replay:
        return run_replay(args)
    result = run_suite(args)
    files = write_suite(result, Path(args.out))
    for x in result["summary"]:
        print(f"{x['condition']:<22} acc {x['accuracy']:.2f} kl {x['kl_mean']:.4f} median input {x['input_tokens_median']:6.0f} "
              f"({x['input_ratio_median']:.1%} of full) overhead {x['overhead_s_mean']:.2f}s")
    print(json.dumps(result["targets"], indent=1, default=str))
    print(f"wrote {', '.join(files)} to {args.out} in {result['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
