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
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import briefing
from benchmarks.briefing_bench import ANSWER, QUESTION
from benchmarks.recall_cases import cases
from benchmarks.readme import DOC, update_readme
from benchmarks.selection_bench import (DEFAULT, HYBRID, PICK, PREVIOUS, VARIANTS, bootstrap_median, case_key,
                                        renamed, scored_cache)
from rlm.data import data_dir

RATIOS = (0.5, 0.2, 0.1, 0.05)
PRESSES = ("SnapKV", "AdaKV", "CriticalAdaKV", "PyramidKV", "ExpectedAttention", "TOVA", "KeyDiff", "KVzip",
           "Compactor", "StreamingLLM")
OURS = (DEFAULT, PREVIOUS, "top-k, smoothing 5 (SnapKV-like, no fit)", PICK, HYBRID,
        "hybrid allocation, importance share 0.5, sinks 4")   # issue 28's opt-ins (rounds 5 and 7) too
OUT = Path("docs/results/kvpress_compare")
BASELINE = "KVzip"   # the press each of our rows is counted against, case by case (the target)


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


SEPARATE_PREFILL = ("KVzip",)  # compresses after the prefill with its own reconstruction passes: run as kvpress does


@torch.no_grad()
def press_logprobs_all(lm, ids: list[int], answer_ids: list[int], name: str, ratios: dict[str, float]) -> dict:
    """One prefill for every ratio of a prefill-hook press. A press compresses a layer's cache after that layer's
    attention has run on the full sequence, so the hidden states a press sees do not depend on its ratio: here
    each layer's hook calls the `compress` of one press object per ratio (each built and initialised as kvpress
    would) and stores the result, leaving the cache full. Each ratio then gets its compressed cache (and
    head-wise masks, for AdaKV-style presses) and the answer is forwarded as in `press_logprobs`. Checked equal
    to kvpress's own path. Returns {ratio: (log-probs, kept) or the exception it raised}."""
    from kvpress.presses.base_press import is_prefilling
    from kvpress.utils import extract_keys_and_values
    from transformers import DynamicCache

    presses = {r: make_press(name, c) for r, c in ratios.items()}
    stored: dict[str, dict[int, tuple]] = {r: {} for r in ratios}
    failed: dict[str, Exception] = {}

    def hook(module, args, kwargs, output):
        hidden = kwargs["hidden_states"]
        if not is_prefilling(kwargs["cache_position"], hidden.shape[1]):
            return output
        keys, values = extract_keys_and_values(kwargs["past_key_values"], module.layer_idx)
        for r, press in presses.items():
            if r in failed:
                continue
            module.masked_key_indices = None
            try:
                k, v = press.compress(module, hidden, keys, values, output[1], kwargs)
            except Exception as exc:  # noqa: BLE001 -- this ratio's own error, reported
                failed[r] = exc
                continue
            stored[r][module.layer_idx] = (k, v, module.masked_key_indices)
        module.masked_key_indices = None
        return output

    layers = lm.model.model.layers
    for press in presses.values():
        press.post_init_from_model(lm.model)
    handles = []
    for layer in layers:
        layer.self_attn.rotary_emb = lm.model.model.rotary_emb
        handles.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        with attention(lm, "sdpa"):
            out = lm.model(input_ids=torch.tensor([ids]), past_key_values=DynamicCache(), use_cache=True,
                           logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    n, result = len(ids), {}
    for r in ratios:
        if r in failed:
            result[r] = failed[r]
            continue
        cache = DynamicCache(ddp_cache_data=[(stored[r][i][0], stored[r][i][1]) for i in range(len(layers))])
        kept = []
        for i, layer in enumerate(layers):
            keys, masked = stored[r][i][0], stored[r][i][2]
            layer.self_attn.masked_key_indices = masked
            kept.append(keys.shape[-2] - (len(masked[0]) / keys.shape[1] if masked is not None else 0.0))
        try:
            with attention(lm, "sdpa"):
                rest = lm.model(input_ids=torch.tensor([answer_ids[:-1]]), past_key_values=cache, use_cache=True,
                                position_ids=torch.arange(n, n + len(answer_ids) - 1)[None]).logits[0]
            logits = torch.cat([out.logits[0, -1:], rest], 0).float()
            result[r] = (torch.log_softmax(logits, -1), float(np.mean(kept)))
        except Exception as exc:  # noqa: BLE001 -- this ratio's own error, reported
            result[r] = exc
        finally:
            for layer in layers:
                layer.self_attn.masked_key_indices = None
    return result


def error_entry(exc: Exception) -> dict:
    where = traceback.format_exception(exc)
    return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
            "where": where[-2].strip().splitlines()[0][:200] if len(where) > 1 else ""}


