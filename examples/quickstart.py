"""Quickstart: answer a question about an essay with the chunk-scan policy and a briefed worker.

    .venv/bin/python examples/quickstart.py [--worker briefed|text|plain] [--log runs/quickstart.jsonl]

Offline: the worker is the embedded SmolLM2-135M; its view of the orchestrator's trajectory is a
KV cache compacted against each worker query (latent briefing). Then try `rlm view` on the log.
"""
from __future__ import annotations

import argparse

import briefing
from agents import ChunkScanPolicy, make_worker
from rlm import RLM, Budgets
from rlm.data import read_essay


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default="briefed", choices=["briefed", "text", "plain"])
    ap.add_argument("--essay", default="foundervisa.txt")
    ap.add_argument("--query", default="What new kind of visa does the author propose?")
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)

    lm = briefing.load_model()                              # embedded SmolLM2-135M-Instruct
    worker = make_worker(args.worker, lm=lm, max_new_tokens=48)
    rlm = RLM(ChunkScanPolicy(chunk_chars=600), worker, budgets=Budgets(max_iterations=16), log_path=args.log)
    result = rlm.run(args.query, read_essay(args.essay))

    print("Answer:", result.answer)
    print("Stop reason:", result.stop_reason, "| worker calls:", result.worker_calls, f"| {result.wall_s:.1f}s")
    print(result.usage_table())
    print("\n".join(result.graph_summary.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
