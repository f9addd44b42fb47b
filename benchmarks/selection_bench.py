"""Selection that covers the answer: every variant at matched kept counts, on a dev and a held-out split.

    python -m benchmarks.selection_bench --split dev [--variants NAME ...] [--out docs/results/selection]
    python -m benchmarks.selection_bench --report      # tables (Markdown) and PNG from the JSON files
    python -m benchmarks.selection_bench --split dev --model gemma3-270m --out DIR   # another model, its own DIR

Per case (benchmarks.recall_cases: continuation, verbatim, multi-span and keyword questions over essays the
engine was not developed on), answer-token KL against the full cache at 50/20/10/5% kept. Also per variant:
the anchor (avg.txt, first 9,000 characters, the design notes' question) and the exact-value case (facts
planted mid-trajectory; log-likelihood gap of the exact answer to the full cache at 20% and 10% kept).
Medians come with bootstrap 95% intervals over cases.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import briefing
from benchmarks.stats import bootstrap_ci
from briefing.selection.base import top_positions
from benchmarks.readme import DOC, update_readme
from benchmarks.recall_cases import cases
from benchmarks.briefing_bench import ANSWER, QUESTION, copy_caches
from rlm.data import data_dir

RATIOS = (0.5, 0.2, 0.1, 0.05)
COPY_RATIOS = (0.2, 0.1)
PREVIOUS = "previous default: fit, per-head, smoothing 5, no look-ahead"
DEFAULT = "look-ahead 8 (the new default)"
# issue 28's dev pick (round 5): the opt-in that `rlm bench --importance` and `benchmarks.compact_time` run
PICK = "global allocation, importance share 0.9, sinks 4, head min 0.2"
# round 7: the guidance's share per row, the importance's over all rows (`rlm bench --importance hybrid`)
HYBRID = "hybrid allocation, importance share 0.9, sinks 4"
TOPK_AHEAD = "top-k, look-ahead 8 (the default without its fit)"


@dataclass(kw_only=True)
class SinksOutside(briefing.AttentionMatching):
    """Round 8's probe: the hybrid allocation with its sinks outside the guidance's share (each row keeps its sinks,
    then (1 - agnostic) of the rest of t by the guidance; the importance's best over all rows fill what is left)."""

    def guided(self, ranked, t):
        s = min(self.sinks, t)
        g = t - round(self.agnostic * (t - s))                                          # s sinks + guidance
        mask = torch.zeros(ranked.shape, dtype=torch.bool, device=ranked.device)        # [L, H, T]
        return mask.scatter_(-1, top_positions(ranked, g, s), True)


@dataclass(kw_only=True)
class MassShare(briefing.AttentionMatching):
    """Round 8's probe: the hybrid allocation with each row's guidance share set by its own guidance: its sinks, then
    the fewest best positions that hold `mass` of the row's (pooled, spread) guidance score outside the sinks (the
    sinks hold most of it), at most t in all; the importance's best over all rows fill the rest of L H t. A question
    that spreads its attention (a question about the text) keeps more of its guidance, one that peaks on the words it
    quotes leaves more to the importance."""

    mass: float = 0.5

    def guided(self, ranked, t):
        T, s = ranked.shape[-1], min(self.sinks, t)
        guide = ranked.float().clone()                                                  # [L, H, T]
        guide[..., :s] = float("inf")                                                   # a row's sinks first
        order = guide.argsort(dim=-1, descending=True)                                  # [L, H, T]
        share = ranked.float().clone()
        share[..., :s] = 0                                                              # the mass outside the sinks
        share = share.gather(-1, order)                                                 # [L, H, T] sorted
        share = share / share.sum(-1, keepdim=True).clamp_min(1e-30)
        g = (s + (share[..., s:].cumsum(-1) < self.mass).sum(-1) + 1).clamp(max=t)      # [L, H]
        first = torch.arange(T, device=ranked.device).expand_as(order) < g[..., None]   # [L, H, T] in rank order
        return torch.zeros_like(first).scatter_(-1, order, first)


VARIANTS: dict[str, Callable[..., briefing.Selector]] = {  # look_ahead=0 where a variant was measured without it
    PREVIOUS: lambda **size: briefing.AttentionMatching(**size, look_ahead=0),
    "smoothing 63 (the issue's crude probe)": lambda **size: briefing.AttentionMatching(
        **size, smooth_kernel=63, look_ahead=0),
    "top-k, smoothing 5 (SnapKV-like, no fit)": lambda **size: briefing.TopK(**size, look_ahead=0),
    DEFAULT: lambda **size: briefing.AttentionMatching(**size),
    "look-ahead 24, decay 0.95": lambda **size: briefing.AttentionMatching(**size, look_ahead=24,
                                                                           look_ahead_decay=0.95),
    "chunks of 8 (ChunkKV-style)": lambda **size: briefing.CoverageMatching(**size, chunk=8, look_ahead=0),
    "hybrid: task mass 0.5, then key diversity": lambda **size: briefing.CoverageMatching(
        **size, agnostic_mass=0.5, look_ahead=0),
    "hybrid: task mass 0.8, then key diversity": lambda **size: briefing.CoverageMatching(
        **size, agnostic_mass=0.8, look_ahead=0),
    "re-score with 4 generated tokens": lambda **size: briefing.AttentionMatching(
        **size, rescore_tokens=4, look_ahead=0),
    "re-score with 8 generated tokens + look-ahead 8": lambda **size: briefing.AttentionMatching(
        **size, rescore_tokens=8, look_ahead=8),
    "protected recent window 32": lambda **size: briefing.CoverageMatching(**size, protect_last=32, look_ahead=0),
    # round 2, after round 1's dev figures: verbatim questions quote the middle of a sentence, so look back too
    "look-back 8, look-ahead 24, decay 0.95": lambda **size: briefing.AttentionMatching(
        **size, look_ahead=24, look_back=8, look_ahead_decay=0.95),
    # round 3 (issue 28): the query-agnostic importance (briefing.importance) as a share of the kept budget
    "importance share 0.25": lambda **size: briefing.AttentionMatching(**size, agnostic=0.25),
    "importance share 0.5": lambda **size: briefing.AttentionMatching(**size, agnostic=0.5),
    "importance share 0.75": lambda **size: briefing.AttentionMatching(**size, agnostic=0.75),
    "importance only, with the fit": lambda **size: briefing.AttentionMatching(**size, agnostic=1.0),
    "importance only, top-k (KVzip's selection)": lambda **size: briefing.TopK(**size, agnostic=1.0, look_ahead=0,
                                                                               smooth_kernel=1, sinks=4),
    # round 4 (issue 28): global allocation, a different count per (layer, KV head) ranked together (KVzip's)
    "global allocation": lambda **size: briefing.AttentionMatching(**size, allocation="global"),
    "global allocation, layer-scaled": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", allocation_scale="layer"),
    "global allocation, head max 4x": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", head_max=4.0),
    "global allocation, importance share 0.5": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=0.5),
    "global allocation, importance only, with the fit": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=1.0),
    "global allocation, importance only, top-k (KVzip's)": lambda **size: briefing.TopK(
        **size, allocation="global", agnostic=1.0, look_ahead=0, smooth_kernel=1, sinks=4),
    "global allocation, importance share 0.75": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=0.75),
    "global allocation, importance only, fit, sinks 4": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=1.0, sinks=4),
    "global allocation, importance only, fit, layer-scaled": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=1.0, allocation_scale="layer"),
    "global allocation, importance share 0.9, sinks 4": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=0.9, sinks=4),
    # round 5: a floor per (layer, KV head) (AdaKV's safeguard: a share of the uniform count), so no row is left with
    # its sinks alone, where the fit has too few keys to stand on
    "global allocation, importance only, fit, sinks 4, head min 0.2": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=1.0, sinks=4, head_min=0.2),
    "global allocation, importance only, fit, sinks 4, head min 0.5": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=1.0, sinks=4, head_min=0.5),
    PICK: lambda **size: briefing.AttentionMatching(**size, allocation="global", agnostic=0.9, sinks=4,
                                                    head_min=0.2),
    # round 7: the guidance's share uniform (each row its own best, as the default), the importance's share global
    "hybrid allocation, importance share 0.5, sinks 4": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.5, sinks=4),
    "hybrid allocation, importance share 0.75, sinks 4": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.75, sinks=4),
    "hybrid allocation, importance share 0.9, sinks 4": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.9, sinks=4),
    "hybrid allocation, importance share 0.75, sinks 4, layer-scaled": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.75, sinks=4, allocation_scale="layer"),
    # round 7: is the 5% collapse the selection's or the fit's? no fit, or a fit pulled harder toward the values
    "hybrid allocation, importance share 0.9, sinks 4, no fit": lambda **size: briefing.TopK(
        **size, allocation="hybrid", agnostic=0.9, sinks=4),
    "hybrid allocation, importance share 0.9, sinks 4, ridge 0.1": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, fit=briefing.Fit(ridge=0.1)),
    "hybrid allocation, importance share 0.9, sinks 4, ridge 1": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, fit=briefing.Fit(ridge=1.0)),
    "hybrid allocation, importance share 0.9, sinks 4, beta max 2": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, fit=briefing.Fit(beta_max=2.0)),
    # round 8: the hybrid's sinks outside its guidance share (at 5% the share was about one position beside them),
    # and a cap on a row's count (the padded width sets the call's slots)
    "hybrid allocation, importance share 0.9, sinks 4 outside the share": lambda **size: SinksOutside(
        **size, allocation="hybrid", agnostic=0.9, sinks=4),
    "hybrid allocation, importance share 0.9, sinks 4, head max 2x": lambda **size: briefing.AttentionMatching(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, head_max=2.0),
    "hybrid allocation, importance share 0.9, sinks 4 outside the share, head max 2x": lambda **size: SinksOutside(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, head_max=2.0),
    "hybrid allocation, guidance share by its mass 0.5, sinks 4": lambda **size: MassShare(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, mass=0.5),
    "hybrid allocation, guidance share by its mass 0.6, sinks 4": lambda **size: MassShare(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, mass=0.6),
    "hybrid allocation, guidance share by its mass 0.7, sinks 4": lambda **size: MassShare(
        **size, allocation="hybrid", agnostic=0.9, sinks=4, mass=0.7),
    # round 5: the padded width (the longest row) is near T at every ratio; a cap per (layer, KV head) bounds it
    "global allocation, importance only, fit, sinks 4, head max 4x": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=1.0, sinks=4, head_max=4.0),
    "global allocation, importance only, fit, sinks 4, head max 2x": lambda **size: briefing.AttentionMatching(
        **size, allocation="global", agnostic=1.0, sinks=4, head_max=2.0),
    # round 30 (issue 28, a second model): the fit against the same positions without it, and a fit pulled harder
    # toward the original values (Gemma 3's anchor and end-to-end runs had top-k ahead of the fit)
    TOPK_AHEAD: lambda **size: briefing.TopK(**size),
    "fit, ridge 1": lambda **size: briefing.AttentionMatching(**size, fit=briefing.Fit(ridge=1.0)),
}
ROUND3 = ["importance share 0.25", "importance share 0.5", "importance share 0.75", "importance only, with the fit",
          "importance only, top-k (KVzip's selection)"]