def kl(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref.exp() * (ref - got)).sum(-1).mean())


def ours_label(name: str, importance_window: int | None) -> str:
    """A row's name: the variant's, and the importance's reconstruction window where --importance-window gave one."""
    return name if importance_window is None else f"{name} [window {importance_window}]"


def one_case(lm, text: str, question: str, answer: str, presses: list[str], ours: list[str],
             importance_window: int | None = None) -> dict:
    cache = scored_cache(lm, text, importance_window)   # scores the importance for the variants that read it
    T, q_ids, a_ids = cache.length, lm.encode(question), lm.encode(answer)
    n, ids = len(q_ids), cache.ids + q_ids
    ref, _ = press_logprobs(lm, ids, a_ids, None)
    identity = kl(ref, briefing.token_logprobs(cache.compact(question, briefing.KeepAll()), answer)[1])
    row: dict = {"tokens": T, "prompt_tokens": n, "identity_kl": identity, "ours": {}, "presses": {}, "kept": {}}
    ratios = {}
    for r in RATIOS:
        t = math.ceil(r * T)
        row["kept"][str(r)] = t + n
        ratios[str(r)] = 1.0 - (t + n + 0.5) / (T + n)
        for name in ours:
            ctx = cache.compact(question, VARIANTS[name](tokens=t))
            row["ours"].setdefault(ours_label(name, importance_window), {})[str(r)] = kl(
                ref, briefing.token_logprobs(ctx, answer)[1])
    for name in presses:
        entry = row["presses"].setdefault(name, {})
        if name not in SEPARATE_PREFILL:
            for r, got in press_logprobs_all(lm, ids, a_ids, name, ratios).items():
                entry[r] = error_entry(got) if isinstance(got, Exception) else {"kl": kl(ref, got[0]), "kept": got[1]}
            continue
        for r, ratio in ratios.items():
            try:
                got, kept = press_logprobs(lm, ids, a_ids, make_press(name, ratio))
                entry[r] = {"kl": kl(ref, got), "kept": kept}
            except Exception as exc:  # noqa: BLE001 -- reported, not hidden: the table says which press failed and why
                entry[r] = error_entry(exc)
    return row


def run(split: str, presses: list[str], ours: list[str], out: Path, anchor: bool, tag: str = "",
        only: list[int] | None = None, shard: tuple[int, int] | None = None,
        importance_window: int | None = None) -> dict:
    """Every case of `split` (only: these indices, in this order; shard (j, n): every n-th from the j-th), and the
    anchor if asked, written to out/compare_{split}[_tag].json as each case ends."""
    import kvpress  # before the model registers the briefing attention: kvpress wraps every registered function
    import transformers

    lm = briefing.load_model()
    suffix = f"_{tag}" if tag else ""
    t0 = time.perf_counter()
    res: dict = {"split": split, "model": lm.name, "kvpress": kvpress.__version__ if hasattr(kvpress, "__version__")
                 else "0.5.5", "transformers": transformers.__version__, "ratios": list(RATIOS), "presses": presses,
                 "ours": [ours_label(name, importance_window) for name in ours], "importance_window": importance_window,
                 "load_average_at_start": os.getloadavg(), "cases": []}
    if anchor:
        res["anchor"] = one_case(lm, (data_dir() / "pg_essays" / "avg.txt").read_text()[:9000], QUESTION, ANSWER,
                                 presses, ours, importance_window)
        print("anchor done", json.dumps(res["anchor"])[:2000], flush=True)
    todo = cases(lm, split) if split else []
    todo = todo if only is None else [todo[i] for i in only]   # in the order given
    todo = todo if shard is None else todo[shard[0]::shard[1]]
    for case in todo:
        row = one_case(lm, case.text, case.question, case.answer, presses, ours, importance_window)
        row.update(essay=case.essay, kind=case.kind)
        res["cases"].append(row)
        print(f"[{split}] {case.essay} {case.kind} identity {row['identity_kl']:.2e} "
              + json.dumps({k: {r: (v.get("kl") if isinstance(v, dict) else v) for r, v in d.items()}
                            for k, d in {**row["ours"], **row["presses"]}.items()}), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"compare_{split}{suffix}.json").write_text(json.dumps(res, indent=2))
    res["wall_s"] = time.perf_counter() - t0
    res["load_average_at_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare_{split or 'anchor'}{suffix}.json").write_text(json.dumps(res, indent=2))
    return res


