"""Issue 28's per-call targets for the shipped default selector and the opt-in global and hybrid allocations of the
importance, on the anchor question (`benchmarks.briefing_bench`: avg.txt, then the other essays up to the length):

- per-call compaction time ("grows by no more than 10%"), min and median of N;
- answer KL to the full cache at the ratio, with the fit and with top-k alone (the same selection, no fit):
  "at 10% kept the fit's KL stays at most 0.5x top-k's, at 2k and at 8k tokens";
- what the per-call context costs after it: 16 decoded tokens (min of 3), and the slots its held layers hold (a
  global allocation's layers each at their widest row) for the slots kept;
- the importance's cost at extend, as a share of the prefill ("at most 1x"): the build with the median ratio of N.

    OMP_NUM_THREADS=1 python -m benchmarks.compact_time [--tokens 2048 7900] [--ratio 0.1] [--repeats 5]
        [--extends N] [--out JSON] [--readme]
    python -m benchmarks.compact_time --report JSON [--readme]     # the table of a committed run
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

import briefing
from benchmarks import readme
from benchmarks.briefing_bench import ANSWER, QUESTION, essay_text
from benchmarks.selection_bench import HYBRID, PICK, VARIANTS, scored_cache
from briefing.metrics import answer_kl


BLOCK = "compact-time"   # its table in docs/benchmarks.md (--readme)
DECODE = briefing.GenerationConfig(max_new_tokens=16, ignore_eos=True)   # per-token cost over the context


def selectors(ratio: float) -> dict[str, briefing.Selector]:
    return {"shipped default (uniform, look-ahead 8)": briefing.AttentionMatching(ratio=ratio),
            "global allocation, importance only, fit, sinks 4": briefing.AttentionMatching(
                ratio=ratio, allocation="global", agnostic=1.0, sinks=4),
            PICK: VARIANTS[PICK](ratio=ratio),
            HYBRID: VARIANTS[HYBRID](ratio=ratio)}


def anchor_text(lm, tokens: int) -> str:
    """The anchor's trajectory at `tokens` tokens: avg.txt, then the other essays, cut to that many tokens."""
    return lm.decode(lm.encode(essay_text(tokens * 8))[:tokens])


