"""Our query-agnostic importance (briefing.importance) against KVzip's own score, on the same text and weights.

Runs in the kvpress environment (`make .venv-compare/.installed`; kvpress 0.5.5 needs transformers < 5.3):

    .venv-compare/bin/python -m benchmarks.importance_check [--split dev --case 0] [--out DIR]

For one selection case it builds our cache with the score, runs kvpress's KVzipPress on the same tokens and reads
its score before it compresses, then prints and writes (JSON): the rank correlation of the two scores per layer
(mean over KV heads), the overlap of their top 20% per (layer, head), and how KVzip spreads a 20% budget over the
layers and heads (it ranks every (layer, head, position) together; our selectors keep the same count in every
(layer, KV head)).

It also scores the cheapest candidate for a replacement (issue 28: "or a cheaper estimate that you show matches
it"): each key's most attention from a later query of its own prefill chunk, read off the prefill (no extra
forward), over the same key subsample; and reports how it agrees with our reconstruction score (rank correlation,
per-row top-20% overlap, and the overlap of the global top 10% that `allocation="global"` keeps).

`--windowed 4096 7900` instead measures the estimate the cache ships (its repeat attends only to what the score's
softmax sees) against KVzip's own forward (the repeat attends to the whole cache), on the anchor's text:

    OMP_NUM_THREADS=1 python -m benchmarks.importance_check --windowed 4096 7900
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

OUT = "docs/results/selection_importance"
KEPT = 0.2


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(-1).argsort(-1).float()                                   # [..., T] rank of each position


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rank correlation along the last axis: a, b [L, H, T] -> [L, H]."""
    ra, rb = ranks(a), ranks(b)                                                 # [L, H, T]
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).mean(-1) / (ra.std(-1, unbiased=False) * rb.std(-1, unbiased=False))


def kvzip_score(lm, ids: list[int]) -> torch.Tensor:
    """KVzipPress's score [L, H, T] of `ids` (read just before it compresses)."""
    import kvpress

    from benchmarks.kvpress_compare import press_logprobs

    press, got = kvpress.KVzipPress(compression_ratio=0.5), {}
    compress = press.compress_post

    def grab(model):
        got["score"] = press.score_val.clone()                                  # [L, 1, H, T]
        compress(model)

    press.compress_post = grab
    press_logprobs(lm, ids, lm.encode(" and so on"), press)
    return got["score"][:, 0].float()                                           # [L, H, T]


def prefill_attention_score(lm, ids: list[int], chunk: int) -> torch.Tensor:
    """[held layers, KV heads, T]: each key's most attention from a query of its own prefill chunk at or after it
    (the query heads of its group), over the importance's key subsample (the first SINKS slots and the chunk)."""
    from briefing.attention import BiasState
    from briefing.context import run_model
    from briefing.importance import SINKS

    cache, out = lm.new_cache(), []
    for start in range(0, len(ids), chunk):
        stop = min(len(ids), start + chunk)
        state = BiasState(capture=True)
        run_model(lm, cache, ids[start:stop], start, state, logits=False)
        s, c = min(SINKS, start), stop - start
        rows = []
        for layer in lm.held_layers:
            q = state.queries[layer][0].float()                                 # [heads, c, d]
            k = cache.layers[layer].keys[0].float()                             # [KVH, stop, d]
            kvh = k.shape[0]
            sub = torch.cat([k[:, :s], k[:, start:stop]], 1)                    # [KVH, s + c, d]
            logits = q.reshape(kvh, -1, c, q.shape[-1]) @ sub.transpose(-1, -2)[:, None] * lm.scaling
            later = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)  # [c, c] key after the query
            logits[..., s:] = logits[..., s:].masked_fill(later, float("-inf"))   # [KVH, g, c, s + c]
            rows.append(torch.softmax(logits, -1)[..., s:].amax(dim=(1, 2)))   # [KVH, c]
        out.append(torch.stack(rows))                                           # [Lh, KVH, c]
    return torch.cat(out, -1)                                                   # [Lh, KVH, T]


def global_overlap(a: torch.Tensor, b: torch.Tensor, share: float) -> float:
    """Overlap of the global top `share` of every (layer, head, position) of a and b [L, H, T]."""
    k = int(share * a.numel())
    return len(set(a.reshape(-1).topk(k).indices.tolist()) & set(b.reshape(-1).topk(k).indices.tolist())) / k