def _press_value(entry: dict) -> float | None:
    return entry.get("kl")


def merged(path: Path) -> dict:
    """compare_{split}.json plus the presses of compare_{split}_{tag}.json files (same cases, possibly fewer) and
    the cases of compare_{split}_part-*.json files (part runs; without the first file, they alone)."""
    parts = sorted(path.parent.glob(f"{path.stem}_part-*.json"))
    first = path if path.exists() else parts.pop(0)
    res = renamed(json.loads(first.read_text()))
    for part in parts:  # the same presses and rows on other cases
        other = renamed(json.loads(part.read_text()))["ours"]
        if set(other) != set(res["ours"]):
            raise SystemExit(f"kvpress_compare: {part.name} has our rows {sorted(other)}, {first.name} has "
                             f"{sorted(res['ours'])}: a part run must run the same rows (give other rows a --tag)")
        seen = {case_key(c) for c in res["cases"]}
        res["cases"] += [c for c in renamed(json.loads(part.read_text()))["cases"] if case_key(c) not in seen]
    for extra_path in sorted(p for p in path.parent.glob(f"{path.stem}_*.json") if "_part-" not in p.name):
        extra = renamed(json.loads(extra_path.read_text()))
        res["presses"] += [p for p in extra["presses"] if p not in res["presses"]]
        new_ours = [v for v in extra["ours"] if v not in res["ours"]]
        res["ours"] = new_ours + res["ours"]
        if "anchor" in extra and "anchor" in res:
            res["anchor"]["presses"].update(extra["anchor"]["presses"])
            res["anchor"]["ours"].update({v: extra["anchor"]["ours"][v] for v in new_ours})
        by_case = {case_key(c): c for c in extra["cases"]}
        for case in res["cases"]:
            other = by_case.get(case_key(case), {})
            case["presses"].update(other.get("presses", {}))
            case["ours"].update({v: other["ours"][v] for v in new_ours if v in other.get("ours", {})})
    return res


def beaten(rows: list[dict], ours: list[str]) -> dict[str, list[int]]:
    """{our variant: [cases below BASELINE at each ratio]} over `rows` (only where BASELINE ran on them all)."""
    if len(rows) < 2 or any("kl" not in row["presses"].get(BASELINE, {}).get(str(r), {}) for row in rows
                            for r in RATIOS):
        return {}
    return {name: [sum(row["ours"][name][str(r)] < row["presses"][BASELINE][str(r)]["kl"] for row in rows)
                   for r in RATIOS] for name in ours if all(name in row["ours"] for row in rows)}


