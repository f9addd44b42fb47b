"""Why a selection wins or loses: how much of the answer-bearing statements each selection keeps.

    python -m benchmarks.rlm_bench.diagnose [--families updated_fact ...] [--depths late ...] [--per-cell 2]

On development seeds only. For every episode and condition (Attention Matching at tau 1, top-k and
sink+recent window at its kept count, Attention Matching with a protected recent window), it reports the
share of the target statements' tokens kept (averaged over layers and KV heads), the share of the trajectory
kept, whether the choice is right and the choice KL to full text. Writes diagnose.json and diagnose.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import briefing
from benchmarks.rlm_bench.conditions import (
    FamilyRunner,
    ProtectedAttentionMatching,
    choice_kl,
    choose,
)
from benchmarks.rlm_bench.families import SPLITS, make_family_episode


def statement_positions(lm: Any, cache_text: str, offset: int, trajectory: str, statements: list[str]) -> list[int]:
    """Cache positions of the tokens of `statements` (each located in the trajectory, starting at `offset`)."""
    spans = []
    for st in statements:
        i = trajectory.find(st)
        if i >= 0:
            spans.append((offset + i, offset + i + len(st)))
    enc = lm.tokenizer(cache_text, add_special_tokens=False, return_offsets_mapping=True)
    return [p for p, (a, b) in enumerate(enc["offset_mapping"]) if any(a < e and b > s for s, e in spans)]


def coverage(ctx: Any, positions: list[int]) -> float:
    """Share of `positions` kept, averaged over (layer, KV head) rows of the compacted cache."""
    import torch

    if not positions or ctx.positions is None:
        return float("nan")
    want = torch.tensor(positions)
    kept = ctx.positions                                                          # [L, H, t]
    hit = (kept.unsqueeze(-1) == want).any(dim=-2)                                # [L, H, n]
    return float(hit.float().mean())


def diagnose(lm: Any, families: list[str], depths: list[str], per_cell: int, length: int) -> list[dict]:
    from agents.workers.prompt import WorkerPrompt

    prompts = WorkerPrompt.for_model(lm)
    rows = []
    for fam in families:
        for depth in depths:
            for j in range(per_cell):
                seed = SPLITS["dev"].start + 90_000 + j  # a dev sub-range not used by the suites' first seeds
                ep = make_family_episode(fam, seed, length, depth, count_tokens=lm.count_tokens)
                r = FamilyRunner(lm, prompts, ep, timing=False)
                cache_text = prompts.cache_text(ep.trajectory)
                pos = statement_positions(lm, cache_text, len(cache_text) - len(ep.trajectory), ep.trajectory,
                                          [f.statement for f in ep.facts if f.target])
                am = r.cache.compact(r.call_prompt, briefing.AttentionMatching(tau=1.0))
                k = int(am.stats.kept)
                sels = {"am_tau1": None, f"topk@{k}": briefing.TopK(tokens=k),
                        f"sink_recent@{k}": briefing.RecentWindow(tokens=k, sinks=4),
                        "am_tau1+recent32": ProtectedAttentionMatching(tau=1.0, recent=32)}
                for name, sel in sels.items():
                    ctx = am if sel is None else r.cache.compact(r.call_prompt, sel)
                    choice, scores = choose(ctx, ep.candidates, ep.answer_prefix)
                    rows.append({"episode": ep.id, "family": fam, "depth": depth, "T": r.T,
                                 "condition": name.split("@")[0],
                                 "kept_ratio": int(ctx.stats.kept) / r.T, "answer_coverage": coverage(ctx, pos),
                                 "fact_offset": ep.fact_offset, "correct": choice == ep.answer,
                                 "full_correct": r.full_choice == ep.answer,
                                 "choice_kl": choice_kl(r.full_scores, scores)})
                    del ctx
    return rows


def markdown(rows: list[dict]) -> str:
    from collections import defaultdict

    import numpy as np

    g = defaultdict(list)
    for r in rows:
        g[(r["family"], r["depth"], r["condition"])].append(r)
    lines = ["# Selection diagnosis (development seeds)", "",
             "answer coverage: share of the target statements' tokens kept (mean over layers and KV heads).", "",
             "| family | depth | condition | n | kept ratio | answer coverage | accuracy | full accuracy | median "
             "choice KL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (f, d, c), rs in g.items():
        lines.append(f"| {f} | {d} | {c} | {len(rs)} | {np.mean([r['kept_ratio'] for r in rs]):.3f} | "
                     f"{np.mean([r['answer_coverage'] for r in rs]):.2f} | {np.mean([r['correct'] for r in rs]):.2f} | "
                     f"{np.mean([r['full_correct'] for r in rs]):.2f} | "
                     f"{np.median([r['choice_kl'] for r in rs]):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rlm_bench.diagnose", description=__doc__.split("\n")[0])
    p.add_argument("--families", nargs="+", default=["updated_fact", "single_key", "variable_tracking"])
    p.add_argument("--depths", nargs="+", default=["early", "late"])
    p.add_argument("--per-cell", type=int, default=2)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--out", default="bench_out/rlm_bench/diagnose")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = diagnose(briefing.load_model(), args.families, args.depths, args.per_cell, args.length)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnose.json").write_text(json.dumps(rows, indent=1))
    (out / "diagnose.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
