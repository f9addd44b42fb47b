"""Small fakes for the runtime's unit tests: a worker without a model, an in-process sandbox.

FakeSandbox is NOT a sandbox (plain exec); it implements the `repl.ReplSession` contract that `repl.Sandbox`
implements (primitives, stdout capture, trailing-expression value, error strings, a timeout, output limit)
and returns the same `repl.CellResult`.
"""
from __future__ import annotations

import ast
import contextlib
import io
import sys
import time
from typing import Any, Callable

from agents import BriefingStats, Worker, WorkerAnswer
from briefing.stats import CompactionStats
from repl import CellResult, SandboxConfig


class FakeWorker(Worker):
    """Answers from a function of (query, trajectory); bills words as tokens."""

    def __init__(self, fn: Callable[[str, str], str] | None = None, name: str = "fake") -> None:
        self.fn = fn or (lambda q, t: f"answer to: {q}")
        self.name = name
        self.calls: list[tuple[str, str]] = []

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        self.calls.append((query, trajectory))
        text = self.fn(query, trajectory)
        n_q, n_t = len(query.split()), len(trajectory.split())
        kept = n_t // 4
        stats = CompactionStats(method="fake", kept=kept, original_length=n_t, kept_ratio=kept / max(1, n_t),
                                prompt_tokens=n_q)
        return WorkerAnswer(text=text, input_tokens=n_q + kept, text_handoff_tokens=n_q + n_t,
                            output_tokens=len(text.split()), worker=self.name,
                            briefing=BriefingStats(kept=kept, total=n_t, compaction=stats))


class _Timeout(BaseException):
    pass


class FakeSandbox:   # implements repl.ReplSession
    def __init__(self, primitives: dict[str, Any], config: SandboxConfig | None = None) -> None:
        self.primitives = {k: self._untraced(v) if callable(v) else v for k, v in primitives.items()}
        self.ns: dict[str, Any] = dict(self.primitives)
        self.timeout_s = getattr(config, "timeout_s", 10.0) if config is not None else 10.0
        self._tracer: Any = None
        self._paused = 0.0
        self.output_limit = getattr(config, "output_limit", 20_000) if config is not None else 20_000
        self.closed = False

    def _untraced(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Primitives run on the host: no time limit tracing inside them."""
        def call(*args: Any, **kwargs: Any) -> Any:
            sys.settrace(None)
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self._paused += time.monotonic() - t0
                sys.settrace(self._tracer)
        return call

    def run(self, code: str, timeout_s: float | None = None) -> CellResult:
        buf = io.StringIO()
        t0 = time.monotonic()
        value = error = error_type = limit = None
        timeout = timeout_s or self.timeout_s
        deadline = t0 + timeout
        self._paused = 0.0

        def tracer(frame, event, arg):
            if time.monotonic() - self._paused > deadline:
                raise _Timeout()
            return tracer

        try:
            tree = ast.parse(code)
            last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            if last is not None:
                tree.body = tree.body[:-1]
            self._tracer = tracer
            sys.settrace(tracer)
            try:
                with contextlib.redirect_stdout(buf):
                    exec(compile(tree, "<cell>", "exec"), self.ns)
                    if last is not None:
                        v = eval(compile(ast.Expression(last.value), "<cell>", "eval"), self.ns)
                        value = None if v is None else repr(v)
            finally:
                sys.settrace(None)
                self._tracer = None
        except _Timeout:
            error, error_type, limit = f"TimeoutError: cell exceeded {timeout}s", "TimeoutError", "timeout"
        except SyntaxError as e:
            error, error_type = f"SyntaxError: {e.msg} (line {e.lineno})", "SyntaxError"
        except Exception as e:
            error, error_type = f"{type(e).__name__}: {e}", type(e).__name__
        for k, v in self.primitives.items():    # cells cannot rebind primitives
            self.ns[k] = v
        out = buf.getvalue()
        if len(out) > self.output_limit:
            half = self.output_limit // 2
            cut = f"\n[... {len(out) - self.output_limit} characters cut ...]\n"
            out, limit = out[:half] + cut + out[-half:], limit or "output"
        return CellResult(stdout=out, value=value, error=error, error_type=error_type, limit=limit,
                          duration_s=time.monotonic() - t0)

    def get(self, name: str) -> Any:
        if name in self.primitives or name not in self.ns or name.startswith("__"):
            raise KeyError(name)
        return self.ns[name]

    def names(self) -> dict[str, str]:
        return {k: type(v).__name__ for k, v in self.ns.items()
                if not k.startswith("__") and k not in self.primitives and not callable(v)}

    def close(self) -> None:
        self.closed = True


def fake_factory(primitives: dict[str, Any], config: SandboxConfig | None) -> FakeSandbox:
    return FakeSandbox(primitives, config)
