"""Per-call latency of the shipped briefed worker with `briefing.attention.sdpa` (on a CPU, grouped KV heads handed to
torch's kernel, `enable_gqa`) against transformers' SDPA (a copy of every key and value per query head whenever a mask
is given), alternated call by call on one cache, so both see the same machine load.

    OMP_NUM_THREADS=1 python -m benchmarks.attention_ab [--length 16384] [--window 8192] [--episode 1]
        [--split heldout] [--out docs/results/long_routed/attention_ab]

One long-suite episode (`benchmarks.rlm_bench.long_episodes`) is read by the suite's `fold-routed` worker (the shipped
`RoutedRecall`, its cache and recall sized as the suite sizes them); then each of its eight questions is asked twice
per implementation, ABBA, each call the suite's: `brief` then its options scored (`choose`). Writes
`attention_ab.json` (every call's seconds and recall seconds, min and median per implementation, the paired ratios)
and `attention_ab.png`. The two give the same logits bit for bit (`tests/test_briefing.py`), so only time differs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def run(args: argparse.Namespace, lm=None) -> dict:
    """The A/B on `lm` (None: `--model`, loaded)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import briefing
    import briefing.attention as attention
    from agents import BriefedWorker, RoutedRecall
    from benchmarks.rlm_bench.conditions import choose
    from benchmarks.rlm_bench.long_conditions import LongConfig, fold_policy
    from benchmarks.rlm_bench.long_episodes import LongSpec, question_event, question_text

    torch.set_num_threads(1)
    lm = lm if lm is not None else briefing.load_model(args.model)
    cfg = LongConfig(conditions=("fold-routed",), window=args.window)
    sizes = cfg.sizes(lm)
    ep = LongSpec(args.split, args.episode, args.length).build()
    worker = BriefedWorker(lm=lm, fold=fold_policy(cfg, sizes, "fold-routed"), max_new_tokens=4,
                           cache_budget=sizes["budget"] - sizes["recall_budget"],
                           reserve=sizes["reserve"] + sizes["recall_budget"],
                           recall=RoutedRecall(tokens=sizes["recall_budget"]))
    full, t0 = "", time.perf_counter()
    for piece, query in ep.chunks:
        full += piece
        worker.observe(query, full) if query else worker.sync(full)
    built_s = time.perf_counter() - t0
    impls = {"grouped": attention.sdpa, "per-head copy": sdpa_attention_forward}
    calls: dict[str, list[dict]] = {name: [] for name in impls}
    try:
        for i, q in enumerate(ep.questions):
            full += question_event(q, i)
            worker.sync(full)   # the new text (and any fold it brings) outside the timed calls
            for order in (("grouped", "per-head copy"), ("per-head copy", "grouped")):   # ABBA
                for name in order:
                    attention.sdpa = impls[name]
                    t0 = time.perf_counter()
                    b = worker.brief(question_text(q), full)
                    choose(b.context, q.candidates, q.lead)
                    calls[name].append(dict(question=i, form=q.form, seconds=time.perf_counter() - t0,
                                            recall_s=b.stats.recall_s, recall=b.stats.recall))
    finally:
        attention.sdpa = impls["grouped"]
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(calls["grouped"], calls["per-head copy"], strict=True)]
    summary = {name: dict(calls=len(c), min_s=min(x["seconds"] for x in c),
                          median_s=statistics.median(x["seconds"] for x in c),
                          recall_median_s=statistics.median(x["recall_s"] for x in c)) for name, c in calls.items()}
    summary["grouped / per-head copy"] = dict(median=statistics.median(ratios), min=min(ratios), max=max(ratios),
                                              pairs=len(ratios))
    return dict(config=dict(model=lm.name, length=args.length, window=args.window, episode=ep.id, split=args.split,
                            trajectory_tokens=worker.sync(full).tokens, cache_built_s=built_s,
                            torch=torch.__version__, threads=torch.get_num_threads()),
                calls=calls, summary=summary)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, c in result["calls"].items():
        ax.plot(range(len(c)), [x["seconds"] for x in c], "o-", label=name)
    ax.set_xlabel("call (question, then its repeat)")
    ax.set_ylabel("seconds per call")
    ax.set_title(f"{result['config']['episode']}, window {result['config']['window']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=16384, help="episode length in tokens (default 16384)")
    p.add_argument("--window", type=int, default=8192, help="the worker's window (default 8192)")
    p.add_argument("--episode", type=int, default=1, help="episode index within the split (default 1)")
    p.add_argument("--split", choices=("dev", "heldout"), default="heldout")
    p.add_argument("--model", default=None, help="a known model name (default: the embedded SmolLM2-135M)")
    p.add_argument("--out", default="docs/results/long_routed/attention_ab", help="folder for the JSON and the plot")
    return p


def main(argv: list[str] | None = None, lm=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.length < 256 or args.window < 256:
        p.error(f"--length {args.length} / --window {args.window}: give at least 256 tokens each")
    result = run(args, lm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_ab.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "attention_ab.png")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
