"""Aggregation of benchmark rows: summary per condition, target checks, results.md and PNG plots."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def summarize(rows: list[dict]) -> list[dict]:
    """One line per condition: accuracy (log-likelihood choice, generation), fidelity, tokens, memory, time."""
    by = defaultdict(list)
    for r in rows:
        by[r["condition"]].append(r)
    out = []
    for cond, rs in by.items():
        gen = [r["gen_match"] for r in rs if "gen_match" in r]
        out.append({
            "condition": cond, "method": rs[0]["method"], "param": rs[0]["param"], "matched_to": rs[0]["matched_to"],
            "n": len(rs), "accuracy": _mean([float(r["correct"]) for r in rs]),
            "gen_accuracy": _mean([float(g) for g in gen]) if gen else None,
            "agree_full": _mean([float(r["agree_full"]) for r in rs]), "kl_mean": _mean([r["kl"] for r in rs]),
            "kl_median": float(statistics.median([r["kl"] for r in rs])),
            "input_tokens_median": float(statistics.median([r["input_tokens"] for r in rs])),
            "input_tokens_episode": float(sum(r["input_tokens"] for r in rs)),
            "input_ratio_median": float(statistics.median([r["input_ratio"] for r in rs])),
            "kept_ratio_mean": _mean([r["kept_ratio"] for r in rs]),
            "kv_bytes_median": float(statistics.median([r["kv_bytes"] for r in rs])),
            "overhead_s_mean": _mean([r["overhead_s"] for r in rs]), "latency_s_mean": _mean([r["latency_s"] for r in rs]),
        })
    return out


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


def targets(summary: list[dict], rows: list[dict]) -> dict[str, Any]:
    """The report's targets, measured (episodes are not tuned to them)."""
    s = {x["condition"]: x for x in summary}
    full = s.get("full")
    out: dict[str, Any] = {}
    if not full:
        return out
    lb = [x for x in summary if x["method"] == "latent_briefing"]
    ok = [x for x in lb if x["accuracy"] >= full["accuracy"] - 0.02]
    best = min(ok, key=lambda x: x["input_ratio_median"]) if ok else None
    out["full_accuracy"] = full["accuracy"]
    out["plain_accuracy"] = s["plain"]["accuracy"] if "plain" in s else None
    out["best_briefing_within_2pts"] = None if best is None else {
        "condition": best["condition"], "accuracy": best["accuracy"],
        "median_input_tokens_reduction": 1 - best["input_ratio_median"],
        "meets_65pct": 1 - best["input_ratio_median"] >= 0.65, "meets_80pct": 1 - best["input_ratio_median"] >= 0.80}
    cmp = []
    for x in summary:
        if x["method"] != "latent_briefing":
            continue
        tag = x["condition"] if x["param"] is not None and x["condition"].startswith("am_tau") else f"budget{x['param']:g}"
        peers = {y["method"]: y for y in summary if y["matched_to"] == tag and y["method"] != "latent_briefing"}
        if peers:
            cmp.append({"briefing": x["condition"], "accuracy": x["accuracy"], "kl": x["kl_mean"],
                        **{f"{m}_accuracy": p["accuracy"] for m, p in peers.items()},
                        **{f"{m}_kl": p["kl_mean"] for m, p in peers.items()},
                        "beats_all_on_accuracy": all(x["accuracy"] > p["accuracy"] for p in peers.values()),
                        "beats_all_on_kl": all(x["kl_mean"] < p["kl_mean"] for p in peers.values())})
    out["matched_comparisons"] = cmp
    return out


