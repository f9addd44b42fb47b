"""The latent recall's ranking cost as the trajectory grows (issue 29: "recall's lookup at most 10% of a call"): the
parts of `briefing.latent.lookup` that grow with the trajectory, timed on random unit hidden states shaped as a
worker's archive (the question's forward over the cache, most of a lookup, does not grow and is not here):

- `block_scores(peaks=0)`: every block mean whitened (the covariance and a triangular solve per layer);
- `block_scores(peaks=4)`: the shipped default, the block means plus each block's 4 best tokens;
- `token_peaks`: the best tokens' pass alone (one scan of every token's state).

Median of N, one thread unless told, per shape and length; JSON, a markdown table and a plot:

    OMP_NUM_THREADS=1 python -m benchmarks.lookup_cost [--tokens 8192 16384 32768 65536] [--repeats 7] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from briefing import latent

SHAPES = {"SmolLM2-135M": 576, "Gemma-3-270M": 640}   # hidden size; 3 representative layers, 32-token blocks
LAYERS, BLOCK = 3, 32


def fake_cache(tokens: int, hidden: int, seed: int = 0) -> tuple[SimpleNamespace, torch.Tensor]:
    """What `block_scores` reads of a cache (its archive's representatives, counts and token states), from random
    states that share a few large directions, as a model's do; and a question [layers, hidden]."""
    g = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize
    shared = torch.randn(8, hidden, generator=g)                                       # [8, h]
    h = torch.randn(tokens, 8, generator=g) @ shared * 3 + torch.randn(tokens, hidden, generator=g)   # [T, h]
    nb = tokens // BLOCK
    reps = unit(torch.randn(nb, LAYERS, hidden, generator=g) + h.view(nb, BLOCK, hidden).mean(1)[:, None], dim=-1)
    states = unit(h, dim=-1).half()                                                    # [T, h] as archived
    archive = SimpleNamespace(token_states=lambda: states, representatives=lambda: reps, states_from=0,
                              counts=torch.full((nb,), BLOCK), sums=reps, policy=SimpleNamespace(block=BLOCK))
    return SimpleNamespace(archive=archive), unit(torch.randn(LAYERS, hidden, generator=g), dim=-1)


def median_s(f, repeats: int) -> float:
    f()   # warm
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run(tokens: list[int], repeats: int) -> list[dict]:
    rows = []
    for name, hidden in SHAPES.items():
        for T in tokens:
            cache, q = fake_cache(T, hidden)
            states, last = cache.archive.token_states(), cache.archive.representatives()[:, -1]   # [T, h], [nb, h]
            rows.append(dict(
                shape=name, hidden=hidden, tokens=T, blocks=T // BLOCK, repeats=repeats,
                means_s=median_s(lambda: latent.block_scores(cache, q, peaks=0), repeats),
                default_s=median_s(lambda: latent.block_scores(cache, q, peaks=4), repeats),
                token_peaks_s=median_s(lambda: latent.token_peaks(states, q[-1], last, latent.SHRINK, 4, BLOCK,
                                                                  T // BLOCK), repeats)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| worker shape | tokens | block means s | default (peaks 4) s | best tokens' pass s |",
           "|---|---|---|---|---|"]
    out += [f"| {r['shape']} | {r['tokens']:,} | {r['means_s']:.3f} | {r['default_s']:.3f} | {r['token_peaks_s']:.3f} |"
            for r in rows]
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in SHAPES:
        rs = [r for r in rows if r["shape"] == name]
        for key, style in (("default_s", "-o"), ("means_s", "--s")):
            ax.plot([r["tokens"] for r in rs], [r[key] for r in rs], style, label=f"{name}, {key[:-2]}")
    ax.set_xlabel("trajectory tokens")
    ax.set_ylabel("seconds (median)")
    ax.set_title("latent recall: the ranking's cost")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("docs/results/lookup_cost"))
    a = p.parse_args(argv)
    for t in a.tokens:
        if t < 2 * BLOCK or t % BLOCK:
            p.error(f"--tokens: got {t}; give multiples of {BLOCK} of at least {2 * BLOCK}.")
    for name, v in (("--repeats", a.repeats), ("--threads", a.threads)):
        if v < 1:
            p.error(f"{name}: got {v}; give a positive number.")
    torch.set_num_threads(a.threads)
    rows = run(a.tokens, a.repeats)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "lookup_cost.json").write_text(json.dumps(dict(threads=a.threads, rows=rows), indent=1))
    (a.out / "lookup_cost.md").write_text(table(rows) + "\n")
    plot(rows, a.out / "lookup_cost.png")
    print(table(rows))


if __name__ == "__main__":
    main()
