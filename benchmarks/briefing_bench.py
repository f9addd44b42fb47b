"""Benchmark of the briefing engine on the embedded model: printed figures, JSON and a PNG plot.

    python -m benchmarks.briefing_bench [--lengths 1024 2048 4096 7900] [--out bench_out/briefing] [--quick]

Per trajectory length (essay text): full prefill time, incremental extend of a 200-token delta, compaction
time by phase, kept ratio for tau in {-1, 0, 1, 2}, answer KL vs the full cache for the fitted compaction
and for top-k at the same kept count (10%), and per-token decode time on the full vs compacted cache.
The anchor case reproduces kvpress's setup from the design notes (avg.txt, first 9,000 characters) and measures
the levers (per-head selection, prompt KV reuse, score smoothing). No figure is typed in: kvpress itself runs
beside our selectors in one process only in the side-by-side comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import briefing
from briefing import kv
from briefing.metrics import answer_kl
from benchmarks.readme import update_readme
from rlm.data import data_dir, essay_names, read_essay

REPEATS = 3

QUESTION = ("\n\nQuestion: According to the text above, what does the author say about how startups should "
            "treat their early users? Answer:")
ANSWER = " The author says that startups should"
VARIANTS = {  # name -> selector factory(ratio); the first is the default AttentionMatching
    "fit, per-head, prompt KV reused, smoothing 5, look-ahead 8 (default)":
        lambda r: briefing.AttentionMatching(ratio=r),
    "fit, no look-ahead (the previous default)": lambda r: briefing.AttentionMatching(ratio=r, look_ahead=0),
    "fit, shared mask": lambda r: briefing.AttentionMatching(ratio=r, per_head=False, smooth_kernel=1),
    "fit, prompt recomputed on compacted cache": lambda r: briefing.AttentionMatching(ratio=r, reuse_prompt_kv=False),
    "fit, no smoothing": lambda r: briefing.AttentionMatching(ratio=r, smooth_kernel=1),
    "fit, shared mask, recomputed prompt, no smoothing, no look-ahead (prototype)":
        lambda r: briefing.AttentionMatching(ratio=r, per_head=False, reuse_prompt_kv=False, smooth_kernel=1,
                                             look_ahead=0),
    "top-k, per-head, look-ahead 8 (the default without its fit)": lambda r: briefing.TopK(ratio=r),
    "top-k, per-head, smoothing 5, no look-ahead (SnapKV-like)": lambda r: briefing.TopK(ratio=r, look_ahead=0),
    "top-k, shared mask, no smoothing, no look-ahead": lambda r: briefing.TopK(ratio=r, per_head=False, smooth_kernel=1,
                                                                               look_ahead=0),
}
RATIOS = (0.5, 0.2, 0.1, 0.05)


def block_names(result: dict) -> tuple[str, str]:
    """The docs blocks of a result: `briefing-anchor` and `briefing-lengths` for the embedded model, suffixed with
    the model's key for another (`briefing-anchor-gemma3-270m`)."""
    key = result.get("model_key") or "smollm2-135m"
    suffix = "" if key == "smollm2-135m" else f"-{key}"
    return f"briefing-anchor{suffix}", f"briefing-lengths{suffix}"


