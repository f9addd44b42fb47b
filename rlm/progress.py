"""Live progress of a run on a terminal: plain `\\r` updates (a line per event when not a tty)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from agents.events import Event


class Progress:
    def __init__(self, stream: TextIO | None = None, label: str = "") -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
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
            self.tokens += e.input_tokens
            self.handoff += e.text_handoff_tokens
            ratio = f" kept {e.kept}/{e.total}" if e.kept is not None and e.total else ""
            self.last = f"#{e.index}{ratio} {e.latency_s:.1f}s: {(e.answer or e.error or '')[:40]!r}"
        elif e.type == "final" and e.depth == 0:
            self.done()
            return
        else:
            return
        line = (f"{self.label}iter {self.iterations} | worker calls {self.calls} | worker input tok {self.tokens}"
                f" (text {self.handoff}) | {time.monotonic() - self.t0:5.1f}s | {self.last}")
        if self.tty:
            width = 118
            self.stream.write("\r\x1b[2K" + line[:width])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
