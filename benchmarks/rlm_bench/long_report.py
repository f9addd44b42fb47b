"""The long suite's report: accuracy by length and depth quarter, paired differences, what the folds kept, fold cost,
targets; results.md, long.png, and the long-suite blocks of docs/benchmarks.md. Every interval is
`benchmarks.stats.bootstrap_ci` (over questions; over episodes where the paired table says so)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from benchmarks.readme import replace_block
from benchmarks.rlm_bench.long_conditions import CONDITIONS, FOLD_GUIDANCE
from benchmarks.stats import bootstrap_ci


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def summarize(rows: list[dict], folds: list[dict], rss: dict) -> dict:
    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in rows)]
    lengths = sorted({r["length"] for r in rows})
    acc, by_depth, calls = [], [], []
    for c in conds:
        for n in lengths:
            rs = [r for r in rows if r["condition"] == c and r["length"] == n]
            if not rs:
                continue
            ys = [float(r["correct"]) for r in rs]
            lo, hi = bootstrap_ci(ys)
            acc.append(dict(condition=c, length=n, accuracy=sum(ys) / len(ys), ci95=[lo, hi], questions=len(ys),
                            episodes=len({r["episode"] for r in rs})))
            first_half = [float(r["correct"]) for r in rs if r["quarter"] <= 2]
            if first_half:
                lo, hi = bootstrap_ci(first_half)
                acc[-1].update(first_half=sum(first_half) / len(first_half), first_half_ci95=[lo, hi],
                               first_half_questions=len(first_half))
            for qt in (1, 2, 3, 4):
                ys = [float(r["correct"]) for r in rs if r["quarter"] == qt]
                if ys:
                    lo, hi = bootstrap_ci(ys)
                    by_depth.append(dict(condition=c, length=n, quarter=qt, accuracy=sum(ys) / len(ys), ci95=[lo, hi],
                                         questions=len(ys)))
            calls.append(dict(condition=c, length=n,
                              trajectory_tokens=_median([r["trajectory_tokens"] for r in rs]),
                              latency_s_median=_median([r["latency_s"] for r in rs]),
                              latency_s_min=min(r["latency_s"] for r in rs),
                              prefilled_tokens_median=_median([r["prefilled_tokens"] for r in rs]),
                              prompt_tokens_median=(_median([r["prompt_tokens"] for r in rs])
                                                    if all("prompt_tokens" in r for r in rs) else None),
                              cache_positions_max=max(r["cache_positions"] for r in rs),
                              kv_bytes_max=max(r["kv_bytes"] for r in rs)))
            recalled = [r for r in rs if r.get("recalled_tokens")]
            if recalled:   # the recall's own time (finding and fetching), on the calls that recalled
                share = [r["recall_s"] / r["latency_s"] for r in recalled if "recall_s" in r and r["latency_s"] > 0]
                calls[-1].update(recall_s_median=_median([r["recall_s"] for r in recalled if "recall_s" in r]),
                                 recall_share_median=_median(share), recall_share_max=max(share, default=None))
            looked = [r for r in rs if r.get("lookup_s") and r["latency_s"] > 0]
            if looked:     # the latent lookup's part of it (the question's forward and the ranking), where one ran
                share = [r["lookup_s"] / r["latency_s"] for r in looked]
                calls[-1].update(lookup_calls=len(looked), lookup_s_median=_median([r["lookup_s"] for r in looked]),
                                 lookup_share_median=_median(share), lookup_share_max=max(share))
    fold_summary = []
    for c in sorted({f["condition"] for f in folds}):
        for n in lengths:
            fs = [f for f in folds if f["condition"] == c and f["length"] == n]
            if fs:
                fold_summary.append(dict(condition=c, length=n, folds=len(fs),
                                         time_s_median=_median([f["time_s"] for f in fs]),
                                         ratio_to_prefill_median=_median([f["ratio_to_prefill"] for f in fs]),
                                         ratio_to_prefill_max=max(f["ratio_to_prefill"] for f in fs),
                                         span_median=_median([f["span"] for f in fs]),
                                         kept_median=_median([f["kept"] for f in fs])))
    held = []  # what the folds kept of each fact, and whether the fact was answered when kept or not
    for c in conds:
        for n in lengths:
            for qt in (1, 2, 3, 4):
                rs = [r for r in rows
                      if r["condition"] == c and r["length"] == n and r["quarter"] == qt and "held_fact" in r]
                if not rs:
                    continue
                kept = [r for r in rs if r["held_fact"] >= 0.5]
                lost = [r for r in rs if r["held_fact"] < 0.5]
                held.append(dict(condition=c, length=n, quarter=qt, questions=len(rs),
                                 held_fact_mean=sum(r["held_fact"] for r in rs) / len(rs),
                                 held_quarter_mean=sum(r["held_quarter"] for r in rs) / len(rs),
                                 kept_questions=len(kept),
                                 accuracy_kept=sum(r["correct"] for r in kept) / len(kept) if kept else None,
                                 accuracy_lost=sum(r["correct"] for r in lost) / len(lost) if lost else None))
    forms = [f for f in FORMS if any(r.get("form") == f for r in rows)]
    by_form_paired = [dict(d, form=f) for f in forms
                      for d in paired([r for r in rows if r.get("form") == f], conds, lengths, FORM_REFERENCES)]
    return dict(accuracy=acc, by_depth=by_depth, calls=calls, folds=fold_summary, held=held,
                paired=paired(rows, conds, lengths), by_form=by_form(rows, conds, lengths, forms),
                by_form_paired=by_form_paired, peak_rss_mb=rss)


def by_form(rows: list[dict], conds: list[str], lengths: list[int], forms: list[str]) -> list[dict]:
    """Accuracy and availability by question form (the fact's own words, paraphrased): availability is the share of
    the fact statement's characters the call's context held (`covered_fact`: kept, recalled or pasted), which does
    not depend on the worker's skill; accuracy where the fact was at least half available, and where it was not."""
    out = []
    for c, n, f in itertools.product(conds, lengths, forms):
        rs = [r for r in rows if r["condition"] == c and r["length"] == n and r.get("form") == f]
        if not rs:
            continue
        ys = [float(r["correct"]) for r in rs]
        d = dict(condition=c, length=n, form=f, questions=len(rs), episodes=len({r["episode"] for r in rs}),
                 accuracy=sum(ys) / len(ys), ci95=list(bootstrap_ci(ys)))
        cov = [float(r["covered_fact"]) for r in rs if "covered_fact" in r]
        if len(cov) == len(rs):
            avail = [r for r in rs if r["covered_fact"] >= 0.5]
            rest = [r for r in rs if r["covered_fact"] < 0.5]
            d.update(availability=sum(cov) / len(cov), availability_ci95=list(bootstrap_ci(cov)),
                     available=len(avail),
                     accuracy_available=sum(r["correct"] for r in avail) / len(avail) if avail else None,
                     accuracy_unavailable=sum(r["correct"] for r in rest) / len(rest) if rest else None)
        out.append(d)
    return out


PAIRED_REFERENCES = ("fold-recall", "fold-recall-all-ranked")  # the first recall, and BriefedWorker's
FORM_REFERENCES = ("fold-recall-all-ranked", "ceiling")  # by question form: BriefedWorker's BM25 recall, all in view
FORMS = ("own", "paraphrase")


def paired(rows: list[dict], conds: list[str], lengths: list[int],
           references: tuple[str, ...] = PAIRED_REFERENCES) -> list[dict]:
    """Each condition against each reference (fold-recall and BriefedWorker's recall, else the first folding
    condition) on the questions both answered (same episode, same question): the accuracy difference with a
    paired 95% bootstrap interval over those questions, overall and on first-half facts, and the questions it
    won and lost against the reference. Conditions run on fewer episodes are compared there only; a pair of
    references is compared once, against the first."""
    refs = [c for c in references if c in conds] or [c for c in FOLD_GUIDANCE if c in conds][:1]
    by = {(r["condition"], r["episode"], r["question"]): r for r in rows}
    out = []
    for i, ref in enumerate(refs):
        for n in lengths:
            ref_keys = [(e, q) for (c, e, q), r in by.items() if c == ref and r["length"] == n]
            for c in conds:
                keys = [k for k in ref_keys if (c, *k) in by] if c not in refs[:i + 1] else []
                if not keys:
                    continue
                d = [float(by[(c, *k)]["correct"]) - float(by[(ref, *k)]["correct"]) for k in keys]
                first = [x for x, k in zip(d, keys) if by[(ref, *k)]["quarter"] <= 2]
                episodes: dict[str, list[float]] = {}
                for x, (e, _) in zip(d, keys):
                    episodes.setdefault(e, []).append(x)
                out.append(dict(reference=ref, condition=c, length=n, questions=len(d),
                                episodes=len(episodes), diff=sum(d) / len(d), ci95=list(bootstrap_ci(d)),
                                episode_ci95=list(bootstrap_ci(groups=list(episodes.values()))),
                                won=sum(x > 0 for x in d), lost=sum(x < 0 for x in d),  # the discordant pairs
                                first_half_diff=sum(first) / len(first) if first else None,
                                first_half_ci95=list(bootstrap_ci(first)) if first else None))
    return out


def targets(summary: dict) -> dict:
    """The issue's targets, computed from the summary (None where the run did not cover them)."""
    out: dict[str, Any] = {}
    calls = {(c["condition"], c["length"]): c for c in summary["calls"]}
    lengths = sorted({c["length"] for c in summary["calls"]})
    if len(lengths) >= 2:
        lo, hi = lengths[0], lengths[-1]
        for c in FOLD_GUIDANCE:
            if (c, lo) in calls and (c, hi) in calls:
                out[f"{c} latency {hi}/{lo}"] = calls[(c, hi)]["latency_s_median"] / calls[(c, lo)]["latency_s_median"]
                out[f"{c} prefilled tokens per call at {hi}"] = calls[(c, hi)]["prefilled_tokens_median"]
        rss = summary["peak_rss_mb"]
        if str(lo) in rss and str(hi) in rss:
            out[f"peak RSS {hi}/{lo}"] = rss[str(hi)] / rss[str(lo)]
    for c in summary["calls"]:
        if c.get("recall_share_median") == c.get("recall_share_median") and "recall_share_median" in c:   # not NaN
            out[f"{c['condition']} recall's share of a call at {c['length']} (median)"] = c["recall_share_median"]
        if "lookup_share_max" in c:
            out[f"{c['condition']} latent lookup's share of a call at {c['length']} (largest)"] = c["lookup_share_max"]
    if summary["folds"]:
        out["fold time / span prefill, max"] = max(f["ratio_to_prefill_max"] for f in summary["folds"])
    for a in summary["accuracy"]:
        if a["condition"] in FOLD_GUIDANCE or a["condition"] == "truncated":
            if "first_half" in a:
                out[f"{a['condition']} first-half accuracy at {a['length']}"] = a["first_half"]
    return out


def markdown(result: dict) -> str:
    s, cfg = result["summary"], result["config"]
    done = cfg.get("episodes_done", {})
    load = result["load_average"]
    if load and isinstance(load[0], list):  # merged runs: the 1-minute load at the end of each run, as a range
        one = [x[0] for x in load]
        load = f"(1 minute, at the end of each of {len(one)} runs) {min(one):.2f} to {max(one):.2f}"
    lines = [f"Long-trajectory suite: window {cfg['window']} positions (reserve {cfg['reserve']}, recent window "
             f"{cfg['recent']}), lengths {cfg['lengths']} tokens, episodes done per length {done or cfg['episodes']} "
             f"(of {cfg['episodes']}) x {per_episode(result['rows'])} questions, split {cfg['split']}; machine "
             f"load average "
             f"{load} (timings under that load). Regenerate: `python -m benchmarks.rlm_bench.long "
             f"--report results.json`.", "",
             "| condition | length | accuracy [95% CI] | first half [95% CI] | questions | median latency s | "
             "prefilled tokens per call | call prompt tokens | max cache positions | KV MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    calls = {(c["condition"], c["length"]): c for c in s["calls"]}
    for a in s["accuracy"]:
        c = calls[(a["condition"], a["length"])]
        fh = (f"{a['first_half']:.2f} [{a['first_half_ci95'][0]:.2f}, {a['first_half_ci95'][1]:.2f}]"
              if "first_half" in a else "-")
        lines.append(f"| {a['condition']} | {a['length']} | {a['accuracy']:.2f} [{a['ci95'][0]:.2f}, "
                     f"{a['ci95'][1]:.2f}] "
                     f"| {fh} | {a['questions']} | {c['latency_s_median']:.2f} | {c['prefilled_tokens_median']:.0f} | "
                     f"{'-' if c.get('prompt_tokens_median') is None else format(c['prompt_tokens_median'], '.0f')} | "
                     f"{c['cache_positions_max']} | {c['kv_bytes_max'] / 2**20:.1f} |")
    lines += ["", "Accuracy by depth quarter (1 = first quarter of the trajectory), 95% interval and questions:", "",
              "| condition | length | Q1 | Q2 | Q3 | Q4 |", "|---|---|---|---|---|---|"]
    depth = {(d["condition"], d["length"], d["quarter"]): d for d in s["by_depth"]}
    for a in s["accuracy"]:
        cells = []
        for qt in (1, 2, 3, 4):
            d = depth.get((a["condition"], a["length"], qt))
            cells.append("-" if not d else
                         f"{d['accuracy']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}] ({d['questions']})")
        lines.append(f"| {a['condition']} | {a['length']} | " + " | ".join(cells) + " |")
    if s.get("paired"):
        lines += ["", "Paired on the same questions (difference of accuracy, condition minus reference, paired "
                  "bootstrap 95% interval over questions, and over episodes, which resamples an episode's questions "
                  "together; a condition run on fewer episodes is compared on those):"]
        for ref, group in itertools.groupby(s["paired"], key=lambda d: d["reference"]):
            lines += ["", f"Against {ref}:", "",
                      "| condition | length | episodes | questions | difference | episode-bootstrap interval | "
                      "won / lost | first-half difference |",
                      "|---|---|---|---|---|---|---|---|"]
            for d in group:
                fh = ("-" if d["first_half_diff"] is None else
                      f"{d['first_half_diff']:+.2f} [{d['first_half_ci95'][0]:+.2f}, {d['first_half_ci95'][1]:+.2f}]")
                lines.append(f"| {d['condition']} | {d['length']} | {d['episodes']} | {d['questions']} | "
                             f"{paired_cells(d)} | {fh} |")
    if s.get("by_form"):
        lines += ["", "By question form (own: in the fact's words; paraphrase: no content word of the fact shared). "
                  "Availability: the share of the fact statement's characters the call's context held (kept, "
                  "recalled or pasted; mean [95% CI]), which does not depend on the worker's skill; then accuracy "
                  "where the fact was at least half available and where it was not:", "",
                  "| condition | length | form | questions | accuracy [95% CI] | availability [95% CI] | "
                  "available | accuracy if available | if not |", "|---|---|---|---|---|---|---|---|---|"]
        for d in s["by_form"]:
            av = (f"{d['availability']:.2f} [{d['availability_ci95'][0]:.2f}, {d['availability_ci95'][1]:.2f}]"
                  if "availability" in d else "-")
            lines.append(f"| {d['condition']} | {d['length']} | {d['form']} | {d['questions']} | {d['accuracy']:.2f} "
                         f"[{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}] | {av} | {d.get('available', '-')} | "
                         f"{optional(d.get('accuracy_available'))} | {optional(d.get('accuracy_unavailable'))} |")
    if s.get("by_form_paired"):
        lines += ["", "By question form, paired on the same questions (condition minus reference, 95% interval over "
                  "questions and over episodes):", "",
                  "| form | reference | condition | length | questions | difference | episode-bootstrap interval | "
                  "won / lost |", "|---|---|---|---|---|---|---|---|"]
        for d in s["by_form_paired"]:
            lines.append(f"| {d['form']} | {d['reference']} | {d['condition']} | {d['length']} | {d['questions']} | "
                         f"{paired_cells(d)} |")
    if s["folds"]:
        lines += ["", "| folding condition | length | folds | median span | median kept | median fold s | "
                  "fold / span prefill (median, max) |", "|---|---|---|---|---|---|---|"]
        for f in s["folds"]:
            lines.append(f"| {f['condition']} | {f['length']} | {f['folds']} | {f['span_median']:.0f} | "
                         f"{f['kept_median']:.0f} | {f['time_s_median']:.2f} | {f['ratio_to_prefill_median']:.3f}, "
                         f"{f['ratio_to_prefill_max']:.3f} |")
    if s.get("held"):
        lines += ["",
                  "What the folds kept at question time, by depth quarter: the share of the fact statement's tokens "
                  "still held (mean over layers and KV heads), the share of the whole quarter's tokens held (what an "
                  "indifferent selection would keep of the fact), and accuracy on questions whose fact is at least "
                  "half held against the rest:", "",
                  "| condition | length | quarter | questions | fact held | quarter held | fact >= half held | "
                  "accuracy if held | accuracy if not |", "|---|---|---|---|---|---|---|---|---|"]
        for h in s["held"]:
            lines.append(f"| {h['condition']} | {h['length']} | Q{h['quarter']} | {h['questions']} | "
                         f"{h['held_fact_mean']:.3f} | {h['held_quarter_mean']:.3f} | {h['kept_questions']} | "
                         f"{optional(h['accuracy_kept'])} | {optional(h['accuracy_lost'])} |")
    lines += ["", "Peak RSS after the episodes of each length (MB, process-wide peak so far; episodes run length by "
              "length within each episode index): "
              + ", ".join(f"{k}: {v:.0f}" for k, v in s["peak_rss_mb"].items()), "", "Targets:", ""]
    lines += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in result["targets"].items()]
    return "\n".join(lines) + "\n"


def optional(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def paired_cells(d: dict) -> str:
    """A paired difference's cells: difference [interval over questions] | [interval over episodes] | won / lost."""
    return (f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | "
            f"[{d['episode_ci95'][0]:+.2f}, {d['episode_ci95'][1]:+.2f}] | {d['won']} / {d['lost']}")


def per_episode(rows: list[dict]) -> int | str:
    """Questions per episode (older runs asked 4, one per fact; the suite now asks each fact in two forms)."""
    counts = {}
    for r in rows:
        key = (r["condition"], r["episode"], r["length"])
        counts[key] = counts.get(key, 0) + 1
    values = sorted(set(counts.values()))
    return values[0] if len(values) == 1 else " or ".join(map(str, values))


def plot(result: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    conds = [c for c in CONDITIONS if any(a["condition"] == c for a in s["accuracy"])]
    for c in conds:
        rs = [a for a in s["accuracy"] if a["condition"] == c]
        xs = [a["length"] for a in rs]
        ys = [a["accuracy"] for a in rs]
        err = [[a["accuracy"] - a["ci95"][0] for a in rs], [a["ci95"][1] - a["accuracy"] for a in rs]]
        axes[0].errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=c)
        cs = [x for x in s["calls"] if x["condition"] == c]
        axes[1].plot([x["trajectory_tokens"] for x in cs], [x["latency_s_median"] for x in cs], marker="o", label=c)
        axes[2].plot([x["trajectory_tokens"] for x in cs], [max(1, x["prefilled_tokens_median"]) for x in cs],
                     marker="o", label=c)
    axes[0].axhline(1 / 4, color="grey", ls=":", label="chance")
    for ax, title, ylabel in ((axes[0], "accuracy (95% bootstrap CI)", "accuracy"),
                              (axes[1], "per-call latency (under load)", "seconds"),
                              (axes[2], "prefilled tokens per call", "tokens")):
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("trajectory tokens")
        ax.set_ylabel(ylabel)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "long.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write(result: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result))
    return [str(out / "results.json"), str(out / "results.md"), plot(result, out)]




def merge(results: list[dict]) -> dict:
    """One result from runs over disjoint lengths or conditions of the same settings (summary recomputed). A row
    (episode, condition) given by several runs is taken from the first, so a re-run placed first replaces an
    older one. Peak RSS per length is each run's own (the first run that has the length)."""
    base = dict(results[0])
    for other in results[1:]:
        for k in ("window", "reserve", "recent", "split", "model", "share", "keep", "recall_budget", "bm25_budget",
                  "summary_tokens"):
            if other["config"].get(k) != base["config"].get(k):
                raise SystemExit(f"--report: cannot merge runs with different {k}: {base['config'].get(k)} vs "
                                 f"{other['config'].get(k)}.")
    if len(results) > 1:
        cfg = dict(base["config"])
        cfg["lengths"] = sorted({n for r in results for n in r["config"]["lengths"]})
        cfg["conditions"] = [c for c in CONDITIONS if any(c in r["config"]["conditions"] for r in results)]
        seen, rows, folds = set(), [], []
        for r in results:  # a row (episode, condition, question) or fold already merged in is not counted twice
            keys = {(row["episode"], row["condition"]) for row in r["rows"]} - seen
            rows += [row for row in r["rows"] if (row["episode"], row["condition"]) in keys]
            folds += [f for f in r["folds"] if (f["episode"], f["condition"]) in keys]
            seen |= keys
        cfg["episodes_done"] = {str(n): len({row["episode"] for row in rows if row["length"] == n})
                                for n in cfg["lengths"]}  # runs over disjoint episodes of a length add up
        cfg["episodes"] = max(cfg["episodes_done"].values(), default=0)
        loads = [x for r in results for x in (r["load_average"] if r["load_average"] and isinstance(
            r["load_average"][0], list) else [r["load_average"]])]   # a merged run brings its runs' loads
        base.update(config=cfg, rows=rows, folds=folds, load_average=loads,
                    wall_s=sum(r["wall_s"] for r in results), merged_from=len(results))
        rss = {}
        for r in results:  # a length's peak from the first run that has it, as rows are (duplicates: first wins)
            for k, v in r["summary"]["peak_rss_mb"].items():
                rss.setdefault(k, v)
    else:
        rss = base["summary"]["peak_rss_mb"]
    base["summary"] = summarize(base["rows"], base["folds"], rss)
    base["targets"] = targets(base["summary"])
    return base


README_START, README_END = "<!-- long-suite:start -->", "<!-- long-suite:end -->"


def readme_markers(block: str | None = None) -> tuple[str, str]:
    """The markers of the long-suite block in docs/benchmarks.md (`block`: a named one, e.g. another window)."""
    if not block:
        return README_START, README_END
    return f"<!-- long-suite-{block}:start -->", f"<!-- long-suite-{block}:end -->"


def update_readme(readme: Path, table: str, command: str, block: str | None = None) -> None:
    """Replace the block between the long-suite markers of `readme` with `table` (generated, never typed)."""
    start, end = readme_markers(block)
    replace_block(readme, start, end, f"<!-- generated by `{command}` -->\n{table}")
