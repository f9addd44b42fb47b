"""`rlm demo`: the chunk-scan policy on an essay, with the briefed worker and then the text worker.

Offline, on the embedded SmolLM2-135M. Prints the question, each worker's answer and the saving first (worker
input tokens and time for latent briefing against pasting the trajectory as text), then the per-run details.
Progress goes to stderr: a bar on a terminal, erased when the run ends; one line per run in a pipe.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # torch: imported when the demo runs
    import briefing
    from agents import ChunkScanPolicy
    from rlm.result import RunResult

from rlm.data import read_essay
from rlm.progress import Progress

DEFAULT_ESSAY = "foundervisa.txt"
DEFAULT_QUERY = "What new kind of visa does the author propose?"


@dataclass
class DemoRow:
    worker: str
    answer: str | None
    stop_reason: str
    wall_s: float
    worker_calls: int
    worker_input_tokens: int
    text_handoff_tokens: int
    median_kept_ratio: float | None
    worker_time_s: float


def run_one(kind: str, lm: briefing.LoadedModel, query: str, context: str, chunk_chars: int,
            selector: briefing.Selector | None, max_new_tokens: int, log_path: str | None,
            stream: TextIO) -> tuple[DemoRow, RunResult]:
    from agents import ChunkScanPolicy, make_worker
    from rlm import RLM, Budgets

    extra = {"selector": selector} if kind == "briefed" else {}
    worker = make_worker(kind, lm=lm, max_new_tokens=max_new_tokens, **extra)
    policy = ChunkScanPolicy(chunk_chars=chunk_chars)
    total = policy_calls(policy, context)
    progress = Progress(stream, label=f"[{kind}] ", total=total, transient=True)
    if not progress.tty:
        print(f"[{kind}] running: about {total} worker calls...", file=stream, flush=True)
    rlm = RLM(policy, worker, budgets=Budgets(max_iterations=40, max_worker_calls=40), log_path=log_path,
              on_event=progress)
    t0 = time.monotonic()
    res = rlm.run(query, context)
    calls = res.worker_events()
    done = [e.result for e in calls if e.result is not None]
    ratios = res.kept_ratios()
    row = DemoRow(worker=kind, answer=res.answer, stop_reason=res.stop_reason, wall_s=time.monotonic() - t0,
                  worker_calls=len(calls), worker_input_tokens=sum(r.input_tokens for r in done),
                  text_handoff_tokens=sum(r.text_handoff_tokens for r in done),
                  median_kept_ratio=statistics.median(ratios) if ratios else None,
                  worker_time_s=sum(r.latency_s for r in done))
    return row, res


def policy_calls(policy: ChunkScanPolicy, context: str) -> int:
    """Worker calls a chunk-scan run is expected to make: one per chunk, the answer and the check."""
    return -(-len(context) // max(1, policy.chunk_chars - policy.overlap)) + 2


def format_rows(rows: list[DemoRow]) -> str:
    head = ("worker", "wall s", "worker calls", "worker input tok", "text-handoff tok", "median kept", "stop")
    body = [(r.worker, f"{r.wall_s:.1f}", str(r.worker_calls), str(r.worker_input_tokens), str(r.text_handoff_tokens),
             f"{r.median_kept_ratio:.1%}" if r.median_kept_ratio is not None else "-", r.stop_reason) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, body)])


NAMES = {"briefed": "latent briefing", "text": "text handoff", "plain": "plain (query only)"}


def headline(query: str, rows: list[DemoRow]) -> str:
    """What a newcomer came to see, first: the question, each worker's answer, the saving; then tokens and time."""
    lines = [f"Question: {query}"]
    width = max(len(NAMES.get(r.worker, r.worker)) for r in rows)
    for r in rows:
        lines.append(f"Answer, {NAMES.get(r.worker, r.worker) + ':':<{width + 1}} {r.answer!r}")
    by = {r.worker: r for r in rows}
    if "briefed" in by and "text" in by and by["text"].worker_input_tokens:
        b, t = by["briefed"], by["text"]
        saving = 1 - b.worker_input_tokens / t.worker_input_tokens
        lines.append(f"Saving: latent briefing read {saving:.0%} fewer worker input tokens than pasting the trajectory "
                     f"as text ({b.worker_input_tokens:,} vs {t.worker_input_tokens:,}); worker time "
                     f"{b.worker_time_s:.1f}s vs {t.worker_time_s:.1f}s.")
    lines.append("")
    lines.append(f"  {'':<{width}}  {'worker calls':>12}  {'worker input tokens':>19}  {'worker time':>11}")
    for r in rows:
        lines.append(f"  {NAMES.get(r.worker, r.worker):<{width}}  {r.worker_calls:>12}  {r.worker_input_tokens:>19,}  "
                     f"{r.worker_time_s:>10.1f}s")
    return "\n".join(lines)


def main(essay: str = DEFAULT_ESSAY, query: str = DEFAULT_QUERY, max_chars: int | None = None, chunk_chars: int = 600,
         selector: briefing.Selector | None = None, max_new_tokens: int = 48, model: str | None = None,
         log_dir: str | None = None, workers: tuple[str, ...] = ("briefed", "text"),
         stream: TextIO | None = None, device: str = "auto", dtype: str = "auto") -> list[DemoRow]:
    import briefing

    out = stream or sys.stdout
    context = read_essay(essay, max_chars)
    t0 = time.monotonic()
    tty = sys.stderr.isatty()
    print(f"loading the model ({model or 'embedded default'})...", end="\r" if tty else "\n", file=sys.stderr,
          flush=True)
    lm = briefing.load_model(model, device=device, dtype=dtype)
    if tty:
        print("\x1b[K", end="", file=sys.stderr, flush=True)   # erase the line: the result is what stays
    details = [f"A chunk-scan orchestrator read {essay} ({len(context):,} characters) and asked the worker about "
               f"each chunk, once per worker: {', '.join(NAMES.get(w, w) for w in workers)}.",
               f"Model {lm.name} ({lm.device.type}, {str(lm.dtype).removeprefix('torch.')}) loaded in "
               f"{time.monotonic() - t0:.1f}s"]
    rows = []
    for kind in workers:
        log_path = f"{log_dir.rstrip('/')}/demo-{kind}.jsonl" if log_dir else None
        row, res = run_one(kind, lm, query, context, chunk_chars, selector, max_new_tokens, log_path, sys.stderr)
        rows.append(row)
        details += [f"\n[{kind}] answer: {row.answer!r} ({row.stop_reason}, {row.wall_s:.1f}s)", res.usage_table()]
        if log_path:
            details.append(f"log: {log_path} (view with: rlm view {log_path})")
    print(headline(query, rows), file=out)
    print("\nDetails\n-------", file=out)
    print("\n".join(details), file=out)
    print("\n" + format_rows(rows), file=out)
    return rows
