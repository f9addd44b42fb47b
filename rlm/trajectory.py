"""A run's trajectory: its events, their append-only rendering, and the JSONL log they go to."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterable

from agents.events import Event, parse_event, render


class JsonlLog:
    """Appends one JSON object per line and flushes after each, so a crash loses nothing.

    One log serves a whole run tree: nested runs write into their parent's log.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(self.path, "a", encoding="utf-8", errors="backslashreplace")
        self._lock = threading.Lock()

    def write(self, event: Event) -> None:
        # errors="backslashreplace" on the file: a lone surrogate (a cell printed '\ud800') is
        # written as the JSON escape \ud800, which reads back the same, instead of crashing the run
        line = json.dumps(event.model_dump(mode="json"), ensure_ascii=False)
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8", errors="backslashreplace")
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class Trajectory:
    """Events of one run, in order, and `text`: their rendering, which only ever grows."""

    def __init__(self, run_id: str = "", depth: int = 0, sinks: Iterable[Callable[[Event], None]] = ()) -> None:
        self.run_id, self.depth = run_id, depth
        self.events: list[Event] = []
        self._parts: list[str] = []
        self._text = ""
        self._t0 = time.monotonic()
        self.sinks = list(sinks)
        self._lock = threading.Lock()

    def append(self, event: Event, stamp: bool = True) -> Event:
        with self._lock:
            if stamp:
                event.run_id, event.depth, event.seq = self.run_id, self.depth, len(self.events)
                event.t = round(time.monotonic() - self._t0, 6)
            self.events.append(event)
            piece = render(event)
            self._parts.append(piece)
            self._text += piece
        for sink in self.sinks:
            sink(event)
        return event

    @property
    def text(self) -> str:
        return self._text

    def text_upto(self, n: int) -> str:
        """Rendering of the first n events."""
        return "".join(self._parts[:n])

    @classmethod
    def from_events(cls, events: Iterable[Event], run_id: str | None = None) -> "Trajectory":
        """Rebuild a run's trajectory from logged events (the root run's when run_id is None)."""
        events = list(events)
        if run_id is None:
            root = next((e for e in events if e.type == "run_start" and e.parent_run is None), None)
            run_id = root.run_id if root else (events[0].run_id if events else "")
        own = sorted((e for e in events if e.run_id == run_id), key=lambda e: e.seq)
        traj = cls(run_id, own[0].depth if own else 0)
        for e in own:
            traj.append(e, stamp=False)
        return traj


def read_log(path: str | Path) -> list[Event]:
    """Events of a log written by `rlm` (lines that are not our events are skipped)."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(parse_event(json.loads(line)))
            except ValueError:   # not JSON, or not one of our events (pydantic's ValidationError is a ValueError)
                continue
    return events


def replay(path: str | Path, run_id: str | None = None) -> Trajectory:
    """The trajectory of a logged run (the root run by default)."""
    return Trajectory.from_events(read_log(path), run_id)