def readme_tables(result: dict) -> dict[str, str]:
    """The briefing tables of docs/benchmarks.md (blocks `briefing-anchor`, `briefing-lengths`, see `block_names`)
    from a result JSON."""
    anchor = result["anchor"]
    rows = ["| method (answer KL, lower is better) | 50% kept | 20% | 10% | 5% |", "|---|---|---|---|---|"]
    for name, kls in anchor["ours"].items():
        kls = {float(k): v for k, v in kls.items()}  # JSON keys are strings
        rows.append(f"| {name} | " + " | ".join(f"{kls[r]:.4f}" for r in RATIOS) + " |")
    gaps = ", ".join(f"{k}: {v:.2f}" for k, v in result["copy_logprob_gap"].items())
    anchor_block, lengths_block = block_names(result)
    named = f"{result['model']}, {result.get('dtype', 'float32')} on {result.get('device', 'cpu')}: "
    tables = {anchor_block: named + "\n\n" + "\n".join(rows) + "\n\n"
              f"{anchor['trajectory_tokens']:,} trajectory tokens. "
              f"No trajectory at all: {anchor['no trajectory']:.4f}. Exact-value recall, mean log-prob gap of the "
              f"exact answer to the full cache (tau 1, by smoothing kernel; lower is better): {gaps}."}
    rows = ["| tokens | full prefill | extend +200 | compaction (score / beta / values) | % of prefill | kept at tau "
            "-1 / 0 / 1 / 2 "
            "| answer KL at 10%: fit / top-k | decode per token: full / compacted |",
            "|---|---|---|---|---|---|---|---|"]
    for r in result["lengths"]:
        c = r["compaction_default_tau1"]
        kept = " / ".join(f"{v:.2f}" for v in r["kept_ratio_by_tau"].values())
        rows.append(f"| {r['tokens']:,} | {r['prefill_s']:.2f} s | {r['extend_s']:.2f} s | {c['time_total_s']:.2f} s "
                    f"({c['time_score_s']:.2f} / {c['time_beta_s']:.2f} / {c['time_values_s']:.2f}) | "
                    f"{c['time_total_s'] / r['prefill_s']:.1%} | {kept} | {r['kl_fit_10pct']:.4f} / "
                    f"{r['kl_topk_10pct']:.4f} | "
                    f"{r['decode_full_s_per_token'] * 1e3:.1f} / {r['decode_compacted_s_per_token'] * 1e3:.1f} ms |")
    growth = result.get("compaction_growth_last_two")
    tail = (f"\n\nCompaction time growth {growth['from']:,} -> {growth['to']:,} tokens: x{growth['ratio']:.2f}."
            if growth else "")
    load = result.get("load_average_at_start")
    if not result["lengths"]:
        return tables
    at_start = f" Load average at start: {load[0]:.2f}." if load else ""
    tables[lengths_block] = named + "\n\n" + "\n".join(rows) + tail + at_start
    return tables


def essay_text(min_chars: int) -> str:
    """avg.txt first (the question is about it), then the other essays, until `min_chars`."""
    names = ["avg.txt"] + [n for n in essay_names() if n != "avg.txt"]
    text = ""
    for name in names:
        text += read_essay(name) + "\n\n"
        if len(text) >= min_chars:
            break
    return text


def anchor_case(lm) -> dict:
    cache = briefing.TrajectoryCache(lm, (data_dir() / "pg_essays" / "avg.txt").read_text()[:9000])
    full = cache.compact(QUESTION, briefing.KeepAll())
    rows = {"trajectory_tokens": cache.length, "ours": {}}
    for name, make in VARIANTS.items():
        rows["ours"][name] = {r: answer_kl(full, cache.compact(QUESTION, make(r)), ANSWER) for r in (0.5, 0.2, 0.1,
                                                                                                     0.05)}
    rows["no trajectory"] = answer_kl(full, cache.compact(QUESTION, briefing.KeepNone()), ANSWER)
    return rows


COPY_FACTS = [  # (fact planted mid-trajectory, question, exact answer): digits are one token each in SmolLM2
    ("The vault code is 4721.", "What is the vault code?", "4721"),
    ("Note: the shipment number recorded in section 2 is 83915.", "What is the shipment number recorded in section 2?",
     "83915"),
    ("REPL output: total = 10,000 users", "How many users in total?", "10,000"),
]


def copy_caches(lm, importance: bool = False):
    """The exact-value recall cases: (cache, prompt, answer, log-likelihood of the answer on the full cache) for each
    fact of COPY_FACTS planted mid-trajectory in chat format; `importance`: the caches score it (for selectors that
    read it)."""
    essay = (data_dir() / "pg_essays" / "avg.txt").read_text()[:1500]
    system = "You are a worker. Here is the orchestrator's trajectory so far:\n\n"
    for fact, question, answer in COPY_FACTS:
        chat = lm.chat_prompt(system + essay[:700] + "\n" + fact + "\n" + essay[700:], question)
        split = chat.rindex(question)
        cache = briefing.TrajectoryCache(lm, chat[:split], importance=importance)
        prompt = chat[split:]
        yield cache, prompt, " " + answer, briefing.loglikelihood(cache.compact(prompt, briefing.KeepAll()),
                                                                  " " + answer)


