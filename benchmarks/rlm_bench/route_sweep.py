"""Choose `agents.RoutedRecall`'s margin from two runs of the long suite on the same episodes, without a run per margin.

    python -m benchmarks.rlm_bench.route_sweep BM25_RUN/episodes.jsonl LATENT_RUN/episodes.jsonl --split dev
        [--margins 1.1 1.2 1.3 1.5 2.0] [--out docs/results/long_routed/dev_sweep.json]

RoutedRecall answers a question with BM25's recall (`fold-recall-all-ranked`) when BM25's best chunk of the
trajectory scores at least `margin` times the runner-up's, and with latent recall (`fold-latent`) otherwise. Both
conditions ask the same questions at the end of the same episodes, so each question's routed outcome is one of the two
rows already measured: this replays the route (the margin recomputed by `agents.recall.bm25_chunks` over the
trajectory as the question sees it, in 60-word chunks as at the suite's recall budget) and reports, per question
form, availability (the fact's share in the call's context) and accuracy, with the share of calls sent to latent
recall. The two runs' caches are built the same way but separately, so the replay is an estimate; the chosen margin
is then run as the `fold-routed` condition itself.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from agents.recall import bm25_chunks
from benchmarks.rlm_bench.long_episodes import FORMS, make_long_episode, question_event, question_text

CHUNK_WORDS = 60   # TextRecall's chunk at a recall budget of 180 tokens or more


class _Words:
    """A token counter for `bm25_chunks` (the margin does not depend on it)."""

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def rows_of(path: str | Path, condition: str) -> dict[tuple, dict]:
    """(seed, length, question) -> the condition's row, from a run's episodes.jsonl."""
    out = {}
    for line in Path(path).read_text().splitlines():
        for r in json.loads(line)["rows"]:
            if r["condition"] == condition:
                out[(r["seed"], r["length"], r["question"])] = r
    return out


def margins(keys: list[tuple], split: str) -> dict[tuple, float]:
    """BM25's margin for each question, over the trajectory the question is asked on (the episode and the question
    events before it)."""
    out, episodes = {}, {}
    for seed, length, i in keys:
        ep = episodes.setdefault((seed, length), make_long_episode(seed, length, split=split))
        text = ep.text + "".join(question_event(q, j) for j, q in enumerate(ep.questions[:i]))
        found = bm25_chunks(text, question_text(ep.questions[i]), 240, _Words(), chunk_words=CHUNK_WORDS)
        out[(seed, length, i)] = float(found.margin)
    return out


def sweep(bm25: dict, latent: dict, margin_of: dict, grid: list[float]) -> list[dict]:
    keys = [k for k in sorted(set(bm25) & set(latent)) if bm25[k]["quarter"]]
    out = []
    for label, pick in ([("bm25", lambda k: bm25[k]), ("latent", lambda k: latent[k])]
                        + [(m, (lambda m: lambda k: bm25[k] if margin_of[k] >= m else latent[k])(m)) for m in grid]):
        entry = {"margin": label, "to_latent": statistics.mean(float(pick(k) is latent[k]) for k in keys)}
        for form in FORMS:
            ks = [k for k in keys if bm25[k]["form"] == form]
            entry[form] = dict(questions=len(ks), availability=statistics.mean(pick(k)["covered_fact"] for k in ks),
                               accuracy=statistics.mean(float(pick(k)["correct"]) for k in ks))
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rlm_bench.route_sweep", description=__doc__.split("\n")[0])
    p.add_argument("bm25", help="episodes.jsonl of a run with fold-recall-all-ranked")
    p.add_argument("latent", help="episodes.jsonl of a run with fold-latent on the same episodes")
    p.add_argument("--split", choices=["dev", "heldout"], required=True)
    p.add_argument("--margins", type=float, nargs="+", default=[1.1, 1.2, 1.3, 1.4, 1.5, 2.0])
    p.add_argument("--out", help="write the sweep as JSON here")
    args = p.parse_args(argv)
    bm25, latent = rows_of(args.bm25, "fold-recall-all-ranked"), rows_of(args.latent, "fold-latent")
    if not set(bm25) & set(latent):
        raise SystemExit("route_sweep: the two runs share no question (same --split, lengths and episodes needed).")
    result = sweep(bm25, latent, margins(sorted(set(bm25) & set(latent)), args.split), args.margins)
    print("| margin | to latent | own: availability | accuracy | paraphrased: availability | accuracy |")
    print("|---|---|---|---|---|---|")
    for e in result:
        o, q = e["own"], e["paraphrase"]
        print(f"| {e['margin']} | {e['to_latent']:.2f} | {o['availability']:.2f} | {o['accuracy']:.2f} | "
              f"{q['availability']:.2f} | {q['accuracy']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(split=args.split, runs=[args.bm25, args.latent], sweep=result),
                                             indent=1))


if __name__ == "__main__":
    main()
