"""Paired differences pooled over several long-suite runs (other lengths, windows or settings), by question form.

`python -m benchmarks.rlm_bench.long_pooled --condition fold-routed [--by-length] REF.json:NEW.json [FILE.json ...]`:
each argument is one run holding both conditions, or a pair whose first file holds the reference's rows and the second
the condition's; a trailing `=NAME` takes that argument's condition rows from NAME instead (the same recall under
another name in an older run, e.g. `fold-routed`, the default when that run was made, against `fold-routed-peaks`,
which spells out the default of rounds 12-14), and in a pair `REF.json=NAME:NEW.json` takes the reference's rows from
NAME. Questions are paired by (length, episode, question) within each argument and pooled; printed per form
(`--by-length`: per length and form): questions, each side's accuracy and availability (mean share of the fact's
characters in the call's context), the accuracy difference and the difference in the share of questions whose fact the
call's context held whole, each with a 95% bootstrap interval over questions (`benchmarks.stats.bootstrap_ci`).
Also, per side: the accuracy where its call held the fact whole (with the count of such questions), and, for rows
that record it (round 28 on), how many of the question's two same-kind distractor statements the call held whole on
average; for reference rows that record a latent lookup's `tail_gap` (round 29 on), the share of those calls whose
lookup ranked the unfolded tail's best piece above every piece it could fetch (the tail it does not rank: with
`tail_skip`, the trajectory's last tokens alone). `--by-place` also splits each form by
where the fact was at the call: "tail" where the persistent cache held it whole (the reference row's `held_fact`: its
unfolded tail, which the call's compaction thins per head and which latent recall skips by default), "folded"
elsewhere. `--by-route` splits each form by the route the reference's call took
(its row's `recall_how`): "bm25" where BM25's recall was the call's own, "split" where latent recall had a part,
"none" where no recall was made (round 22).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.rlm_bench.long_episodes import WHOLE
from benchmarks.stats import bootstrap_ci


def rows_of(path: str, condition: str) -> dict[tuple, dict]:
    rows = json.loads(Path(path).read_text())["rows"]
    return {(r["length"], r["episode"], r["question"]): r for r in rows if r["condition"] == condition}


def place(row: dict) -> str:
    """Where a row's fact was at its call: "tail" (the persistent cache held it whole) or "folded"."""
    return "tail" if row.get("held_fact", 0.0) >= WHOLE else "folded"


def route(row: dict) -> str:
    """The route a row's call took: "bm25" (BM25's recall the call's own, the tail's pins beside it included),
    "split" (latent recall's part in it), "none" (no recall made, or a row without `recall_how`)."""
    how = row.get("recall_how") or ""
    return "none" if not how else "bm25" if how.split("+")[0] == "bm25" else "split"


def split_run(run: str) -> tuple[str, str, str, str]:
    """One argument's reference file and its rows' name, then the condition's file and its rows' name ("": the
    --reference / --condition name): RUN[=NAME] (one file, NAME the condition's) or REF[=NAME]:NEW[=NAME]."""
    if ":" not in run:
        file, _, name = run.partition("=")
        return file, "", file, name
    ref, new = run.split(":", 1)
    return (*ref.partition("=")[::2], *new.partition("=")[::2])