def markdown(result: dict) -> str:
    lines = [f"# rlm bench results ({result['mode']})", "",
             f"Model: {result['model']}; {result['n_episodes']} episodes; lengths {result['lengths']}; "
             f"machine: {result['machine']}; wall time {result['wall_s']:.0f} s.", "",
             "Accuracy = argmax over candidates of the summed log-prob of the candidate value's tokens after "
             "\" <answer lead-in>\" (the lead-in restates the question's key; the candidates are the target's and the "
             "distractors' values, of equal token count; chance = 1 / candidates). Gen = greedy 16-token generation contains the answer (blank: not generated for "
             "this condition). KL = answer-token KL vs the full cache (KeepAll, numerically the pasted text). Input "
             "tokens = text tokens + retained KV positions per worker call.", "",
             "| condition | method | n | accuracy | gen | agree w/ full | KL mean | median input tok | vs full | kept ratio | KV MiB | overhead s | latency s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in result["summary"]:
        gen = "" if x["gen_accuracy"] is None else f"{x['gen_accuracy']:.2f}"
        lines.append(f"| {x['condition']} | {x['method']} | {x['n']} | {x['accuracy']:.2f} | {gen} | {x['agree_full']:.2f} | "
                     f"{x['kl_mean']:.4f} | {x['input_tokens_median']:.0f} | {x['input_ratio_median']:.1%} | "
                     f"{x['kept_ratio_mean']:.3f} | {x['kv_bytes_median'] / 2**20:.2f} | {x['overhead_s_mean']:.2f} | "
                     f"{x['latency_s_mean']:.2f} |")
    t = result.get("targets", {})
    lines += ["", "## Targets (measured, not tuned)", ""]
    b = t.get("best_briefing_within_2pts")
    lines.append(f"- full text accuracy {t.get('full_accuracy')}, plain {t.get('plain_accuracy')}")
    if b:
        lines.append(f"- cheapest latent briefing within 2 points of full: {b['condition']} (accuracy {b['accuracy']:.2f}), "
                     f"median worker input tokens {b['median_input_tokens_reduction']:.1%} below full "
                     f"(>=65%: {b['meets_65pct']}, >=80%: {b['meets_80pct']})")
    else:
        lines.append("- no latent briefing setting within 2 points of full text accuracy")
    for c in t.get("matched_comparisons", []):
        peers = ", ".join(f"{k.split('_')[0]} {v:.2f}" for k, v in c.items() if k.endswith("_accuracy") and not k.startswith("beats"))
        lines.append(f"- {c['briefing']}: accuracy {c['accuracy']:.2f} vs {peers}; beats all on accuracy: "
                     f"{c['beats_all_on_accuracy']}, on KL: {c['beats_all_on_kl']}")
    for name, fit in result.get("overhead_fit", {}).items():
        if fit:
            lines.append(f"- {name}: {fit['slope_s_per_token'] * 1000:.3f} ms/token + {fit['intercept_s']:.3f} s, "
                         f"R^2 {fit['r2']:.3f} over {fit['points']} points")
    lines += ["", "Plots: pareto.png (accuracy vs input tokens), overhead.png (overhead vs trajectory length), "
              "kept_vs_tau.png (kept ratio vs tau).", ""]
    return "\n".join(lines)


def plots(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, summary = result["rows"], result["summary"]
    paths = []
    fig, ax = plt.subplots(figsize=(8, 6))
    by_method = defaultdict(list)
    for x in summary:
        by_method[x["method"]].append(x)
    for m, xs in by_method.items():
        xs = sorted(xs, key=lambda x: x["input_tokens_median"])
        ax.plot([x["input_tokens_median"] for x in xs], [x["accuracy"] for x in xs], "o-" if len(xs) > 1 else "o", label=m)
    ax.set(xscale="log", xlabel="median worker input tokens per call", ylabel="accuracy (log-likelihood choice)",
           title="Accuracy vs worker input tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=100)
    plt.close(fig)
    paths.append("pareto.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    lb = [r for r in rows if r["method"] == "latent_briefing"]
    xs, ys = [r["trajectory_tokens"] for r in lb], [r["overhead_s"] for r in lb]
    ax.scatter(xs, ys, s=12, label="compaction overhead (latent briefing)")
    ax.scatter(xs, [r["latency_s"] for r in lb], s=12, label="end-to-end call latency")
    fit = result.get("overhead_fit", {}).get("compaction_overhead")
    if fit:
        gx = [min(xs), max(xs)]
        ax.plot(gx, [fit["slope_s_per_token"] * g + fit["intercept_s"] for g in gx], "k--",
                label=f"fit {fit['slope_s_per_token'] * 1000:.3f} ms/token, R^2 {fit['r2']:.2f}")
    ax.set(xlabel="trajectory tokens", ylabel="seconds", title="Overhead vs trajectory length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "overhead.png", dpi=100)
    plt.close(fig)
    paths.append("overhead.png")

    fig, ax = plt.subplots(figsize=(7, 5))
    tau_rows = [r for r in lb if str(r["condition"]).startswith("am_tau")]
    by_len = defaultdict(lambda: defaultdict(list))
    for r in tau_rows:
        by_len[r["target_tokens"]][r["param"]].append(r["kept_ratio"])
    for n, d in sorted(by_len.items()):
        taus = sorted(d)
        ax.plot(taus, [_mean(d[t]) for t in taus], "o-", label=f"~{n} tokens")
    ax.set(xlabel="tau (MADs)", ylabel="kept ratio", title="Kept ratio vs tau")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "kept_vs_tau.png", dpi=100)
    plt.close(fig)
    paths.append("kept_vs_tau.png")
    return paths