RENAMED = {"default: fit, per-head, smoothing 5": PREVIOUS, "look-ahead 8": DEFAULT}  # names in runs before the switch
ROUND2 = list(VARIANTS)[11:]
HELDOUT = [PREVIOUS, "smoothing 63 (the issue's crude probe)", "top-k, smoothing 5 (SnapKV-like, no fit)", DEFAULT,
           "look-ahead 24, decay 0.95", "look-back 8, look-ahead 24, decay 0.95", "chunks of 8 (ChunkKV-style)",
           "hybrid: task mass 0.8, then key diversity", "re-score with 8 generated tokens + look-ahead 8",
           "protected recent window 32"]


def bootstrap_median(values: list[float]) -> tuple[float, float, float]:
    """Median and its bootstrap 95% interval (`benchmarks.stats`)."""
    lo, hi = bootstrap_ci(values, stat="median")
    return float(np.median(np.asarray(values, dtype=float))), lo, hi


def kl_table(cache, question: str, answer: str, names: list[str]) -> dict:
    """{variant: {ratio: answer KL}}, the full cache's answer log-probs computed once (as in metrics.answer_kl)."""
    _, ref = briefing.token_logprobs(cache.compact(question, briefing.KeepAll()), answer)

    def kl(selector) -> float:
        _, got = briefing.token_logprobs(cache.compact(question, selector), answer)
        return float((ref.exp() * (ref - got)).sum(-1).mean())

    table = {name: {str(r): kl(VARIANTS[name](ratio=r)) for r in RATIOS} for name in names}
    table["no trajectory"] = {"0": kl(briefing.KeepNone())}
    return table