def pooled(runs: list[str], condition: str, reference: str, by_length: bool = False,
           by_place: bool = False, by_route: bool = False) -> list[dict]:
    """One record per form (by_length: per length and form; by_place: also per `place`; by_route: also per the
    reference's `route`): questions, accuracy and
    whole-availability differences (condition minus reference), each side's accuracy and availability (mean
    share of the fact held), and, where rows record them, the distractors held and the share of the reference's
    lookups whose `tail_gap` is above 0 (`ref_tail_first`, over `ref_looked` rows)."""
    diffs: dict[tuple, dict[str, list[float]]] = {}
    for run in runs:
        ref_file, ref_name, new_file, name = split_run(run)
        ref, new = rows_of(ref_file, ref_name or reference), rows_of(new_file, name or condition)
        for key in sorted(new.keys() & ref.keys()):
            a, b = new[key], ref[key]
            group = ((a["length"],) if by_length else ()) + ((place(b),) if by_place else ()) + \
                ((route(b),) if by_route else ()) + (a["form"],)
            d = diffs.setdefault(group, {"accuracy": [], "held_whole": [], "new": [], "ref": [], "new_available": [],
                                         "ref_available": []})
            d["accuracy"].append(float(a["correct"]) - float(b["correct"]))
            d["held_whole"].append(float(a["covered_fact"] >= WHOLE) - float(b["covered_fact"] >= WHOLE))
            d["new"].append(float(a["correct"]))
            d["ref"].append(float(b["correct"]))
            d["new_available"].append(float(a["covered_fact"]))
            d["ref_available"].append(float(b["covered_fact"]))
            for side, r in (("new", a), ("ref", b)):
                if r["covered_fact"] >= WHOLE:   # accuracy where the fact was held whole (not paired)
                    d.setdefault(f"{side}_when_whole", []).append(float(r["correct"]))
            if "distractors_held" in a and "distractors_held" in b:   # rows of round 28 on
                d.setdefault("new_distractors", []).append(float(a["distractors_held"]))
                d.setdefault("ref_distractors", []).append(float(b["distractors_held"]))
            if "tail_gap" in b:   # round 29 on: the reference's lookup found its best piece in view
                d.setdefault("ref_tail_first", []).append(float(b["tail_gap"] > 0))
    out = []
    for group, d in sorted(diffs.items()):
        rec = {"form": group[-1], "questions": len(d["accuracy"]), "ref_looked": len(d.get("ref_tail_first", []))}
        for side in ("new", "ref"):
            rec[f"{side}_whole_questions"] = len(d.get(f"{side}_when_whole", []))
        if by_length:
            rec["length"] = group[0]
        if by_place:
            rec["place"] = group[-3 if by_route else -2]
        if by_route:
            rec["route"] = group[-2]
        for k, v in d.items():
            rec[k] = statistics.fmean(v)
            if k in ("accuracy", "held_whole"):
                rec[f"{k}_ci"] = list(bootstrap_ci(v))
        out.append(rec)
    return out


def extra(rec: dict) -> str:
    """A record's accuracy where each side held the fact whole, the same-kind distractors each side's calls held
    whole per question (rows that record them), and how many of the reference's lookups ranked the unfolded tail's
    best piece above every fetchable one (`ref_tail_first` of `ref_looked`, rows that record `tail_gap`), as printed
    text."""
    out = "; where held whole: accuracy " + " against ".join(
        f"{rec[f'{s}_when_whole']:.2f} ({rec[f'{s}_whole_questions']})" if f"{s}_when_whole" in rec else "- (0)"
        for s in ("new", "ref"))
    if "new_distractors" in rec:
        out += f"; distractors held whole {rec['new_distractors']:.2f} against {rec['ref_distractors']:.2f}"
    if "ref_tail_first" in rec:
        first = round(rec["ref_tail_first"] * rec["ref_looked"])
        out += (f"; the reference's lookup ranked the unfolded tail's best above every fetchable piece in {first} of "
                f"{rec['ref_looked']} calls")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rlm_bench.long_pooled", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="results.json holding both conditions, or REF.json:NEW.json; "
                   "a trailing =NAME: that argument's condition rows are NAME's; REF.json=NAME: the reference's")
    p.add_argument("--condition", required=True)
    p.add_argument("--reference", default="fold-recall-all-ranked")
    p.add_argument("--by-length", action="store_true", help="a record per length and form instead of per form")
    p.add_argument("--by-place", action="store_true", help="split each form by where the fact was at the call: the "
                   "cache's unfolded tail (held whole before the call) or folded away")
    p.add_argument("--by-route", action="store_true", help="split each form by the route the reference's call took: "
                   "BM25's recall the call's own (bm25), latent recall's part in it (split), or none")
    args = p.parse_args(argv)
    for path in (f for run in args.runs for f in split_run(run)[::2]):
        if not Path(path).is_file():
            p.error(f"runs: {path} is not a file; give a long-suite results.json")
    recs = pooled(args.runs, args.condition, args.reference, args.by_length, args.by_place, args.by_route)
    if not recs:
        p.error(f"no question has both {args.reference} and {args.condition} rows in these runs")
    print(f"{args.condition} - {args.reference}, pooled over {len(args.runs)} runs")
    for r in recs:
        lead = "".join(f"{r[k]} " for k in ("length", "place", "route") if k in r)
        print(f"{lead}{r['form']}: {r['questions']} questions, accuracy "
              f"{r['new']:.2f} against {r['ref']:.2f}, {r['accuracy']:+.3f} "
              f"[{r['accuracy_ci'][0]:+.3f}, {r['accuracy_ci'][1]:+.3f}]; available {r['new_available']:.2f} against "
              f"{r['ref_available']:.2f}; fact held whole {r['held_whole']:+.3f} "
              f"[{r['held_whole_ci'][0]:+.3f}, {r['held_whole_ci'][1]:+.3f}]" + extra(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