def plot(blocks: list[tuple[str, dict[str, list[float]]]], path: Path) -> None:
    """One panel per table: each method's median answer KL against the kept ratio (log-log); our rows solid."""
    try:
        import matplotlib
    except ImportError:   # the tables do not need it (`pip install -e '.[bench]'` adds it)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 5), squeeze=False)
    for ax, (title, medians) in zip(axes[0], blocks):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        for name, med in medians.items():
            press = name in PRESSES
            style = dict(color="black", linestyle="--", linewidth=2) if name == BASELINE else dict(
                linestyle=":" if press else "-", linewidth=2 if name == DEFAULT else 1)
            ax.plot(RATIOS, [max(m, 1e-5) for m in med], marker="o" if not press else ".",
                    label=name if press else f"ours: {name}", **style)
        ax.set(xscale="log", yscale="log", xlabel="kept share of the text", ylabel="median answer KL vs the full cache")
        ax.set_title(textwrap.fill(title, 48), fontsize=8)
        ax.set_xticks(RATIOS, [f"{r:.0%}" for r in RATIOS])
        ax.minorticks_off()
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, readme: Path | None = None) -> str:
    lines: list[str] = []
    splits = sorted({p.stem.split("_")[1] for p in out.glob("compare_*.json") if "." not in p.stem})
    for path in [out / f"compare_{split}.json" for split in splits]:
        if not path.exists() and not any(path.parent.glob(f"{path.stem}_part-*.json")):
            continue   # tagged files alone (more presses or rows for a run that is not here)
        res = merged(path)
        blocks = []
        if "anchor" in res:
            blocks.append(("anchor (avg.txt, first 9,000 characters)", [res["anchor"]]))
        complete = [c for c in res["cases"] if all(v in c["ours"] for v in res["ours"])]  # same cases for every row
        if complete:
            blocks.append((f"{res['split']} split, median over {len(complete)} cases [bootstrap 95%]", complete))
        for kind, name in (("task", "task-type"), ("recall", "verbatim-recall")):
            some = [c for c in complete if c.get("kind", "").startswith("recall:") == (kind == "recall")]
            if some and len(some) < len(complete):
                blocks.append((f"{res['split']} split, {name} cases only, median over {len(some)} [bootstrap 95%]",
                               some))
        plots: list[tuple[str, dict[str, list[float]]]] = []
        for title, rows in blocks:
            one = len(rows) == 1
            lines += [(f"**{title}**: answer KL vs the full cache, kept positions matched "
                       f"(kvpress {res['kvpress']}, transformers {res['transformers']})"), "",
                      "| method | 50% kept | 20% | 10% | 5% |", "|---|---|---|---|---|"]
            table: dict[str, list[str]] = {}
            medians: dict[str, list[float]] = {}
            best: dict[str, tuple[float, str]] = {}
            for name in res["ours"] + res["presses"]:
                cells = []
                for r in RATIOS:
                    vals, errors = [], []
                    for row in rows:
                        if name in res["ours"]:
                            if name in row["ours"]:
                                vals.append(row["ours"][name][str(r)])
                        elif name in row["presses"]:
                            e = row["presses"][name][str(r)]
                            (vals.append(e["kl"]) if "kl" in e else errors.append(e["error"]))
                    if errors:
                        cells.append(f"error: {errors[0][:80]}")
                        continue
                    if not vals:
                        cells.append("not run")
                        continue
                    med = bootstrap_median(vals)
                    medians.setdefault(name, []).append(med[0])
                    cells.append((f"{med[0]:.4f}" if one else f"{med[0]:.3f} [{med[1]:.3f}, {med[2]:.3f}]")
                                 + (f" ({len(vals)} of {len(rows)} cases)" if len(vals) < len(rows) else ""))
                    better = str(r) not in best or med[0] < best[str(r)][0]
                    if name in res["presses"] and len(vals) == len(rows) and better:
                        best[str(r)] = (med[0], name)
                label = f"ours: {name}" if name in res["ours"] else name
                table[label] = cells
            for label, cells in table.items():
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("| best press | " + " | ".join(f"{best[str(r)][1]} {best[str(r)][0]:.4f}" if str(r) in best
                                                        else "-" for r in RATIOS) + " |")
            ident = max(row["identity_kl"] for row in rows)
            lines += ["", f"Identity check (our keep-all vs the shared reference): max KL {ident:.1e}."]
            below = beaten(rows, res["ours"])
            if below:
                lines.append(f"Cases where ours is below {BASELINE}, at 50/20/10/5% kept (of {len(rows)}): "
                             + "; ".join(f"{name} {'/'.join(map(str, n))}" for name, n in below.items()) + ".")
            lines.append("")
            plots.append((title, {k: v for k, v in medians.items() if len(v) == len(RATIOS)}))
        if plots:
            plot(plots, out / f"compare_{res['split'] or 'anchor'}.png")
    text = "\n".join(lines)
    if not lines:
        raise SystemExit(f"kvpress_compare: no compare_<split>.json or part file in {out}: no tables to write (run "
                         "the comparison first, or point --out at its folder)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_tables.md").write_text(text + "\n")
    if readme is not None:
        update_readme("kvpress-tables", text, readme)
    return text


def join_shards(parts: list[dict]) -> dict:
    """The results of shards j = 0..n-1 (shard j ran cases j, j + n, ...; the first, the anchor) as one run's: the
    first's header and anchor, every case in the split's order."""
    res = dict(parts[0])
    longest = max(len(p["cases"]) for p in parts)
    res["cases"] = [p["cases"][i] for i in range(longest) for p in parts if i < len(p["cases"])]
    return res