def scored_cache(lm, text: str, importance_window: int | None = None) -> briefing.TrajectoryCache:
    """The case's cache, scoring the importance for the variants that read it (as benchmarks.kvpress_compare);
    importance_window: the importance's reconstruction window in tokens (None: briefing.TrajectoryCache's default)."""
    window = {} if importance_window is None else {"importance_window": importance_window}
    return briefing.TrajectoryCache(lm, text, fold=None, importance=True, **window)


def case_rows(lm, case, names: list[str], importance_window: int | None = None) -> dict:
    cache = scored_cache(lm, case.text, importance_window)
    kls = kl_table(cache, case.question, case.answer, names)
    return {"essay": case.essay, "kind": case.kind, "tokens": cache.length, "answer": case.answer,
            "no_trajectory": kls.pop("no trajectory")["0"], "kl": kls}


def anchor_rows(lm, names: list[str], importance_window: int | None = None) -> dict:
    cache = scored_cache(lm, (data_dir() / "pg_essays" / "avg.txt").read_text()[:9000], importance_window)
    kls = kl_table(cache, QUESTION, ANSWER, names)
    return {"tokens": cache.length, "no_trajectory": kls.pop("no trajectory")["0"], "kl": kls}


def copy_rows(lm, names: list[str]) -> dict:
    """Exact-value recall (the briefing bench's facts): mean log-prob gap of the exact answer to the full cache."""
    gaps = {name: {str(r): [] for r in COPY_RATIOS} for name in names}
    for cache, prompt, answer, full in copy_caches(lm, importance=True):
        for name in names:
            for r in COPY_RATIOS:
                got = briefing.loglikelihood(cache.compact(prompt, VARIANTS[name](ratio=r)), answer)
                gaps[name][str(r)].append(full - got)
    return {name: {r: float(np.mean(v)) for r, v in per.items()} for name, per in gaps.items()}


