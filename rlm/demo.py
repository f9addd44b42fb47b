"""`rlm demo`: the chunk-scan policy on an essay, with the briefed worker and then the text worker.

Offline, on the embedded SmolLM2-135M. Prints each run's answer and usage, then the worker input
tokens of latent briefing against pasting the trajectory as text.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # torch: imported when the demo runs
    import briefing
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
    rlm = RLM(policy, worker, budgets=Budgets(max_iterations=40, max_worker_calls=40), log_path=log_path,
              on_event=Progress(stream, label=f"[{kind}] "))
    t0 = time.monotonic()
    res = rlm.run(query, context)
    calls = res.worker_events()
    ratios = res.kept_ratios()
    row = DemoRow(worker=kind, answer=res.answer, stop_reason=res.stop_reason, wall_s=time.monotonic() - t0,
                  worker_calls=len(calls), worker_input_tokens=sum(e.input_tokens for e in calls),
                  text_handoff_tokens=sum(e.text_handoff_tokens for e in calls),
                  median_kept_ratio=statistics.median(ratios) if ratios else None,
                  worker_time_s=sum(e.latency_s for e in calls))
    return row, res


def format_rows(rows: list[DemoRow]) -> str:
    head = ("worker", "wall s", "worker calls", "worker input tok", "text-handoff tok", "median kept", "stop")
    body = [(r.worker, f"{r.wall_s:.1f}", str(r.worker_calls), str(r.worker_input_tokens), str(r.text_handoff_tokens),
             f"{r.median_kept_ratio:.1%}" if r.median_kept_ratio is not None else "-", r.stop_reason) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, body)])


def main(essay: str = DEFAULT_ESSAY, query: str = DEFAULT_QUERY, max_chars: int | None = None, chunk_chars: int = 600,
         selector: briefing.Selector | None = None, max_new_tokens: int = 48, model: str | None = None,
         log_dir: str | None = None, workers: tuple[str, ...] = ("briefed", "text"), stream: TextIO | None = None) -> list[DemoRow]:
    import briefing

    out = stream or sys.stdout
    context = read_essay(essay, max_chars)
    print(f"Essay {essay}: {len(context)} characters. Query: {query}", file=out)
    t0 = time.monotonic()
    lm = briefing.load_model(model)
    print(f"Model {lm.name} loaded in {time.monotonic() - t0:.1f}s", file=out)
    rows = []
    for kind in workers:
        log_path = f"{log_dir.rstrip('/')}/demo-{kind}.jsonl" if log_dir else None
        row, res = run_one(kind, lm, query, context, chunk_chars, selector, max_new_tokens, log_path, sys.stderr)
        rows.append(row)
        print(f"\n[{kind}] answer: {row.answer!r} ({row.stop_reason}, {row.wall_s:.1f}s)", file=out)
        print(res.usage_table(), file=out)
        if log_path:
            print(f"log: {log_path} (view with: rlm view {log_path})", file=out)
    print("\n" + format_rows(rows), file=out)
    by = {r.worker: r for r in rows}
    if "briefed" in by and "text" in by and by["text"].worker_input_tokens:
        b, t = by["briefed"], by["text"]
        saving = 1 - b.worker_input_tokens / t.worker_input_tokens
        print(f"\nWorker input tokens: briefed {b.worker_input_tokens} vs text {t.worker_input_tokens} "
              f"({saving:.0%} fewer with latent briefing); worker time {b.worker_time_s:.1f}s vs {t.worker_time_s:.1f}s.",
              file=out)
    return rows
