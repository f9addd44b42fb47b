"""Issue 28's fit target ("at 10% kept the fit's KL stays at most 0.5x top-k's, at 2k and at 8k tokens") off the
anchor: the shipped selection (`AttentionMatching(ratio=...)`), fitted or not, on questions of the selection
bench's kinds (`benchmarks.recall_cases`: continuation, verbatim, multi-span, keywords, number, name) over one
trajectory made of a split's essays, and probes of the fit's reference queries that issue 28 suggests:

- `top-k`: the same selection, no fit (the reference of every ratio);
- `fit`: the shipped fit, whose queries are the prompt's own;
- `fit + context N`: the fit's queries also take the trajectory's last N tokens' queries (each over the keys before
  it, as the prefill computed them; the fit reads them against every key);
- `fit + repeat S x W`: also the queries of a repeat of S random W-token spans of the trajectory after "Repeat the
  previous context exactly." (KVzip's reconstruction queries), forwarded over the whole cache;
- `fit, ridge R`: the shipped queries, the values' ridge at R (1e-2 shipped).

The selection is the same in every row (the prompt's scores); only the fit changes. Per question, the answer's KL
to the full cache; per row, the median KL and the median of each question's KL over top-k's, over the questions.
A probe: the extra queries are passed by wrapping `briefing.compaction.fit_problem` (no option of the library).
`--split anchor` asks the anchor's one question on `benchmarks.compact_time`'s trajectory, beside the others in the
same process.

    OMP_NUM_THREADS=1 python -m benchmarks.fit_probe --split dev heldout anchor --tokens 2048 7900 [--questions 8]
        [--ratio 0.1] [--out DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
from pathlib import Path
from types import SimpleNamespace

import torch

import briefing
from benchmarks.briefing_bench import ANSWER, QUESTION
from benchmarks.compact_time import anchor_text
from benchmarks.recall_cases import KINDS, RECALL_KINDS, make_case_text, normalise, split_essays
from briefing import compaction, kv
from briefing.attention import BiasState
from briefing.context import run_model
from briefing.matching import group_queries
from rlm.data import read_essay

REPEAT = "\n\nRepeat the previous context exactly.\n"


def trajectory(lm, split: str, tokens: int) -> str:
    """The split's essays (normalised, in the split's order) joined and cut to `tokens` tokens at a sentence end;
    for "anchor", `benchmarks.compact_time`'s trajectory (avg.txt, then the other essays, cut to `tokens`)."""
    if split == "anchor":
        return anchor_text(lm, tokens)
    body = "\n\n".join(normalise(read_essay(e)) for e in split_essays()[split])
    text = lm.decode(lm.encode(body)[:tokens])
    end = max(text.rfind(". "), text.rfind(".\n"))
    return text[:end + 1] if end > 0 else text


def context_queries(cache, n: int) -> torch.Tensor:
    """[Lh, H, g n, d]: the post-RoPE queries of the trajectory's last n tokens, forwarded again over the cache rolled
    back before them (the keys and values they append are the prefill's own)."""
    store = cache.store
    T = store.length
    kv.rollback(store.kv, [(T - n, T - n)] * len(store.kv.layers))
    state = BiasState(beta=None, capture=True)
    run_model(cache.lm, store.kv, cache.ids[T - n:T], cache.position - n, state, logits=False)
    return group_queries(state.queries, store.held, cache.lm.kv_heads)


def repeat_queries(cache, spans: int, width: int, seed: int = 0) -> torch.Tensor:
    """[Lh, H, g m, d]: the queries of REPEAT and `spans` random `width`-token spans of the trajectory, forwarded
    over the whole cache (rolled back after)."""
    rng = random.Random(seed)
    ids = cache.lm.encode(REPEAT)
    for _ in range(spans):
        a = rng.randrange(0, cache.store.length - width)
        ids += cache.ids[a:a + width]
    store = cache.store
    before = kv.marks(store.kv)
    state = BiasState(beta=store.attention_bias(), capture=True)
    try:
        run_model(cache.lm, store.kv, ids, cache.position, state, logits=False)
    finally:
        kv.rollback(store.kv, before)
    return group_queries(state.queries, store.held, cache.lm.kv_heads)


@contextlib.contextmanager
def extra_queries(Q: torch.Tensor | None):
    """While inside, every fit also matches the queries Q [Lh, H, m, d] (None: the shipped fit)."""
    real = compaction.fit_problem

    def wrapped(q, K, V, idx, scale, *, blocks=None, bias=None):
        if Q is None:
            return real(q, K, V, idx, scale, blocks=blocks, bias=bias)
        return real(torch.cat([q, Q.to(q.dtype)], 2), K, V, idx, scale, blocks=None, bias=bias)

    compaction.fit_problem = wrapped
    try:
        yield
    finally:
        compaction.fit_problem = real


