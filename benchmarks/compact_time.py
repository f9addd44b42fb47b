"""Per-call compaction time of the shipped default selector against the opt-in global allocation of the importance
(issue 28's "per-call compaction time grows by no more than 10%"), on one cache, min and median of N.

    OMP_NUM_THREADS=1 python -m benchmarks.compact_time [--tokens 2048] [--ratio 0.1] [--repeats 5] [--out JSON]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import briefing
from rlm.data import essay_names, read_essay

PROMPT = "Question: how does the passage continue after its middle sentence?\nAnswer:"


def selectors(ratio: float) -> dict[str, briefing.Selector]:
    return {"shipped default (uniform, look-ahead 8)": briefing.AttentionMatching(ratio=ratio),
            "global allocation, importance only, fit, sinks 4": briefing.AttentionMatching(
                ratio=ratio, allocation="global", agnostic=1.0, sinks=4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048, help="trajectory tokens (about; the essay's first ones)")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    args = p.parse_args(argv)
    lm = briefing.load_model()
    text = "\n".join(read_essay(n) for n in essay_names()[:3])
    ids = lm.encode(text)[:args.tokens]
    cache = briefing.TrajectoryCache(lm, importance=True)   # the global allocation reads the importance
    cache.extend(lm.decode(ids))
    out = dict(tokens=cache.length, ratio=args.ratio, repeats=args.repeats, model=lm.name,
               load_average=os.getloadavg(), threads=torch.get_num_threads(), seconds={})
    for name, sel in selectors(args.ratio).items():
        cache.compact(PROMPT, sel)   # warm
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cache.compact(PROMPT, sel)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        out["seconds"][name] = dict(min=ts[0], median=ts[len(ts) // 2])
        print(f"{name}: min {ts[0]:.3f} s, median {ts[len(ts) // 2]:.3f} s ({cache.length} tokens)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
