"""Paired differences between two conditions of the family suite, pooled over several runs.

    python -m benchmarks.rlm_bench.paired --condition amh_b0.1 --reference am_b0.1 [--by family] RUN [RUN ...]

Each RUN is a `results.json` holding both conditions, or `REF.json:NEW.json` (the reference's rows from the first
file, the condition's from the second: e.g. a run of the default and a run of one more condition on the same seeds).
Episodes are paired by id within each RUN and pooled (an episode in two RUNs is refused: it would count twice).
Printed: episodes, each side's accuracy, the difference with the suite's paired bootstrap 95% interval
(`stats.summarize`), the choices equal to the reference's, the episodes gained (right where the reference is wrong)
and lost (wrong where it is right), and the condition's median choice KL (against full text, as the suite records
it). `--by FIELD` (a field of the rows: family, target_tokens, depth) adds the same comparison within each of its
values, pooled the same way (one line each, sorted).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.rlm_bench.stats import summarize


def rows_of(path: str, condition: str) -> dict[str, dict]:
    """{episode id: row} of `condition` in the results.json at `path`."""
    return {r["episode"]: r for r in json.loads(Path(path).read_text())["rows"] if r["condition"] == condition}


def paired(runs: list[str], condition: str, reference: str, by: str | None = None) -> dict:
    """The pooled comparison (see the module docstring), with "groups" {value of the rows' `by`: the same
    comparison within it} when `by` is given; ValueError (one line) for a RUN without either condition, an
    episode in two RUNs or rows without `by`."""
    pairs: dict[str, tuple[dict, dict]] = {}
    for run in runs:
        ref_path, _, new_path = run.partition(":")
        ref, new = rows_of(ref_path, reference), rows_of(new_path or ref_path, condition)
        for name, got, path in ((reference, ref, ref_path), (condition, new, new_path or ref_path)):
            if not got:
                raise ValueError(f"{run}: {path} has no rows of {name}; give a run that holds it")
        for e in sorted(ref.keys() & new.keys()):
            if e in pairs:
                raise ValueError(f"{run}: episode {e} is in an earlier run too; give each episode once")
            pairs[e] = (new[e], ref[e])
    if not pairs:
        raise ValueError(f"no episode has both {condition} and {reference}; pair runs made on the same seeds")
    x = compare(list(pairs.values()), condition, reference)
    if by is not None:
        if any(by not in b for _, b in pairs.values()):
            raise ValueError(f"--by {by}: the rows have no field {by!r}; give one of family, target_tokens, depth")
        values = sorted({b[by] for _, b in pairs.values()}, key=lambda v: (isinstance(v, str), v))   # numbers first
        x["groups"] = {v: compare([(a, b) for a, b in pairs.values() if b[by] == v], condition, reference)
                       for v in values}
    return x


def compare(pairs: list[tuple[dict, dict]], condition: str, reference: str) -> dict:
    """The paired comparison of (condition row, reference row) pairs (see the module docstring)."""
    rows = [{**r, "condition": c} for a, b in pairs for c, r in (("condition", a), ("reference", b))]
    x = {s["condition"]: s for s in summarize(rows, reference="reference")}["condition"]
    return {"condition": condition, "reference": reference, "episodes": len(pairs),
            "accuracy": x["accuracy"], "reference_accuracy": x["accuracy"] - x["diff_full"],
            "diff": x["diff_full"], "diff_ci95": x["diff_full_ci95"],
            "same_choice": sum(a["choice"] == b["choice"] for a, b in pairs),
            "gained": sum(bool(a["correct"]) and not b["correct"] for a, b in pairs),
            "lost": sum(bool(b["correct"]) and not a["correct"] for a, b in pairs),
            "choice_kl_median": statistics.median(a.get("choice_kl", 0.0) for a, _ in pairs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rlm_bench.paired", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="results.json holding both conditions, or REF.json:NEW.json")
    p.add_argument("--condition", required=True)
    p.add_argument("--reference", default="full")
    p.add_argument("--by", default=None, metavar="FIELD", help="also compare within each value of this row field "
                   "(family, target_tokens, depth)")
    args = p.parse_args(argv)
    try:
        x = paired(args.runs, args.condition, args.reference, args.by)
    except (ValueError, OSError) as e:
        p.error(str(e))
    print(line(f"{x['condition']} - {x['reference']}", x))
    for value, g in x.get("groups", {}).items():
        print(line(f"  {args.by} {value}", g))
    return 0


def line(name: str, x: dict) -> str:
    """One comparison as a printed line."""
    lo, hi = x["diff_ci95"]
    return (f"{name}: {x['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] over {x['episodes']} episodes (accuracy "
            f"{x['accuracy']:.3f} against {x['reference_accuracy']:.3f}); choices as the reference's "
            f"{x['same_choice']}; gained {x['gained']}, lost {x['lost']}; median choice KL "
            f"{x['choice_kl_median']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
