"""kvpress and our selectors side by side, in one process: same weights, texts, questions and kept counts.

    make compare                      # builds .venv-compare (kvpress 0.5.5, transformers < 5.3) and runs this
    .venv-compare/bin/python -m benchmarks.kvpress_compare [--split heldout] [--presses NAME ...]
    python -m benchmarks.kvpress_compare --report       # tables and PNG from the JSON (any environment)

kvpress's way (its pipeline prefills the context under the press; here the context is text + question, as in
the design notes' anchor): the press compresses during the prefill of text + question, then the answer tokens
are forwarded over the compressed cache at positions continuing from the true length. Ours: the trajectory is
the text, the question is the worker prompt (its keys and values from the full-cache scoring pass are kept).
Kept counts are matched: ours keeps t = ceil(r * T) trajectory positions plus the n prompt positions, and the
press gets compression_ratio = 1 - (t + n + 0.5) / (T + n), so it keeps t + n of the T + n (per head on
average; the count each press actually kept is recorded). The metric is the answer-token KL against one full
-cache reference, shared by both sides (our identity compaction is checked against it). A press that raises
is reported with its error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import briefing
from benchmarks.recall_cases import cases
from benchmarks.selection_bench import DEFAULT, VARIANTS, bootstrap_median
from briefing.bench import ANSWER, QUESTION
from rlm.data import data_dir

RATIOS = (0.5, 0.2, 0.1, 0.05)
PRESSES = ("SnapKV", "AdaKV", "CriticalAdaKV", "PyramidKV", "ExpectedAttention", "TOVA", "KeyDiff", "KVzip",
           "Compactor", "StreamingLLM")
OURS = (DEFAULT, "look-ahead 8", "look-ahead 24, decay 0.95", "re-score with 8 generated tokens + look-ahead 8",
        "smoothing 63 (the issue's crude probe)", "top-k, smoothing 5 (SnapKV-like, no fit)")
OUT = Path("docs/results/kvpress_compare")


def make_press(name: str, ratio: float):
    import kvpress as kp

    return {
        "SnapKV": lambda: kp.SnapKVPress(compression_ratio=ratio),
        "AdaKV": lambda: kp.AdaKVPress(press=kp.SnapKVPress(compression_ratio=ratio)),
        "CriticalAdaKV": lambda: kp.CriticalAdaKVPress(press=kp.SnapKVPress(compression_ratio=ratio)),
        "PyramidKV": lambda: kp.PyramidKVPress(compression_ratio=ratio),
        "ExpectedAttention": lambda: kp.ExpectedAttentionPress(compression_ratio=ratio),
        "TOVA": lambda: kp.TOVAPress(compression_ratio=ratio),
        "KeyDiff": lambda: kp.KeyDiffPress(compression_ratio=ratio),
        "KVzip": lambda: kp.KVzipPress(compression_ratio=ratio),
        "Compactor": lambda: kp.CompactorPress(compression_ratio=ratio),
        "StreamingLLM": lambda: kp.StreamingLLMPress(compression_ratio=ratio),
    }[name]()


@contextlib.contextmanager
def attention(lm, name: str):
    """kvpress patches the registered SDPA function (head-wise masking for AdaKV-style presses): run presses on it."""
    before = lm.model.config._attn_implementation
    lm.model.config._attn_implementation = name
    try:
        yield
    finally:
        lm.model.config._attn_implementation = before


@torch.no_grad()
def press_logprobs(lm, ids: list[int], answer_ids: list[int], press) -> tuple[torch.Tensor, float]:
    """Prefill `ids` under `press` (None: the full reference), then teacher-force the answer. Returns log-probs
    [len(answer), vocab] and the kept positions per (layer, KV head), averaged."""
    from transformers import DynamicCache

    cache = DynamicCache()
    n = len(ids)
    with attention(lm, "sdpa"), (press(lm.model) if press is not None else contextlib.nullcontext()):
        out = lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
    with attention(lm, "sdpa"):
        rest = lm.model(input_ids=torch.tensor([answer_ids[:-1]]), past_key_values=cache, use_cache=True,
                        position_ids=torch.arange(n, n + len(answer_ids) - 1)[None]).logits[0]
    kept = []
    for i, layer in enumerate(lm.model.model.layers):
        length = cache.layers[i].keys.shape[-2] - (len(answer_ids) - 1)
        masked = getattr(layer.self_attn, "masked_key_indices", None)  # AdaKV-style presses mask, not drop
        heads = cache.layers[i].keys.shape[1]
        kept.append(length - (len(masked[0]) / heads if masked is not None else 0.0))
        layer.self_attn.masked_key_indices = None
    logits = torch.cat([out.logits[0, -1:], rest], 0).float()
    return torch.log_softmax(logits, -1), float(np.mean(kept))


def kl(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref.exp() * (ref - got)).sum(-1).mean())


def one_case(lm, text: str, question: str, answer: str, presses: list[str], ours: list[str]) -> dict:
    cache = briefing.TrajectoryCache(lm, text)
    T, q_ids, a_ids = cache.length, lm.encode(question), lm.encode(answer)
    n, ids = len(q_ids), cache.ids + q_ids
    ref, _ = press_logprobs(lm, ids, a_ids, None)
    identity = kl(ref, briefing.token_logprobs(cache.compact(question, briefing.KeepAll()), answer)[1])
    row: dict = {"tokens": T, "prompt_tokens": n, "identity_kl": identity, "ours": {}, "presses": {}, "kept": {}}
    for r in RATIOS:
        t = math.ceil(r * T)
        row["kept"][str(r)] = t + n
        for name in ours:
            ctx = cache.compact(question, VARIANTS[name](t))
            row["ours"].setdefault(name, {})[str(r)] = kl(ref, briefing.token_logprobs(ctx, answer)[1])
        ratio = 1.0 - (t + n + 0.5) / (T + n)
        for name in presses:
            entry = row["presses"].setdefault(name, {})
            try:
                got, kept = press_logprobs(lm, ids, a_ids, make_press(name, ratio))
                entry[str(r)] = {"kl": kl(ref, got), "kept": kept}
            except Exception as exc:  # reported, not hidden: the table says which press failed and why
                entry[str(r)] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                                 "where": traceback.format_exc().strip().splitlines()[-3][:200]}
    return row


def run(split: str, presses: list[str], ours: list[str], out: Path, anchor: bool) -> dict:
    import kvpress  # before the model registers the briefing attention: kvpress wraps every registered function
    import transformers

    lm = briefing.load_model()
    t0 = time.perf_counter()
    res: dict = {"split": split, "model": lm.name, "kvpress": kvpress.__version__ if hasattr(kvpress, "__version__")
                 else "0.5.5", "transformers": transformers.__version__, "ratios": list(RATIOS), "presses": presses,
                 "ours": ours, "load_average_at_start": os.getloadavg(), "cases": []}
    if anchor:
        res["anchor"] = one_case(lm, (data_dir() / "pg_essays" / "avg.txt").read_text()[:9000], QUESTION, ANSWER,
                                 presses, ours)
        print("anchor done", json.dumps(res["anchor"])[:2000], flush=True)
    for case in (cases(lm, split) if split else []):
        row = one_case(lm, case.text, case.question, case.answer, presses, ours)
        row.update(essay=case.essay, kind=case.kind)
        res["cases"].append(row)
        print(f"[{split}] {case.essay} {case.kind} identity {row['identity_kl']:.2e} "
              + json.dumps({k: {r: (v.get("kl") if isinstance(v, dict) else v) for r, v in d.items()}
                            for k, d in {**row["ours"], **row["presses"]}.items()}), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"compare_{split}.json").write_text(json.dumps(res, indent=2))
    res["wall_s"] = time.perf_counter() - t0
    res["load_average_at_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare_{split or 'anchor'}.json").write_text(json.dumps(res, indent=2))
    return res


def _press_value(entry: dict) -> float | None:
    return entry.get("kl")


def report(out: Path) -> str:
    lines: list[str] = []
    for path in sorted(out.glob("compare_*.json")):
        res = json.loads(path.read_text())
        blocks = []
        if "anchor" in res:
            blocks.append(("anchor (avg.txt, first 9,000 characters)", [res["anchor"]]))
        if res["cases"]:
            blocks.append((f"{res['split']} split, median over {len(res['cases'])} cases [bootstrap 95%]", res["cases"]))
        for title, rows in blocks:
            one = len(rows) == 1
            lines += [f"**{title}**: answer KL vs the full cache, kept positions matched "
                      f"(kvpress {res['kvpress']}, transformers {res['transformers']})", "",
                      "| method | 50% kept | 20% | 10% | 5% |", "|---|---|---|---|---|"]
            table: dict[str, list[str]] = {}
            best: dict[str, tuple[float, str]] = {}
            for name in res["ours"] + res["presses"]:
                cells = []
                for r in RATIOS:
                    vals, errors = [], []
                    for row in rows:
                        if name in row["ours"]:
                            vals.append(row["ours"][name][str(r)])
                        else:
                            e = row["presses"][name][str(r)]
                            (vals.append(e["kl"]) if "kl" in e else errors.append(e["error"]))
                    if errors:
                        cells.append(f"error: {errors[0][:80]}")
                        continue
                    med = bootstrap_median(vals)
                    cells.append(f"{med[0]:.4f}" if one else f"{med[0]:.3f} [{med[1]:.3f}, {med[2]:.3f}]")
                    if name in res["presses"] and (str(r) not in best or med[0] < best[str(r)][0]):
                        best[str(r)] = (med[0], name)
                label = f"ours: {name}" if name in res["ours"] else name
                table[label] = cells
            for label, cells in table.items():
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("| best press | " + " | ".join(f"{best[str(r)][1]} {best[str(r)][0]:.4f}" if str(r) in best
                                                        else "-" for r in RATIOS) + " |")
            ident = max(row["identity_kl"] for row in rows)
            lines += ["", f"Identity check (our keep-all vs the shared reference): max KL {ident:.1e}.", ""]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_tables.md").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kvpress_compare", description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=["dev", "heldout", ""], default="heldout", help="'' for the anchor only")
    parser.add_argument("--presses", nargs="+", default=list(PRESSES), choices=PRESSES)
    parser.add_argument("--ours", nargs="+", default=list(OURS), help="variant names from benchmarks.selection_bench")
    parser.add_argument("--no-anchor", action="store_true")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--report", action="store_true", help="only write the tables from the JSON files")
    args = parser.parse_args(argv)
    unknown = [v for v in args.ours if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = Path(args.out)
    if not args.report:
        run(args.split, args.presses, args.ours, out, not args.no_anchor)
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
