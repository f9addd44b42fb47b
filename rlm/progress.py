"""Live progress of a run: a tqdm bar of worker calls on a terminal (a line per event when not a tty).

transient=True (the demo): the bar is erased when the run ends and a pipe gets no lines, so what the command
prints last, its result, is what stays on screen.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from agents.events import Event

from tqdm import tqdm


class Progress:
    def __init__(self, stream: TextIO | None = None, label: str = "", total: int | None = None,
                 transient: bool = False) -> None:
        """total: expected worker calls (for the bar's length and time left), None when unknown."""
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.transient = transient
        self.bar = tqdm(total=total, desc=label.strip() or "run", unit="call", file=self.stream,
                        dynamic_ncols=True, leave=not transient) if self.tty else None
        self.label = label
        self.t0 = time.monotonic()
        self.iterations = self.calls = self.runs = 0
        self.last = ""
        self.tokens = self.handoff = 0

    def __call__(self, e: Event) -> None:
        if e.type == "run_start":
            self.runs += 1
        elif e.type == "message" and e.depth == 0:
            self.iterations = e.iteration + 1
        elif e.type == "worker_call":
            self.calls += 1
            r = e.result
            self.tokens += r.input_tokens if r else 0
            self.handoff += r.text_handoff_tokens if r else 0
            b = r.briefing if r else None
            ratio = f" kept {b.kept}/{b.total}" if b is not None and b.total else ""
            took = f" {r.latency_s:.1f}s" if r else ""
            self.last = f"#{e.index}{ratio}{took}: {(e.answer or e.error or '')[:40]!r}"
        elif e.type == "final" and e.depth == 0:
            self.done()
            return
        else:
            return
        line = (f"{self.label}iter {self.iterations} | worker calls {self.calls} | worker input tok {self.tokens}"
                f" (text {self.handoff}) | {time.monotonic() - self.t0:5.1f}s | {self.last}")
        if self.bar is not None:
            if e.type == "worker_call":
                self.bar.update(1)
            self.bar.set_postfix_str(f"iter {self.iterations} | worker input tok {self.tokens} (text {self.handoff}) "
                                     f"| {self.last}", refresh=True)
            return
        if self.transient:
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.bar is not None:
            self.bar.close()