def run_jobs(args: argparse.Namespace, out: Path, tag: str) -> None:
    """`run` in `args.jobs` processes, each on every jobs-th case (the first also on the anchor), then one file:
    out/compare_{split}[_tag].json with the cases in their split's order, as one process would write it. A shard
    that fails stops the others."""
    import subprocess
    import sys
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="kvpress_compare_"))
    base = [sys.executable, "-m", "benchmarks.kvpress_compare", "--split", args.split, "--presses", *args.presses,
            "--ours", *args.ours, "--out", str(tmp), "--no-report"]
    if args.cases:
        base += ["--cases", *map(str, args.cases)]
    if args.importance_window is not None:
        base += ["--importance-window", str(args.importance_window)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*base, "--shard", f"{j}/{args.jobs}", "--tag", f"shard{j}",
                               *(["--no-anchor"] if j or args.no_anchor else [])]) for j in range(args.jobs)]
    failed: list[int] = []
    while not failed and any(proc.poll() is None for proc in procs):
        time.sleep(1)
        failed = [j for j, proc in enumerate(procs) if proc.poll() not in (None, 0)]
    failed = failed or [j for j, proc in enumerate(procs) if proc.returncode != 0]
    if failed:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        raise SystemExit(f"kvpress_compare: shard(s) {failed} of {args.jobs} failed (their output is above) and "
                         f"the others were stopped; the shards' files so far are in {tmp}")
    res = join_shards([json.loads((tmp / f"compare_{args.split or 'anchor'}_shard{j}.json").read_text())
                       for j in range(args.jobs)])
    res["wall_s"], res["jobs"] = time.perf_counter() - t0, args.jobs
    res["load_average_at_end"] = os.getloadavg()
    suffix = f"_{tag}" if tag else ""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare_{args.split or 'anchor'}{suffix}.json").write_text(json.dumps(res, indent=2))
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kvpress_compare", description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=["dev", "heldout", ""], default="heldout", help="'' for the anchor only")
    parser.add_argument("--presses", nargs="*", default=list(PRESSES), choices=PRESSES, help="none: ours only")
    parser.add_argument("--ours", nargs="+", default=list(OURS), help="variant names from benchmarks.selection_bench")
    parser.add_argument("--no-anchor", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the JSON file (more presses on the same cases)")
    parser.add_argument("--cases", type=int, nargs="+", help="only these case indices, in this order (a part run "
                        "beside another; its file is tagged part-..., and the report merges the parts' cases)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--readme", action="store_true", help="also rewrite the kvpress-tables block of "
                        "docs/benchmarks.md")
    parser.add_argument("--report", action="store_true", help="only write the tables from the JSON files")
    parser.add_argument("--jobs", type=int, default=1, help="processes, each on every jobs-th case (one thread each "
                        "under OMP_NUM_THREADS=1); their cases are written to one file")
    parser.add_argument("--importance-window", type=int, default=None, help="tokens our caches' query-agnostic "
                        "importance reconstructs at a time (default: briefing.TrajectoryCache's); our rows are then "
                        "named '... [window N]'")
    parser.add_argument("--shard", help=argparse.SUPPRESS)           # j/n: this process's share of a --jobs run
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [v for v in args.ours if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give at least 1 (processes to run the cases in)")
    if args.importance_window is not None and args.importance_window < 1:
        parser.error(f"--importance-window {args.importance_window}: give a positive number of tokens")
    if args.report and args.importance_window is not None:
        parser.error("--importance-window sets a run's caches; --report only tables the JSON files (drop one of them)")
    out = Path(args.out)
    # a run of other rows (--importance-window) or of some cases (--cases) never overwrites the whole run's file
    tag = args.tag or "-".join(t for t in (f"window{args.importance_window}" if args.importance_window else "",
                                           "part-" + "-".join(map(str, args.cases)) if args.cases else "") if t)
    if not args.report and args.jobs > 1 and args.split:   # the anchor alone is one case: one process
        run_jobs(args, out, tag)
    elif not args.report:
        shard = tuple(int(x) for x in args.shard.split("/")) if args.shard else None
        run(args.split, args.presses, args.ours, out, not args.no_anchor, tag, args.cases, shard,
            args.importance_window)
    if not args.no_report:
        print(report(out, DOC if args.readme else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
