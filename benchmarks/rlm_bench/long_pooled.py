"""Paired differences pooled over several long-suite runs (other lengths, windows or settings), by question form.

`python -m benchmarks.rlm_bench.long_pooled --condition fold-routed REF.json:NEW.json [FILE.json ...]`: each
argument is one run holding both conditions, or a pair whose first file holds the reference's rows and the second
the condition's. Questions are paired by (length, episode, question) within each argument and pooled; printed per
form: questions, the accuracy difference and the difference in the share of questions whose fact the call's context
held whole, each with a 95% bootstrap interval over questions (`benchmarks.stats.bootstrap_ci`).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.stats import bootstrap_ci


def rows_of(path: str, condition: str) -> dict[tuple, dict]:
    rows = json.loads(Path(path).read_text())["rows"]
    return {(r["length"], r["episode"], r["question"]): r for r in rows if r["condition"] == condition}


def pooled(runs: list[str], condition: str, reference: str) -> list[dict]:
    """One record per form: questions, accuracy and whole-availability differences (condition minus reference)."""
    diffs: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        ref_file, new_file = run.split(":") if ":" in run else (run, run)
        ref, new = rows_of(ref_file, reference), rows_of(new_file, condition)
        for key in sorted(new.keys() & ref.keys()):
            a, b = new[key], ref[key]
            d = diffs.setdefault(a["form"], {"accuracy": [], "held_whole": []})
            d["accuracy"].append(float(a["correct"]) - float(b["correct"]))
            d["held_whole"].append(float(a["covered_fact"] >= 0.999) - float(b["covered_fact"] >= 0.999))
    out = []
    for form, d in sorted(diffs.items()):
        rec = {"form": form, "questions": len(d["accuracy"])}
        for k, v in d.items():
            rec[k] = statistics.fmean(v)
            rec[f"{k}_ci"] = list(bootstrap_ci(v))
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rlm_bench.long_pooled", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="results.json holding both conditions, or REF.json:NEW.json")
    p.add_argument("--condition", required=True)
    p.add_argument("--reference", default="fold-recall-all-ranked")
    args = p.parse_args(argv)
    for path in (f for run in args.runs for f in run.split(":")):
        if not Path(path).is_file():
            p.error(f"runs: {path} is not a file; give a long-suite results.json")
    recs = pooled(args.runs, args.condition, args.reference)
    if not recs:
        p.error(f"no question has both {args.reference} and {args.condition} rows in these runs")
    print(f"{args.condition} - {args.reference}, pooled over {len(args.runs)} runs")
    for r in recs:
        print(f"{r['form']}: {r['questions']} questions, accuracy {r['accuracy']:+.3f} "
              f"[{r['accuracy_ci'][0]:+.3f}, {r['accuracy_ci'][1]:+.3f}], fact held whole {r['held_whole']:+.3f} "
              f"[{r['held_whole_ci'][0]:+.3f}, {r['held_whole_ci'][1]:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
