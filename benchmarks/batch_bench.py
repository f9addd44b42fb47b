"""Batched briefing against calls one after another: the briefed worker's `answer_batch` of n queries on one
trajectory (one scoring forward, one batched fit, one batched decode) against n `answer` calls, on the embedded
model at the shipped defaults (BriefedWorker()). The trajectory is prefilled once before timing (both paths share
that sync). Timings are the median of `--repeats` runs, batch and sequential interleaved; the answers are compared.

    python -m benchmarks.batch_bench --readme          # run, write docs/results/batch/, and the batch-bench block
    python -m benchmarks.batch_bench --report docs/results/batch/batch_bench.json [--readme]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import readme

OUT = "docs/results/batch"
BLOCK = "batch-bench"
QUESTIONS = ["What is the main claim of the text?", "Which example does the author give first?",
             "What does the author say about money?", "Who is the text addressed to?",
             "What mistake does the author warn about?", "What does the author recommend doing?",
             "Which number appears in the text?", "What is said about time?", "What is the last point made?",
             "What does the author compare things to?", "Which person is named?", "What is said about work?",
             "What is the tone of the text?", "What question does the author ask?", "What is said about risk?",
             "What would the author disagree with?"]


def trajectory(tokens: int) -> str:
    """An orchestrator trajectory of about `tokens` tokens: the suite's episode generator (essay chunks read by
    code cells, worker calls, outputs), seed 0."""
    from benchmarks.rlm_bench.episodes import make_episode

    return make_episode(0, target_tokens=tokens).trajectory


def measure(lm, tokens: int, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    from agents.workers import BriefedWorker

    traj = trajectory(tokens)
    worker = BriefedWorker(lm=lm)
    t0 = time.perf_counter()
    worker.sync(traj)
    prefill = time.perf_counter() - t0
    rows = []
    for n in sizes:
        queries = QUESTIONS[:n]
        seq_s, batch_s, same, out_tokens = [], [], 0, 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            one = [worker.answer(q, traj) for q in queries]
            seq_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            many = worker.answer_batch(queries, traj)
            batch_s.append(time.perf_counter() - t0)
            bad = [m for m in many if isinstance(m, Exception)]
            if bad:
                raise bad[0]
            same += sum(a.text == b.text for a, b in zip(one, many))
            out_tokens = sum(a.output_tokens for a in one)
        row = dict(trajectory_tokens=worker.sync(traj).tokens, queries=n,
                   sequential_s=round(statistics.median(seq_s), 3),
                   batch_s=round(statistics.median(batch_s), 3), sequential_samples=[round(x, 3) for x in seq_s],
                   batch_samples=[round(x, 3) for x in batch_s], ratio=round(statistics.median(batch_s)
                                                                              / statistics.median(seq_s), 3),
                   same_answers=same, answers=n * repeats, output_tokens=out_tokens, prefill_s=round(prefill, 2))
        rows.append(row)
        print(f"{tokens} tokens, {n} queries: sequential {row['sequential_s']:.2f}s, batch {row['batch_s']:.2f}s "
              f"({row['ratio']:.2f}x), {same}/{n * repeats} answers identical", flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`BriefedWorker().answer_batch(queries)` against `answer(q)` for each query, on {result['model']} "
             f"({result['device']}, {result['dtype']}; {result['machine']}), shipped defaults; median of "
             f"{result['repeats']} runs each, interleaved; the trajectory prefilled once before timing. "
             f"Measured by `{result['command']}`.", "",
             "| trajectory tokens | queries | sequential s | batch s | batch / sequential | identical answers | "
             "output tokens |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['trajectory_tokens']:,} | {r['queries']} | {r['sequential_s']:.2f} | {r['batch_s']:.2f} | "
                     f"{r['ratio']:.2f}x | {r['same_answers']}/{r['answers']} | {r['output_tokens']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tokens in sorted({r["trajectory_tokens"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["trajectory_tokens"] == tokens]
        ax.plot([r["queries"] for r in rows], [r["ratio"] for r in rows], marker="o", label=f"{tokens:,} tokens")
    ax.axhline(0.4, color="grey", linestyle="--", linewidth=1, label="target at 8 queries (0.4x)")
    ax.set_xlabel("queries in the batch")
    ax.set_ylabel("batch time / sequential time")
    ax.set_ylim(0, 1.1)
    ax.legend()
    ax.set_title("Batched briefing (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch_bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="known model name or converted folder (default: embedded)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000], help="trajectory tokens (default 1000 2000)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16], help="queries per batch (default 1 4 8 16)")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is reported (default 3)")
    p.add_argument("--out", default=OUT, help=f"where batch_bench.json and .png go (default {OUT})")
    p.add_argument("--readme", action="store_true", help="rewrite the batch-bench block of docs/benchmarks.md")
    p.add_argument("--report", metavar="JSON", help="no run: the table of a batch_bench.json")
    args = p.parse_args(argv)
    if any(n < 1 or n > len(QUESTIONS) for n in args.sizes):
        p.error(f"--sizes: each must be between 1 and {len(QUESTIONS)}")
    if args.report:
        result = json.loads(Path(args.report).read_text())
    else:
        import briefing

        lm = briefing.load_model(args.model, device=args.device, dtype=args.dtype)
        given = sys.argv[1:] if argv is None else argv
        result = dict(command=" ".join(["python -m benchmarks.batch_bench", *given]), model=lm.name,
                      device=str(lm.device), dtype=str(lm.dtype).replace("torch.", ""), repeats=args.repeats,
                      machine=f"{platform.machine()}, {os.cpu_count()} cores", rows=[])
        for tokens in args.lengths:
            result["rows"] += measure(lm, tokens, args.sizes, args.repeats)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "batch_bench.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(result, out / "batch_bench.png")
        print(f"wrote {out / 'batch_bench.json'} and {out / 'batch_bench.png'}")
    print(markdown(result), end="")
    if args.readme:
        readme.write_block(BLOCK, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