def length_row(lm, tokens: int, ratio: float, repeats: int, importance_window: int | None = None,
               extends: int = 1) -> dict:
    """extends: the scored cache is built that many times (each build's times in the row's `extends`); the row's
    prefill and importance are the build with the median importance / prefill ratio (the upper one for an even
    count). The selectors run on the last build's cache (every build holds the same keys and values)."""
    builds, cache = [], None
    for _ in range(extends):
        cache = None   # one cache at a time
        t0 = time.perf_counter()
        cache = scored_cache(lm, anchor_text(lm, tokens), importance_window)   # the global allocation reads it
        builds.append(dict(prefill_s=cache.prefill_s, importance_s=cache.importance_s,
                           extend_with_importance_s=time.perf_counter() - t0))
    median = sorted(builds, key=lambda b: b["importance_s"] / b["prefill_s"])[len(builds) // 2]
    row = dict(tokens=cache.length, **median, selectors={}, extends=builds)
    full = cache.compact(QUESTION, briefing.KeepAll())
    for name, sel in selectors(ratio).items():
        cache.compact(QUESTION, sel)   # warm
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fitted = cache.compact(QUESTION, sel)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        topk = cache.compact(QUESTION, replace(sel, fit=None))                    # the same selection, no fit
        decode = []
        for _ in range(3):
            t0 = time.perf_counter()
            briefing.generate(fitted, DECODE)
            decode.append(time.perf_counter() - t0)
        prompt = len(fitted.prompt_ids)
        slots = sum(fitted.kv.layers[i].keys.shape[-2] - prompt for i in cache.store.held) * lm.kv_heads
        row["selectors"][name] = dict(min_s=ts[0], median_s=ts[len(ts) // 2], kl_fit=answer_kl(full, fitted, ANSWER),
                                      kl_topk=answer_kl(full, topk, ANSWER), decode_s=min(decode),
                                      context_slots=slots, kept_slots=int((fitted.positions >= 0).sum()))
        r = row["selectors"][name]
        print(f"{cache.length} tokens | {name}: compaction min {ts[0]:.3f} s, median {ts[len(ts) // 2]:.3f} s | "
              f"answer KL at {ratio:.0%}: fit {r['kl_fit']:.4f}, top-k {r['kl_topk']:.4f} "
              f"({r['kl_fit'] / max(r['kl_topk'], 1e-12):.2f}x) | decode {DECODE.max_new_tokens} tokens "
              f"{r['decode_s']:.3f} s | context {slots:,} slots for {r['kept_slots']:,} kept", flush=True)
    print(f"{cache.length} tokens | extend with the importance {row['extend_with_importance_s']:.1f} s: prefill "
          f"{row['prefill_s']:.1f} s, importance {row['importance_s']:.1f} s "
          f"({row['importance_s'] / max(row['prefill_s'], 1e-9):.2f}x prefill)", flush=True)
    return row


def table(result: dict) -> str:
    names = list(result["lengths"][0]["selectors"])   # as run (a file from before a selector was added has fewer)
    default = names[0]
    lines = [f"SmolLM2-135M-Instruct, float32 on a {result['threads']}-thread CPU, anchor question, "
             f"{result['ratio']:.0%} kept; compaction time min of {result['repeats']} (median):", "",
             "| tokens | selector | compaction | vs default | answer KL: fit / top-k | fit / top-k | "
             f"decode {DECODE.max_new_tokens} tokens (min of 3) | context slots (kept) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["lengths"]:
        base = row["selectors"][default]["min_s"]
        for name in names:
            r = row["selectors"][name]
            lines.append(f"| {row['tokens']:,} | {name} | {r['min_s']:.3f} s ({r['median_s']:.3f} s) | "
                         f"{r['min_s'] / base:.2f}x | {r['kl_fit']:.4f} / {r['kl_topk']:.4f} | "
                         f"{r['kl_fit'] / max(r['kl_topk'], 1e-12):.2f}x | {r['decode_s']:.3f} s "
                         f"({r['decode_s'] / row['selectors'][default]['decode_s']:.2f}x) | "
                         f"{r['context_slots']:,} ({r['kept_slots']:,}) |")
    lines.append("")
    cost = "; ".join(f"{row['tokens']:,} tokens {row['importance_s']:.1f} s = "
                     f"{row['importance_s'] / row['prefill_s']:.2f}x the prefill's {row['prefill_s']:.1f} s"
                     + spread(row.get("extends", [])) for row in result["lengths"])
    lines.append(f"Importance at extend (the global allocation reads it): {cost}. Load average at start: "
                 f"{result['load_average'][0]:.2f}.")
    return "\n".join(lines)


def spread(builds: list[dict]) -> str:
    """' (the median of N builds, ratios lo-hi)' where the cache was built more than once, else ''."""
    if len(builds) < 2:
        return ""
    ratios = sorted(b["importance_s"] / b["prefill_s"] for b in builds)
    return f" (the median of {len(ratios)} builds, {ratios[0]:.2f}-{ratios[-1]:.2f}x)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 7900], help="trajectory lengths (tokens)")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures here as JSON, and the table beside it (.md)")
    p.add_argument("--importance-window", type=int, default=None, help="tokens the importance reconstructs at a "
                   "time (default: briefing.TrajectoryCache's)")
    p.add_argument("--readme", action="store_true", help=f"rewrite the {BLOCK} block of docs/benchmarks.md")
    p.add_argument("--report", metavar="JSON", help="no run: the table of a compact_time JSON")
    p.add_argument("--extends", type=int, default=1, help="build the scored cache this many times per length and "
                   "report the build with the median importance / prefill ratio (the upper one for an even count; "
                   "default 1)")
    args = p.parse_args(argv)
    if args.extends < 1:
        p.error(f"--extends {args.extends}: give a positive number of builds")
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: give a positive number of timed compactions")
    if not 0 < args.ratio <= 1:
        p.error(f"--ratio {args.ratio}: give the share of positions kept, in (0, 1]")
    if any(t < 1 for t in args.tokens):
        p.error(f"--tokens {' '.join(map(str, args.tokens))}: give positive trajectory lengths")
    if args.importance_window is not None and args.importance_window < 1:
        p.error(f"--importance-window {args.importance_window}: give a positive number of tokens")
    if args.report and args.out:
        p.error("--out: --report writes no JSON (it tables the one given); drop one of them")
    if not args.report and args.readme and not args.out:
        p.error("--readme: give --out too, so that the docs block has its JSON (a test checks one against the other)")
    if args.report:
        try:
            md = table(json.loads(Path(args.report).read_text()))
        except (OSError, ValueError, KeyError, IndexError) as e:
            p.error(f"--report {args.report}: not a readable compact_time JSON ({type(e).__name__}: {e})")
        print(md)
        if args.readme:
            readme.write_block(BLOCK, md)
        return 0
    lm = briefing.load_model()
    result = dict(ratio=args.ratio, repeats=args.repeats, extends=args.extends, model=lm.name,
                  load_average=os.getloadavg(), threads=torch.get_num_threads(),
                  importance_window=args.importance_window, lengths=[])
    for tokens in args.tokens:
        result["lengths"].append(length_row(lm, tokens, args.ratio, args.repeats, args.importance_window,
                                            args.extends))
    md = table(result)
    print(md)
    if args.readme:
        readme.write_block(BLOCK, md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
