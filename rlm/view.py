"""Readable rendering of trajectory logs: ours, and trace logs written by alexzhang13/rlm.

`load_events(path)` reads either format into our event models (an alexzhang13/rlm trace becomes one
run per `run_context` record: iterations become orchestrator messages, code blocks become cells and
outputs, `rlm_calls` become worker calls, `final_answer` a final event); `format_events` renders them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from agents.workers.base import WorkerAnswer
from agents.events import (CellOutput, CodeCell, Event, Final, OrchestratorMessage, RunStart, WorkerCall,
                        parse_event)

_RLM_TRACE_TYPES = {"metadata", "run_context", "iteration"}


def _records(path: str | Path) -> list[dict[str, Any]]:
    return _read(path)[0]


def _read(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """Records of a JSONL log, and whether its last line is cut short (a run killed while
    writing, a copy of a log still being written)."""
    out = []
    truncated = False
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    lines = text.split("\n")
    for i, line in enumerate(lines):
        line = line.strip()
        if line:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                truncated = i == len(lines) - 1  # no newline after it, and not JSON: cut short
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out, truncated


def truncation_warning(path: str | Path) -> str | None:
    """A one-line warning when the log's last line is cut short, else None."""
    if _read(path)[1]:
        return (f"warning: {path}: the last line is truncated (the run was interrupted while writing it); "
                "the run shown below may be incomplete")
    return None


def detect_format(records: list[dict[str, Any]]) -> str:
    types = {r.get("type") for r in records}
    if types & {"run_start", "worker_call", "message"} and any("run_id" in r for r in records):
        return "latent-briefing"
    if types & _RLM_TRACE_TYPES:
        return "rlm-trace"
    return "unknown"


def load_events(path: str | Path) -> tuple[str, list[Event]]:
    records = _records(path)
    fmt = detect_format(records)
    if fmt == "rlm-trace":
        return fmt, import_rlm_trace(records)
    events = []
    for r in records:
        try:
            events.append(parse_event(r))
        except ValueError:   # not one of our events (pydantic's ValidationError is a ValueError)
            continue
    return fmt, events


def _text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and all(isinstance(m, dict) and "content" in m for m in x):
        return "\n".join(str(m.get("content", "")) for m in x)
    return json.dumps(x, ensure_ascii=False)


def _usage_tokens(usage: Any) -> tuple[int, int]:
    inp = out = 0
    for s in ((usage or {}).get("model_usage_summaries") or {}).values():
        inp += int(s.get("total_input_tokens", 0) or 0)
        out += int(s.get("total_output_tokens", 0) or 0)
    return inp, out


def import_rlm_trace(records: Iterable[dict[str, Any]]) -> list[Event]:
    """Convert alexzhang13/rlm RLMLogger records into our events (one run per run_context)."""
    events: list[Event] = []
    meta: dict[str, Any] = {}
    run_id, seq, n_run, iteration, calls = "", 0, 0, 0, 0
    open_run = False

    def add(e: Event) -> None:
        nonlocal seq
        e.run_id, e.seq = run_id, seq
        seq += 1
        events.append(e)

    def close(answer: str | None, reason: str) -> None:
        nonlocal open_run
        if open_run:
            add(Final(answer=answer, stop_reason=reason, source="FINAL" if reason == "final" else "partial"))
            open_run = False

    def start(prompt: Any) -> None:
        nonlocal run_id, seq, n_run, iteration, calls, open_run
        close(None, "unfinished")
        n_run += 1
        run_id, seq, iteration, calls, open_run = f"trace-{n_run}", 0, 0, 0, True
        text = _text(prompt)
        add(RunStart(query=text, context_type=type(prompt).__name__, context_length=len(text),
                     policy={"name": str(meta.get("root_model", "rlm")), "backend": meta.get("backend")},
                     worker={"name": "llm_query"}, budgets={"max_iterations": meta.get("max_iterations"),
                                                            "max_depth": meta.get("max_depth")}))

    for r in records:
        kind = r.get("type")
        if kind == "metadata":
            meta = r
        elif kind == "run_context":
            start(r.get("prompt"))
        elif kind == "iteration":
            if not open_run:
                start("(run without run_context)")
            response = str(r.get("response") or "")
            add(OrchestratorMessage(iteration=iteration, text=response, time_s=float(r.get("iteration_time") or 0.0)))
            for i, block in enumerate(r.get("code_blocks") or []):
                code, res = str(block.get("code", "")), block.get("result") or {}
                add(CodeCell(iteration=iteration, cell=i, code=code, in_message=code.strip() in response))
                for call in res.get("rlm_calls") or []:
                    calls += 1
                    inp, out = _usage_tokens(call.get("usage_summary"))
                    model = str(call.get("root_model", ""))
                    error = call.get("error")
                    result = None if error else WorkerAnswer(
                        text=_text(call.get("response", "")), worker=model, input_tokens=inp, output_tokens=out,
                        text_handoff_tokens=inp, latency_s=float(call.get("execution_time") or 0.0))
                    add(WorkerCall(call_id=f"{run_id}.{calls}", iteration=iteration, index=calls,
                                   query=_text(call.get("prompt", "")), worker=model, result=result,
                                   error=None if result else str(error)))
                stderr = str(res.get("stderr") or "")
                add(CellOutput(iteration=iteration, cell=i, stdout=str(res.get("stdout") or ""),
                               error=stderr.strip() or None, duration_s=float(res.get("execution_time") or 0.0)))
            iteration += 1
            if r.get("final_answer") is not None:
                close(_text(r["final_answer"]), "final")
    close(None, "unfinished")
    return events