def summarise(rows: list[dict], names: list[str]) -> dict:
    return {name: {str(r): bootstrap_median([row["kl"][name][str(r)] for row in rows]) for r in RATIOS}
            for name in names}


def run(split: str, names: list[str], out: Path, extras: bool, tag: str = "", only: list[int] | None = None,
        importance_window: int | None = None, model: str | None = None) -> dict:
    lm = briefing.load_model(model)
    t0 = time.perf_counter()
    result: dict = {"split": split, "model": lm.name, "ratios": list(RATIOS), "variants": names,
                    "importance_window": importance_window, "load_average_at_start": os.getloadavg(), "cases": []}
    todo = cases(lm, split)
    for case in (todo if only is None else [todo[i] for i in only]):  # in the order given
        row = case_rows(lm, case, names, importance_window)
        result["cases"].append(row)
        print(f"[{split}] {row['essay']:<22} {row['kind']:<13} T={row['tokens']} "
              + " | ".join(f"{n[:18]}: " + "/".join(f"{row['kl'][n][str(r)]:.3f}" for r in RATIOS) for n in names),
              flush=True)
        result["summary"] = summarise(result["cases"], names)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"selection_{split}{'_' + tag if tag else ''}.partial.json").write_text(json.dumps(result, indent=2))
    if extras:
        result["anchor"] = anchor_rows(lm, names, importance_window)
        result["copy_logprob_gap"] = copy_rows(lm, names)
    result["wall_s"] = time.perf_counter() - t0
    result["load_average_at_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"selection_{split}{'_' + tag if tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


def renamed(res: dict) -> dict:
    """The variant names of runs made before the default switched (RENAMED), in every table of a result."""
    def fix(d: dict) -> dict:
        return {RENAMED.get(k, k): v for k, v in d.items()}

    for key in ("variants", "ours"):
        if key in res:
            res[key] = [RENAMED.get(v, v) for v in res[key]]
    for row in res.get("cases", []) + ([res["anchor"]] if "anchor" in res else []):
        for key in ("kl", "ours"):
            if key in row:
                row[key] = fix(row[key])
    if "copy_logprob_gap" in res:
        res["copy_logprob_gap"] = fix(res["copy_logprob_gap"])
    return res


def case_key(case: dict) -> tuple[str, str]:
    """What names a case across runs: its essay and its kind (an essay has a task case and a recall case)."""
    return case["essay"], case.get("kind", "")


def merged(out: Path, split: str) -> dict:
    """selection_{split}.json plus the variants of any selection_{split}_{tag}.json run on the same cases."""
    res = renamed(json.loads((out / f"selection_{split}.json").read_text()))

    def same_model(path: Path) -> dict:
        more = renamed(json.loads(path.read_text()))
        if more.get("model") != res.get("model"):
            raise ValueError(f"{path} was run on {more.get('model')!r}, selection_{split}.json on {res.get('model')!r}")
        return more

    for path in sorted(out.glob(f"selection_{split}_part-*.json")):  # the same variants on other cases
        seen = {case_key(c) for c in res["cases"]}
        res["cases"] += [c for c in same_model(path)["cases"] if case_key(c) not in seen]
    for path in sorted(p for p in out.glob(f"selection_{split}_*.json") if "_part-" not in p.name):
        more = same_model(path)
        if sorted(map(case_key, more["cases"])) != sorted(map(case_key, res["cases"])):
            raise ValueError(f"{path} was run on other cases than selection_{split}.json")
        new = [v for v in more["variants"] if v not in res["variants"]]
        res["variants"] += new
        for key in ("copy_logprob_gap",):
            if key in more:
                res.setdefault(key, {}).update({v: more[key][v] for v in new})
        if "anchor" in more:
            res.setdefault("anchor", {"tokens": more["anchor"]["tokens"], "kl": {}})["kl"].update(
                {v: more["anchor"]["kl"][v] for v in new})
        by_case = {case_key(c): c for c in more["cases"]}
        for case, extra in ((c, by_case[case_key(c)]) for c in res["cases"]):
            case["kl"].update({v: extra["kl"][v] for v in new})
    res["summary"] = summarise(res["cases"], res["variants"])  # recomputed from the cases, never stored figures
    return res


def fmt(stat: list[float]) -> str:
    return f"{stat[0]:.3f} [{stat[1]:.3f}, {stat[2]:.3f}]"


def against(res: dict, ref: str, name: str, ratio: str) -> tuple[int, float]:
    """Per case, `name`'s answer KL over `ref`'s at `ratio`: the number of cases where it is lower, and the median
    ratio over the cases (a case where `ref`'s KL is 0 counts its ratio as 1 if both are 0, else as infinite)."""
    pairs = [(c["kl"][name][ratio], c["kl"][ref][ratio]) for c in res["cases"]]
    ratios = [a / b if b > 0 else (1.0 if a == 0 else math.inf) for a, b in pairs]
    return sum(a < b for a, b in pairs), float(np.median(ratios))


def report(out: Path, readme: Path | None = None) -> str:
    """Markdown tables from the committed JSON (the selection tables of docs/benchmarks.md are this output), and a
    PNG. `readme`: also rewrite that block of this Markdown file."""
    lines = []
    loaded = {s: merged(out, s) for s in ("dev", "heldout") if (out / f"selection_{s}.json").exists()}
    for split, res in loaded.items():
        kinds = sorted({c["kind"] for c in res["cases"]})
        lines += [f"**{split}** ({len(res['cases'])} cases: {', '.join(kinds)}; median answer KL [bootstrap 95%])", "",
                  "| variant | 50% kept | 20% | 10% | 5% |", "|---|---|---|---|---|"]
        for name in res["variants"]:
            lines.append(f"| {name} | " + " | ".join(fmt(res["summary"][name][str(r)]) for r in RATIOS) + " |")
        lines.append("")
        # round 30: a run with the default's positions without its fit compares each variant with it, case by case,
        # and with the default itself
        for ref in [v for v in (TOPK_AHEAD, DEFAULT) if v in res["variants"]] if TOPK_AHEAD in res["variants"] else []:
            lines += [f"**{split}, per case against {ref}** (cases with a lower answer KL, of {len(res['cases'])}; "
                      "the median per-case ratio)", "", "| variant | 20% kept | 10% | 5% |", "|---|---|---|---|"]
            for name in (v for v in res["variants"] if v != ref):
                cells = (against(res, ref, name, str(r)) for r in RATIOS[1:])
                lines.append(f"| {name} | " + " | ".join(f"{n}; {x:.2f}x" for n, x in cells) + " |")
            lines.append("")
        if "anchor" in res:
            lines += [(f"**anchor** (avg.txt, {res['anchor']['tokens']} tokens; answer KL) and **exact value** "
                       "(mean log-prob gap of the exact answer, 3 facts)"), "",
                      "| variant | anchor 50% | 20% | 10% | 5% | exact value 20% | 10% |",
                      "|---|---|---|---|---|---|---|"]
            for name in res["variants"]:
                a, c = res["anchor"]["kl"][name], res["copy_logprob_gap"][name]
                lines.append(f"| {name} | " + " | ".join(f"{a[str(r)]:.4f}" for r in RATIOS) + " | "
                             + " | ".join(f"{c[str(r)]:.2f}" for r in COPY_RATIOS) + " |")
            lines.append("")
    text = "\n".join(lines)
    (out / "selection_tables.md").write_text(text + "\n")
    if readme is not None:
        update_readme("selection-tables", text, readme)
    if loaded:
        plot(loaded, out / "selection.png")
    return text


def plot(loaded: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(loaded), figsize=(7 * len(loaded), 5), squeeze=False)
    for ax, (split, res) in zip(axes[0], loaded.items()):
        for name in res["variants"]:
            med = [res["summary"][name][str(r)] for r in RATIOS]
            ax.errorbar(RATIOS, [m[0] for m in med], yerr=[[m[0] - m[1] for m in med], [m[2] - m[0] for m in med]],
                        marker="o", capsize=2, label=name)
        ax.set(xscale="log", yscale="log", xlabel="kept ratio", ylabel="median answer KL vs full",
               title=f"{split}: {len(res['cases'])} cases")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.selection_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=["dev", "heldout"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names from VARIANTS")
    parser.add_argument("--no-extras", action="store_true", help="skip the anchor and the exact-value case")
    parser.add_argument("--out", default="docs/results/selection")
    parser.add_argument("--readme", action="store_true", help="also rewrite the selection-tables block of "
                        "docs/benchmarks.md")
    parser.add_argument("--report", action="store_true", help="write the tables and PNG from the JSON files")
    parser.add_argument("--tag", default="", help="suffix of the JSON file (a further round of variants)")
    parser.add_argument("--cases", type=int, nargs="+",
                        help="only these case indices, in this order (a part run beside another; "
                        "its file is tagged part-..., and the report merges the parts' cases)")
    parser.add_argument("--importance-window", type=int, default=None,
                        help="tokens the query-agnostic importance reconstructs at a time "
                        "(briefing.TrajectoryCache's importance_window; default: the cache's default)")
    parser.add_argument("--model", default=None, help="a model key of briefing.load_model (default: the embedded "
                        "SmolLM2); needs its own --out and no --readme (the default --out and the docs' tables are "
                        "SmolLM2's)")
    args = parser.parse_args(argv)
    if args.model is not None and (args.readme or args.out == parser.get_default("out")):
        parser.error(f"--model {args.model}: give the run its own --out and no --readme (the default --out, "
                     f"{parser.get_default('out')}, and the docs' selection tables are the embedded SmolLM2's)")
    if args.importance_window is not None and args.importance_window < 1:
        parser.error(f"--importance-window {args.importance_window}: give a positive number of tokens")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = Path(args.out)
    if args.split:
        tag = args.tag or ("part-" + "-".join(map(str, args.cases)) if args.cases else "")
        run(args.split, args.variants, out, not args.no_extras, tag, args.cases, args.importance_window, args.model)
    if args.report or not args.split:
        print(report(out, DOC if args.readme else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