def copy_case(lm) -> dict:
    """Exact-value recall: log-likelihood of the exact answer (chat format, tau = 1) by smoothing kernel,
    as a gap to the full cache (0 is perfect)."""
    gaps: dict[str, list[float]] = {}
    for cache, prompt, answer, full in copy_caches(lm):
        for kernel in (1, 3, 5):
            ctx = cache.compact(prompt, briefing.AttentionMatching(tau=1.0, smooth_kernel=kernel))
            gaps.setdefault(f"smooth {kernel}", []).append(full - briefing.loglikelihood(ctx, answer))
    return {name: sum(v) / len(v) for name, v in gaps.items()}


def length_case(lm, target: int, text: str, decode_tokens: int) -> dict:
    ids = lm.encode(text)[:target]
    body = lm.decode(ids)
    cache = briefing.TrajectoryCache(lm, fold=None)  # the whole window, unfolded
    t0 = time.perf_counter()
    cache.extend(body)
    prefill_s = time.perf_counter() - t0
    base_tokens = cache.length
    delta = lm.decode(lm.encode(text[len(body):len(body) + 2000])[:200])
    extend_times = []
    for _ in range(REPEATS):  # on clones; the min of repeats resists a shared machine's noise
        probe = briefing.TrajectoryCache(lm, fold=None)
        probe.text, probe.ids, probe.kv = cache.text, list(cache.ids), kv.build(*kv.layer_kv(cache.kv))
        t0 = time.perf_counter()
        new_tokens = probe.extend(delta)
        extend_times.append(time.perf_counter() - t0)
    cache.extend(delta)
    row = {"tokens": base_tokens, "tokens_after_extend": cache.length, "prefill_s": prefill_s,
           "extend_tokens": new_tokens, "extend_s": min(extend_times)}
    runs = [cache.compact(QUESTION, briefing.AttentionMatching(tau=1.0)).stats for _ in range(REPEATS)]
    row["compaction_default_tau1"] = min(runs, key=lambda st: st.time_total_s).model_dump()
    row["kept_ratio_by_tau"] = {tau: cache.compact(QUESTION, briefing.AttentionMatching(tau=tau)).stats.kept_ratio
                               for tau in (-1.0, 0.0, 1.0, 2.0)}
    full = cache.compact(QUESTION, briefing.KeepAll())
    fitted = cache.compact(QUESTION, briefing.AttentionMatching(ratio=0.1))
    topk = cache.compact(QUESTION, briefing.TopK(ratio=0.1))
    row["compaction_10pct"] = fitted.stats.model_dump()
    row["kl_fit_10pct"] = answer_kl(full, fitted, ANSWER)
    row["kl_topk_10pct"] = answer_kl(full, topk, ANSWER)
    cfg = briefing.GenerationConfig(max_new_tokens=decode_tokens, ignore_eos=True)
    row["decode_full_s_per_token"] = briefing.generate(full, cfg).time_per_token_s
    row["decode_compacted_s_per_token"] = briefing.generate(fitted, cfg).time_per_token_s
    return row


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["lengths"]
    n = [r["tokens"] for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    a = ax[0, 0]
    a.plot(n, [r["prefill_s"] for r in rows], "o-", label="full prefill")
    a.plot(n, [r["compaction_default_tau1"]["time_total_s"] for r in rows], "o-", label="compaction (tau=1)")
    a.plot(n, [r["extend_s"] for r in rows], "o-", label="extend, 200-token delta")
    a.set(xlabel="trajectory tokens", ylabel="seconds", title="Time vs trajectory length")
    a.legend()
    a = ax[0, 1]
    bottom = [0.0] * len(rows)
    for phase in ("score", "select", "beta", "values", "prompt"):
        vals = [r["compaction_default_tau1"][f"time_{phase}_s"] for r in rows]
        a.bar([str(x) for x in n], vals, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, vals)]
    a.set(xlabel="trajectory tokens", ylabel="seconds", title="Compaction time by phase (tau=1)")
    a.legend()
    a = ax[1, 0]
    a.plot(n, [r["kl_fit_10pct"] for r in rows], "o-", label="fitted (beta + C2)")
    a.plot(n, [r["kl_topk_10pct"] for r in rows], "o-", label="top-k only")
    a.set(xlabel="trajectory tokens", ylabel="answer KL vs full", title="10% kept", yscale="log")
    a.legend()
    a = ax[1, 1]
    anchor = result["anchor"]
    ratios = [0.5, 0.2, 0.1, 0.05]
    for name in [n for i, n in enumerate(anchor["ours"]) if i == 0 or "SnapKV-like" in n]:
        kls = {float(k): v for k, v in anchor["ours"][name].items()}  # JSON keys are strings
        a.plot(ratios, [kls[r] for r in ratios], "o-", lw=2, label=f"ours: {name}")
    a.set(xlabel="kept ratio", ylabel="answer KL vs full", title="Anchor: avg.txt, 9,000 chars", xscale="log",
          yscale="log")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.briefing_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 2048, 4096, 7900],
                        help="trajectory lengths of the cost table (none: the anchor table only)")
    parser.add_argument("--model", default=None, help="a known name (smollm2-135m, gemma3-270m) or a model folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="bench_out/briefing")
    parser.add_argument("--quick", action="store_true", help="lengths 512 and 1024 only")
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the briefing tables in docs/benchmarks.md from the result")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="no run: rewrite the briefing tables in docs/benchmarks.md (and the plot) from this JSON")
    args = parser.parse_args(argv)
    if args.report:
        result = json.loads(Path(args.report).read_text())
        for block, text in readme_tables(result).items():
            update_readme(block, text)
        plot(result, Path(args.report).with_suffix(".png"))
        print(f"docs/benchmarks.md briefing tables and {Path(args.report).with_suffix('.png')} regenerated from "
              f"{args.report}")
        return 0
    lengths = [512, 1024] if args.quick else args.lengths
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = briefing.load_model(args.model, device=args.device, dtype=args.dtype)
    text = essay_text(max(lengths, default=0) * 6 + 4000)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                         f"{__import__('torch').get_num_threads()}",
              "model": lm.name, "model_key": args.model or "smollm2-135m", "device": lm.device.type,
              "dtype": str(lm.dtype).removeprefix("torch."), "load_average_at_start": os.getloadavg(),
              "anchor": anchor_case(lm), "lengths": []}
    print(f"anchor ({result['anchor']['trajectory_tokens']} tokens), answer KL vs full cache:")
    print(f"  {'method':<62} " + " ".join(f"{r:>7}" for r in ("50%", "20%", "10%", "5%")))
    for name, kls in result["anchor"]["ours"].items():
        print(f"  {name:<62} " + " ".join(f"{kls[r]:7.4f}" for r in (0.5, 0.2, 0.1, 0.05)))
    print(f"  no trajectory: {result['anchor']['no trajectory']:.4f}")
    result["copy_logprob_gap"] = copy_case(lm)
    print("exact-value recall, mean log-prob gap to the full cache (lower is better): "
          + ", ".join(f"{k}: {v:.2f}" for k, v in result["copy_logprob_gap"].items()))
    for target in lengths:
        row = length_case(lm, target, text, args.decode_tokens)
        result["lengths"].append(row)
        c = row["compaction_default_tau1"]
        print(f"T={row['tokens']:5d} prefill {row['prefill_s']:6.2f}s extend(200) {row['extend_s']:5.2f}s | "
              f"compaction {c['time_total_s']:.3f}s (score {c['time_score_s']:.3f} select {c['time_select_s']:.3f} "
              f"beta {c['time_beta_s']:.3f} values {c['time_values_s']:.3f}) = "
              f"{c['time_total_s'] / row['prefill_s']:.1%} "
              f"of prefill | kept@tau " + " ".join(f"{t:+.0f}:{v:.2f}" for t, v in row["kept_ratio_by_tau"].items())
              + f" | KL@10% fit {row['kl_fit_10pct']:.4f} top-k {row['kl_topk_10pct']:.4f} | decode/token full "
              f"{row['decode_full_s_per_token'] * 1e3:.1f}ms compacted "
              f"{row['decode_compacted_s_per_token'] * 1e3:.1f}ms")
    rows = result["lengths"]
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        growth = b["compaction_default_tau1"]["time_total_s"] / a["compaction_default_tau1"]["time_total_s"]
        result["compaction_growth_last_two"] = {"from": a["tokens"], "to": b["tokens"], "ratio": growth}
        print(f"compaction time growth {a['tokens']} -> {b['tokens']} tokens: x{growth:.2f}")
    result["load_average_at_end"] = os.getloadavg()
    (out / "briefing_bench.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "briefing_bench.png")
    print(f"wrote {out / 'briefing_bench.json'} and {out / 'briefing_bench.png'}")
    if args.readme:
        for block, text in readme_tables(result).items():
            update_readme(block, text)
        print("docs/benchmarks.md briefing tables regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
