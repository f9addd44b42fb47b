"""Report of the family suite: results.md, PNG plots and the block of docs/benchmarks.md, all from results.json."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.readme import replace_block


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    if len(set(xs)) < 2:
        return None
    import numpy as np

    x, y = np.asarray(xs, float), np.asarray(ys, float)
    slope, icpt = np.polyfit(x, y, 1)
    pred = slope * x + icpt
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    quad = np.polyfit(x, y, 2) if len(set(xs)) >= 3 else None
    return {"slope_s_per_token": float(slope), "intercept_s": float(icpt), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "quadratic_coef": float(quad[0]) if quad is not None else None, "points": len(xs)}


def overhead_fits(rows: list[dict]) -> dict[str, Any]:
    """Compaction overhead (latent briefing rows) and end-to-end call latency vs trajectory tokens."""
    lb = [r for r in rows if r["method"] == "latent_briefing"]
    full = [r for r in rows if r["method"] == "full"]
    return {"compaction_overhead": linear_fit([r["trajectory_tokens"] for r in lb], [r["overhead_s"] for r in lb]),
            "latency_latent_briefing": linear_fit([r["trajectory_tokens"] for r in lb], [r["latency_s"] for r in lb]),
            "prefill": linear_fit([r["trajectory_tokens"] for r in full], [r["prefill_s"] for r in full])}


HEADLINE = ["full", "plain", "am_tau1", "am_tau1+recent32", "topk@am_tau1", "random@am_tau1", "sink_recent@am_tau1",
            "am_b0.1", "am_recent_b0.1", "topk_b0.1", "random_b0.1", "sink_recent_b0.1", "am_b0.2", "bm25_r0.1",
            "bm25+am_b0.1", "summary"]


def at_settings(result: dict, names) -> list[str]:
    """`names` (written for the suite's defaults) at the run's own settings, each name once: the fixed-ratio
    conditions' 10% (`*_b0.1`) at its kept share (`--budget`), tau 1 (`am_tau1`) at its tau (`--tau`) and the
    protected window (`+recent32`) at its own (`--recent`)."""
    suite = result.get("config", {}).get("suite", {})
    b, tau, recent = suite.get("budget", 0.1), suite.get("tau", 1.0), suite.get("recent", 32)

    def own(n: str) -> str:
        n = n.removesuffix("_b0.1") + f"_b{b:g}" if n.endswith("_b0.1") else n
        return n.replace("am_tau1", f"am_tau{tau:g}").replace("+recent32", f"+recent{recent}")

    return list(dict.fromkeys(own(n) for n in names))


LABELS = {"full": "text, prefix-KV reuse (full)", "plain": "plain (no trajectory)", "summary": "worker-model summary"}
README_BEGIN, README_END = "<!-- rlm-bench:begin -->", "<!-- rlm-bench:end -->"


def _ci(x: dict, key: str, pct: bool = False) -> str:
    v, (lo, hi) = x[key], x[f"{key}_ci95"]
    if pct:
        return f"{v:.1%} [{lo:.1%}, {hi:.1%}]"
    return f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]" if key.startswith("diff") else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def headline_rows(result: dict) -> list[dict]:
    s = {x["condition"]: x for x in result["summary"]}
    head = at_settings(result, HEADLINE)
    names = [c for c in head if c in s] + [c for c in s if c not in head and not c.startswith("sweep_")]
    return [s[c] for c in names]


def headline_table(result: dict) -> list[str]:
    lines = [("| condition | accuracy [95% CI] | vs full text [95% CI] | worker input tokens saved [95% CI] | "
             "median choice KL | median latency s (vs full) |"), "|---|---|---|---|---|---|"]
    for x in headline_rows(result):
        lat = "" if x.get("latency_vs_full") is None else f" ({x['latency_vs_full']:.2f}x)"
        lines.append(f"| {LABELS.get(x['condition'], x['condition'])} | {_ci(x, 'accuracy')} | {_ci(x, 'diff_full')} | "
                     f"{_ci(x, 'token_reduction', pct=True)} | {x['choice_kl_median']:.3f} | "
                     f"{x['latency_s_median']:.2f}{lat} |")
    return lines


def p3_lines(result: dict) -> list[str]:
    ok = [x for x in result["summary"]
          if x.get("p3_supported") and x["method"] != "full" and not x["condition"].startswith("sweep_")]
    if ok:
        return [("- P3 (>= 80% fewer worker input tokens at accuracy within 2 points of full text) is supported by "
                 f"the intervals for: {', '.join(x['condition'] for x in ok)}.")]
    return [("- P3 (>= 80% fewer worker input tokens at accuracy within 2 points of full text) is **not** supported: "
             "no condition has both the lower end of its token-reduction interval >= 80% and the lower end of its "
             "accuracy difference from full text >= -0.02.")]


def family_table(result: dict, conditions: list[str]) -> list[str]:
    fam = result["by_family"]
    lines = ["| family | n | chance | " + " | ".join(LABELS.get(c, c) for c in conditions) + " |",
             "|---|---|---|" + "---|" * len(conditions)]
    for f, xs in fam.items():
        s = {x["condition"]: x for x in xs}
        full = s.get("full")
        flag = " (full text near chance)" if full and full["accuracy_ci95"][0] <= full["chance"] else ""
        cells = [_ci(s[c], "accuracy") if c in s else "" for c in conditions]
        lines.append(f"| {f}{flag} | {xs[0]['n']} | {xs[0]['chance']:.2f} | " + " | ".join(cells) + " |")
    return lines


def group_table(result: dict, key: str, title: str, conditions: list[str]) -> list[str]:
    lines = [f"| {title} | n | " + " | ".join(LABELS.get(c, c) for c in conditions) + " |",
             "|---|---|" + "---|" * len(conditions)]
    for g, xs in result[key].items():
        s = {x["condition"]: x for x in xs}
        cells = [_ci(s[c], "accuracy") if c in s else "" for c in conditions]
        lines.append(f"| {g} | {xs[0]['n']} | " + " | ".join(cells) + " |")
    return lines


def breakdown_conditions(result: dict) -> list[str]:
    s = {x["condition"] for x in result["summary"]}
    names = ("full", "plain", "am_tau1", "topk@am_tau1", "sink_recent@am_tau1", "am_b0.1", "topk_b0.1", "bm25_r0.1")
    return [c for c in at_settings(result, names) if c in s]


def markdown(result: dict) -> str:
    conds = breakdown_conditions(result)
    lines = [f"# rlm bench results ({result['mode']}, {result['split']} seeds)", "",
             (f"Model: {result['model']}; {result['n_episodes']} episodes; lengths {result['lengths']}; families "
             f"{', '.join(result['families'])}; seeds {result['seed_range']}; machine: {result['machine']}; "
             f"workers {result['workers']}; wall time of the last invocation {result['wall_s']:.0f} s; compute time "
             f"summed over episodes {result.get('episodes_wall_s', 0.0):.0f} s (a resumed run counts the earlier "
             "ones)."), "", *share_lines(result), *contrast_lines(result),
             ("Accuracy: argmax over the candidates of the summed log-prob of the candidate after the answer lead-in "
             "(candidates of equal token count). Intervals: paired bootstrap 95% over episodes "
             f"({result['bootstrap']} replicates). Tokens saved: mean over episodes of 1 - worker input tokens / "
             "full-text input tokens. Choice KL: KL(full || condition) of the softmax over the candidates' scores. "
             "Latency: build (prompt forward, compaction, retrieval or summary) + a 12-token greedy decode."), "",
             *headline_table(result), "", *p3_lines(result), "", "## Per family", "", *family_table(result, conds), "",
             "## Per length (target tokens)", "", *group_table(result, "by_length", "length", conds), "",
             "## Per depth", "", *group_table(result, "by_depth", "depth", conds), "",
             ("Plots: pareto.png (accuracy vs tokens saved, with intervals), families.png (accuracy per family), "
             "latency.png (latency vs trajectory tokens)."), ""]
    return "\n".join(lines)


def share_lines(result: dict) -> list[str]:
    """The importance's share in its conditions where the run set one (`--importance-share`; nothing otherwise, as
    before the option: the selector's own 0.9)."""
    suite = result.get("config", {}).get("suite", {})
    share = suite.get("importance_share")
    if share is None:
        return []
    tag = f"am{suite['importance'][0]}"
    return [f"The importance's conditions ({tag}_*): {suite['importance']} allocation, importance share {share:g} "
            "of the kept positions (`--importance-share`).", ""]


def contrast_lines(result: dict) -> list[str]:
    """The contrast's exponent where the run set one (`--contrast`; nothing otherwise), and whether its rows' latency
    holds the neutral question's forward (rows with `neutral_s` do; a run made before round 33's review does not)."""
    contrast = result.get("config", {}).get("suite", {}).get("contrast")
    if contrast is None:
        return []
    timed = any("neutral_s" in r for r in result.get("rows", []) if r.get("condition", "").startswith("amc_"))
    latency = ("in their latency (`neutral_s`)" if timed else
               "not in their latency (a run made before the rows recorded it)")
    return [f"The contrast's conditions (amc_*): Attention Matching with the question's attention divided by a neutral "
            f"question's to the power {contrast:g} (`--contrast`; the neutral question's forward is {latency}).", ""]


def readme_block(result: dict, source: str = "docs/results/rlm_bench/results.json") -> str:
    return "\n".join([f"<!-- generated by `rlm bench --readme {source}`; do not edit by hand -->",
                      (f"{result['n_episodes']} {result['split']} episodes ({', '.join(result['families'])}; lengths "
                      f"{', '.join(str(n) for n in result['lengths'])} tokens; seeds {result['seed_range']}), "
                      f"{result['model']}, paired bootstrap 95% intervals:"), "", *headline_table(result), "",
                      *p3_lines(result), "", "Per family (accuracy [95% CI]):", "",
                      *family_table(result, breakdown_conditions(result))])


def update_readme(readme: Path, results_json: Path, source: str | None = None) -> bool:
    """Rewrite the marked block of `readme` (docs/benchmarks.md) from `results_json`, named in the block as `source`
    (by default its path relative to the current folder, where the command is run); returns whether the text
    changed."""
    result = json.loads(results_json.read_text())
    source = source or os.path.relpath(results_json.resolve(), Path.cwd())
    return replace_block(readme, README_BEGIN, README_END, readme_block(result, source))


def plots(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(9, 6))
    for x in headline_rows(result):
        (alo, ahi), (rlo, rhi) = x["accuracy_ci95"], x["token_reduction_ci95"]
        ax.errorbar(x["token_reduction"], x["accuracy"], yerr=[[x["accuracy"] - alo], [ahi - x["accuracy"]]],
                    xerr=[[x["token_reduction"] - rlo], [rhi - x["token_reduction"]]], fmt="o", capsize=3,
                    label=LABELS.get(x["condition"], x["condition"]))
    ax.axvline(0.8, color="grey", ls=":", lw=1)
    ax.set(xlabel="worker input tokens saved vs full text (mean, 95% CI)", ylabel="accuracy (95% CI)",
           title=f"{result['n_episodes']} {result['split']} episodes")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=100)
    plt.close(fig)
    paths.append("pareto.png")

    conds = breakdown_conditions(result)
    fams = list(result["by_family"])
    fig, ax = plt.subplots(figsize=(11, 5))
    w = 0.8 / max(1, len(conds))
    for k, c in enumerate(conds):
        ys, lo, hi = [], [], []
        for f in fams:
            s = {x["condition"]: x for x in result["by_family"][f]}.get(c)
            ys.append(s["accuracy"] if s else 0)
            lo.append(s["accuracy"] - s["accuracy_ci95"][0] if s else 0)
            hi.append(s["accuracy_ci95"][1] - s["accuracy"] if s else 0)
        ax.bar([i + k * w for i in range(len(fams))], ys, w, yerr=[lo, hi], capsize=2, label=LABELS.get(c, c))
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(fams))], fams, rotation=20, fontsize=8)
    ax.set(ylabel="accuracy (95% CI)", title="Accuracy per task family")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "families.png", dpi=100)
    plt.close(fig)
    paths.append("families.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    by = defaultdict(list)
    shown = set(at_settings(result, ("full", "am_tau1", "am_b0.1", "bm25_r0.1")))
    for r in result["rows"]:
        if r["condition"] in shown:
            by[r["condition"]].append(r)
    for c, rs in by.items():
        ax.scatter([r["trajectory_tokens"] for r in rs], [r["latency_s"] for r in rs], s=10, label=LABELS.get(c, c))
    ax.set(xlabel="trajectory tokens", ylabel="seconds (build + 12-token decode)", title="Worker call latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    paths.append("latency.png")
    return paths


def sweep_choice(result: dict) -> dict:
    """Defaults from a development sweep (`rlm bench --sweep`): among the tau-mode variants, and separately among
    the fixed-ratio variants, the highest accuracy, ties broken by the lower median choice KL, then fewer kept."""
    rows = [x for x in result["summary"] if x["method"] == "sweep"]
    out: dict[str, Any] = {"n_episodes": result["n_episodes"], "split": result["split"]}
    for mode, pick in (("tau", lambda p: p[3] is None), ("ratio", lambda p: p[3] is not None)):
        xs = [x for x in rows if pick(x["param"])]
        if not xs:
            continue
        best = max(xs, key=lambda x: (round(x["accuracy"], 6), -x["choice_kl_median"], -x["kept_ratio_mean"]))
        tau, sk, rec, ratio = best["param"]
        out[mode] = {"condition": best["condition"], "tau": tau, "smooth_kernel": sk, "recent": rec, "ratio": ratio,
                     "accuracy": best["accuracy"], "accuracy_ci95": best["accuracy_ci95"],
                     "choice_kl_median": best["choice_kl_median"], "kept_ratio_mean": best["kept_ratio_mean"]}
        out[f"{mode}_table"] = [{"condition": x["condition"], "accuracy": x["accuracy"],
                                 "accuracy_ci95": x["accuracy_ci95"],
                                 "choice_kl_median": x["choice_kl_median"], "kl_median": x["kl_median"],
                                 "kept_ratio_mean": x["kept_ratio_mean"]} for x in xs]
    return out


def sweep_markdown(choice: dict) -> str:
    lines = [f"# Development sweep ({choice['n_episodes']} {choice['split']} episodes)", "",
             ("Chosen on the development seeds only; the held-out suite reports them. Rule: highest accuracy, ties "
             "broken by the lower median choice KL, then fewer kept positions."), ""]
    for mode in ("tau", "ratio"):
        if mode not in choice:
            continue
        c = choice[mode]
        lines += [f"## {mode} mode: chosen {c['condition']}", "",
                  "| variant | accuracy [95% CI] | median choice KL | median answer KL | kept ratio |",
                  "|---|---|---|---|---|"]
        for x in choice[f"{mode}_table"]:
            lo, hi = x["accuracy_ci95"]
            lines.append(f"| {x['condition']} | {x['accuracy']:.2f} [{lo:.2f}, {hi:.2f}] | "
                         f"{x['choice_kl_median']:.3f} | {x['kl_median']:.3f} | {x['kept_ratio_mean']:.3f} |")
        lines.append("")
    return "\n".join(lines)