def run(lm, split: str, tokens: int, questions: int, ratio: float, context: tuple[int, ...] = (64, 256),
        repeats: tuple[tuple[int, int], ...] = ((8, 32), (4, 64)), ridges: tuple[float, ...] = (0.1, 1.0)) -> dict:
    cache = briefing.TrajectoryCache(lm, trajectory(lm, split, tokens), fold=None)
    extra = {f"fit + context {n}": context_queries(cache, n) for n in context if n < cache.store.length}
    extra |= {f"fit + repeat {s} x {w}": repeat_queries(cache, s, w) for s, w in repeats
              if w < cache.store.length}
    rng = random.Random(f"fit-probe-{split}-{tokens}")
    kinds = [*KINDS, *RECALL_KINDS]
    cases, i = [], 0
    if split == "anchor":   # the anchor's one question, as compact_time asks it
        cases = [SimpleNamespace(kind="anchor", question=QUESTION, answer=ANSWER)]
    while split != "anchor" and len(cases) < questions and i < 20 * questions:
        with contextlib.suppress(ValueError):   # a kind this text has no sentence for
            cases.append(make_case_text(cache.text, split, kinds[i % len(kinds)], rng))
        i += 1
    rows = []
    for case in cases:
        _, ref = briefing.token_logprobs(cache.compact(case.question, briefing.KeepAll()), case.answer)

        def kl(selector, Q=None) -> float:
            with extra_queries(Q):
                _, got = briefing.token_logprobs(cache.compact(case.question, selector), case.answer)
            return float((ref.exp() * (ref - got)).sum(-1).mean())

        row = {"kind": case.kind, "top-k": kl(briefing.AttentionMatching(ratio=ratio, fit=None)),
               "fit": kl(briefing.AttentionMatching(ratio=ratio))}
        row |= {name: kl(briefing.AttentionMatching(ratio=ratio), Q) for name, Q in extra.items()}
        row |= {f"fit, ridge {r:g}": kl(briefing.AttentionMatching(ratio=ratio, fit=briefing.Fit(ridge=r)))
                for r in ridges}
        rows.append(row)
    names = [k for k in rows[0] if k != "kind"] if rows else []
    summary = {name: {"median_kl": statistics.median(r[name] for r in rows),
                      "median_ratio_to_topk": statistics.median(r[name] / r["top-k"] for r in rows)}
               for name in names}
    return dict(split=split, tokens=cache.length, ratio=ratio, questions=len(rows), rows=rows, summary=summary)


def table(results: list[dict]) -> str:
    names = list(results[0]["summary"])
    head = "| variant | " + " | ".join(f"{r['split']} {r['tokens']:,} tokens ({r['questions']} q.)" for r in results)
    lines = [head + " |", "|---|" + "---|" * len(results)]
    for name in names:
        cells = [f"{r['summary'][name]['median_kl']:.4f} ({r['summary'][name]['median_ratio_to_topk']:.2f}x)"
                 if name in r["summary"] else "" for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["summary"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(results)
    for j, r in enumerate(results):
        ys = [r["summary"].get(n, {}).get("median_ratio_to_topk", float("nan")) for n in names]
        ax.bar([i + j * width for i in range(len(names))], ys, width, label=f"{r['split']} {r['tokens']:,} tokens")
    ax.axhline(0.5, color="k", ls="--", lw=0.8, label="issue 28's bound (0.5x)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("median of answer KL / top-k's")
    ax.set_title(f"The fit against top-k at {results[0]['ratio']:.0%} kept, by the fit's queries")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=["dev", "heldout", "anchor"], nargs="+", default=["dev"],
                   help="question sets: the selection bench's dev or held-out essays, or the anchor's one question")
    p.add_argument("--tokens", type=int, nargs="+", default=[2048])
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=Path("docs/results/fit_probe"))
    a = p.parse_args(argv)
    for t in a.tokens:
        if t < 512:
            p.error(f"--tokens: got {t}; give at least 512 tokens of trajectory.")
    if a.questions < 1:
        p.error(f"--questions: got {a.questions}; give a positive number.")
    if not 0 < a.ratio < 1:
        p.error(f"--ratio: got {a.ratio}; give the share kept, in (0, 1).")
    lm = briefing.load_model()
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    for split in a.split:
        for t in a.tokens:
            results.append(run(lm, split, t, a.questions, a.ratio))
            (a.out / "fit_probe.json").write_text(json.dumps(results, indent=1))   # as each setting ends
    (a.out / "fit_probe.md").write_text(table(results) + "\n")
    plot(results, a.out / "fit_probe.png")
    print(table(results))


if __name__ == "__main__":
    main()