def check(split: str, index: int) -> dict:
    import briefing
    from benchmarks.recall_cases import cases

    lm = briefing.load_model()
    case = cases(lm, split)[index]
    cache = briefing.TrajectoryCache(lm, case.text, fold=None, importance=True)
    ours = cache.store.importance.float()                                       # [L, H, T]
    L, H, T = ours.shape
    window = cache.importance_window or cache.chunk_tokens
    cheap = prefill_attention_score(lm, cache.ids, window)[..., :T]             # [L, H, T] before kvpress patches
    theirs = kvzip_score(lm, cache.ids)[..., :T]                                # [L, H, T]
    t = int(KEPT * T)
    a, b = ours.topk(t, -1).indices, theirs.topk(t, -1).indices                 # [L, H, t]
    overlap = torch.tensor([[len(set(a[i, h].tolist()) & set(b[i, h].tolist())) / t for h in range(H)]
                            for i in range(L)])                                 # [L, H]
    best = theirs.reshape(-1).topk(int(KEPT * theirs.numel())).indices          # KVzip's global 20%
    per_head = torch.bincount(best // T, minlength=L * H).float().reshape(L, H) / T   # [L, H] share kept
    c = cheap.topk(t, -1).indices                                               # [L, H, t]
    cheap_overlap = torch.tensor([[len(set(c[i, h].tolist()) & set(a[i, h].tolist())) / t for h in range(H)]
                                  for i in range(L)])                           # [L, H]
    candidate = {"spearman_mean": round(spearman(cheap, ours).mean().item(), 3),
                 "top_overlap_mean": round(cheap_overlap.mean().item(), 3),
                 "global_top10_overlap": round(global_overlap(cheap, ours, 0.1), 3),
                 "global_top10_overlap_kvzip_vs_ours": round(global_overlap(theirs, ours, 0.1), 3)}
    return {"split": split, "case": index, "essay": case.essay, "kind": case.kind, "tokens": T, "kept": KEPT,
            "prefill_attention_vs_ours": candidate,
            "spearman_per_layer": [round(v, 3) for v in spearman(ours, theirs).mean(-1).tolist()],
            "top_overlap_per_layer": [round(v, 3) for v in overlap.mean(-1).tolist()],
            "kvzip_kept_per_layer": [round(v, 3) for v in per_head.mean(-1).tolist()],
            "kvzip_kept_per_head_min_max": [round(per_head.min().item(), 3), round(per_head.max().item(), 3)]}


def windowed_check(tokens: int) -> dict:
    """The cache's reconstruction forward (the repeat attends only to what the score's softmax sees: sinks, window,
    itself) against KVzip's own (the repeat attends to the whole cache), chunk by chunk over the anchor's text
    (`benchmarks.briefing_bench.essay_text`) at `tokens` tokens: agreement and time of each, against the prefill."""
    import time

    import briefing
    from benchmarks.briefing_bench import essay_text
    from briefing.importance import reconstruction_scores

    lm = briefing.load_model()
    ids = lm.encode(essay_text(tokens * 8))[:tokens]
    cache = briefing.TrajectoryCache(lm, lm.decode(ids), fold=None)
    store, T, chunk = cache.store, cache.length, cache.importance_window or cache.chunk_tokens   # scored in pieces
    scores, times = {True: [], False: []}, {True: 0.0, False: 0.0}
    whole = [(layer.keys, layer.values) for layer in store.kv.layers]
    for a in range(0, T, chunk):
        b = min(T, a + chunk)
        for layer in store.kv.layers:   # the cache as it stood when the chunk was appended: slots [0, b)
            layer.keys, layer.values = layer.keys[..., :b, :], layer.values[..., :b, :]
        for windowed in (True, False):
            t0 = time.perf_counter()
            scores[windowed].append(reconstruction_scores(lm, store, a, b, cache.ids[a:b], cache.ids[:a], b, chunk,
                                                          windowed=windowed))   # [L, H, c]
            times[windowed] += time.perf_counter() - t0
        for layer, (k, v) in zip(store.kv.layers, whole):
            layer.keys, layer.values = k, v
    ours, full = torch.cat(scores[True], -1), torch.cat(scores[False], -1)      # [L, H, T]
    t = int(KEPT * T)
    a, b = ours.topk(t, -1).indices, full.topk(t, -1).indices                   # [L, H, t]
    row = sum(len(set(a[i, h].tolist()) & set(b[i, h].tolist())) for i in range(a.shape[0])
              for h in range(a.shape[1])) / a.numel()
    flat = spearman(ours.reshape(1, 1, -1), full.reshape(1, 1, -1)).item()
    return {"tokens": T, "chunk": chunk, "prefill_s": cache.prefill_s,
            "windowed_s": times[True], "full_s": times[False],
            "windowed_x_prefill": round(times[True] / cache.prefill_s, 3),
            "full_x_prefill": round(times[False] / cache.prefill_s, 3),
            "spearman_all": round(flat, 4), "spearman_per_row_mean": round(spearman(ours, full).mean().item(), 4),
            "top20_overlap_per_row": round(row, 4),
            "global_top10_overlap": round(global_overlap(ours, full, 0.1), 4),
            "global_top5_overlap": round(global_overlap(ours, full, 0.05), 4),
            "first_chunk_max_abs_diff": float((ours[..., :chunk] - full[..., :chunk]).abs().max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="dev", choices=["dev", "heldout"])
    p.add_argument("--case", type=int, default=0, help="case index in the split (default 0)")
    p.add_argument("--windowed", type=int, nargs="+", default=None, metavar="TOKENS",
                   help="instead: the cache's windowed reconstruction forward against KVzip's own at these lengths "
                        "(the main environment is enough)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.windowed:
        rows = []
        for tokens in args.windowed:
            rows.append(windowed_check(tokens))
            print(json.dumps(rows[-1]), flush=True)
        (out / "windowed_check.json").write_text(json.dumps(rows, indent=1) + "\n")
        return 0
    res = check(args.split, args.case)
    (out / f"importance_check_{args.split}_{args.case}.json").write_text(json.dumps(res, indent=1) + "\n")
    for key, value in res.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