# -- rendering --------------------------------------------------------------------------------------

def _clip(s: str, n: int | None) -> str:
    s = s.rstrip()
    if n is None or len(s) <= n:
        return s
    return s[: n // 2] + f" [... {len(s) - n} chars ...] " + s[-n // 2:]


def _indent(s: str, pad: str) -> str:
    return "\n".join(pad + line for line in s.splitlines()) if s else pad


def format_events(events: list[Event], max_chars: int | None = 600, color: bool = False) -> str:
    def c(code: str, s: str) -> str:
        return f"\x1b[{code}m{s}\x1b[0m" if color else s

    out: list[str] = []
    for e in events:
        pad = "    " * e.depth
        t = e.type
        if t == "run_start":
            where = f" (nested under call {e.parent_call})" if e.parent_call else ""
            out.append(c("1;36", f"{pad}=== run {e.run_id} depth {e.depth}{where}"))
            out.append(f"{pad}query: {_clip(e.query, max_chars)}")
            out.append(f"{pad}context: {e.context_type}, {e.context_length} chars | policy: {e.policy.get('name', '?')}"
                       f" | worker: {e.worker.get('name', '?')}")
        elif t == "message":
            tok = f" ({e.input_tokens} in / {e.output_tokens} out tokens)" if e.input_tokens or e.output_tokens else ""
            out.append(c("1;33", f"{pad}--- step {e.iteration}{tok}"))
            out.append(_indent(_clip(e.text, max_chars), pad + "  "))
        elif t == "code":
            if not e.in_message:
                out.append(c("2", f"{pad}  >>> code cell {e.cell}"))
                out.append(_indent(_clip(e.code, max_chars), pad + "  | "))
        elif t == "output":
            body = "\n".join(x for x in (e.stdout.rstrip(), f"Out: {e.value}" if e.value is not None else "",
                                         c("31", f"Error: {e.error}") if e.error else "") if x)
            lim = f" [limit: {e.limit}]" if e.limit else ""
            out.append(c("2", f"{pad}  <<< output{lim}"))
            out.append(_indent(_clip(body or "(no output)", max_chars), pad + "  : "))
        elif t == "worker_call":
            r = e.result
            b = r.briefing if r is not None else None
            ratio = f" kept {b.kept}/{b.total} ({b.kept / b.total:.0%})" if b is not None and b.total else ""
            nested = f" -> run {r.child_run}" if r is not None and r.child_run else ""
            usage = (f", {r.input_tokens} input tok (text handoff {r.text_handoff_tokens}), {r.latency_s:.1f}s"
                     if r is not None else "")
            out.append(c("35", f"{pad}  -> worker #{e.index} [{e.worker}]{nested}{ratio}{usage}"))
            out.append(_indent("Q: " + _clip(e.query, max_chars), pad + "     "))
            out.append(_indent("A: " + _clip(e.answer if e.answer is not None else f"(failed: {e.error})", max_chars),
                               pad + "     "))
        elif t == "notice":
            out.append(c("31", f"{pad}  ! {e.text}"))
        elif t == "final":
            out.append(c("1;32",
                         f"{pad}=== {'FINAL' if e.stop_reason == 'final' else 'STOPPED (' + e.stop_reason + ')'}"
                                 f" run {e.run_id}: {_clip(str(e.answer), max_chars)}"))
    return "\n".join(out)


def summarize_events(events: list[Event]) -> str:
    runs = [e for e in events if e.type == "run_start"]
    calls = [e for e in events if e.type == "worker_call"]
    steps = [e for e in events if e.type == "message"]
    tok = sum(e.result.input_tokens for e in calls if e.result is not None)
    hand = sum(e.result.text_handoff_tokens for e in calls if e.result is not None)
    return (f"{len(runs)} run(s), {len(steps)} steps, {len(calls)} worker calls, worker input tokens {tok} "
            f"(text handoff {hand})")


def view(path: str | Path, max_chars: int | None = 600, color: bool = False) -> str:
    fmt, events = load_events(path)
    if fmt == "unknown" or not events:
        raise ValueError(f"{path}: not a latent-briefing log nor an alexzhang13/rlm trace log")
    head = f"{path} ({fmt} log)"
    warning = truncation_warning(path)
    body = [head, format_events(events, max_chars, color), "", summarize_events(events)]
    return "\n".join([warning, *body] if warning else body)
