"""Interactive console on a :class:`repl.Sandbox`: ``python -m repl`` or ``rlm repl``.

A prompt with multi-line input (``...`` while the code is incomplete, as in Python's own REPL),
readline editing and a persistent history (``~/.cache/latent-briefing/repl_history``), the same
sandbox and primitives the orchestrator gets, and a few ``%`` commands::

    %names   names defined in the session      %stats  cells run, time, limits hit
    %reset   start over with an empty namespace %help   this text and the sandbox rules
    %quit    leave (also %exit or Ctrl-D)

A caller can watch the cells and add commands (`ConsoleHooks`): ``rlm repl`` records each cell and its
output into the trajectory its worker reads, and adds ``%trajectory``.

Ctrl-C at the prompt clears the input; during a cell it stops the cell (the namespace is
rolled back to before it).
"""

from __future__ import annotations

import argparse
import codeop
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from repl.sandbox import CellResult, Sandbox, SandboxConfig

NO_WORKER = (
    "no worker configured: run `rlm repl --worker briefed` (or text/plain), "
    "or pass a worker callable in primitives"
)

COMMANDS = """\
%names   names defined in the session
%stats   cells run, time spent, limits hit
%reset   start over with an empty namespace
%help    this help
%quit    leave (also %exit, Ctrl-D)"""

HISTORY_FILE = Path("~/.cache/latent-briefing/repl_history")


# Control characters from the sandbox never reach the terminal raw: ESC sequences can write
# the clipboard (OSC 52), retitle or clear the screen, or hide text (red-team F7). Newline
# and tab stay; every other C0/C1 control, DEL and the bidi overrides are shown escaped.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c not in (0x09, 0x0A)}
_CONTROL.update({c: f"\\u{c:04x}" for c in [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]})


def safe_text(text: str) -> str:
    """``text`` with terminal control characters escaped (``\\x1b``...)."""
    return text.translate(_CONTROL)


@dataclass
class ConsoleHooks:
    """What a caller of `main` / `Console` may add.

    before_cell(code): called before a cell runs. after_cell(code, result): after it, with its
    `CellResult`, or None when Ctrl-C stopped it. commands: extra %commands, name -> (help line,
    function returning the text to show).
    """

    before_cell: Callable[[str], None] | None = None
    after_cell: Callable[[str, CellResult | None], None] | None = None
    commands: dict[str, tuple[str, Callable[[], str]]] = field(default_factory=dict)


def _no_worker(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(NO_WORKER)


def is_complete(source: str) -> bool:
    """True when ``source`` should run now; False while Python would show ``...``."""
    try:
        code = codeop.compile_command(source, "<console>", "single")
    except (SyntaxError, ValueError, OverflowError):
        return True  # complete enough to fail: the sandbox reports the error
    return code is not None


class Console:
    def __init__(self, sandbox: Sandbox, out=None, history: Path | None = None, hooks: ConsoleHooks | None = None):
        self.sb = sandbox
        self.out = out or sys.stdout
        self.history = history
        self.final: list[Any] = []
        self.hooks = hooks or ConsoleHooks()

    # -- output ------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def show(self, res: CellResult) -> None:
        if res.stdout:
            out = safe_text(res.stdout)
            self.write(out if out.endswith("\n") else out + "\n")
        if res.value is not None:
            self.write(safe_text(res.value) + "\n")
        if res.error is not None:
            self.write(safe_text(res.error) + "\n")
        elif res.limit == "output":
            self.write(f"[output cut: {res.dropped_chars:,} characters dropped]\n")

    # -- commands ----------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a %command; return False to quit."""
        cmd = line.strip()[1:].split()[0].lower() if line.strip()[1:] else ""
        if cmd in ("quit", "exit", "q"):
            return False
        if cmd in self.hooks.commands:
            text = self.hooks.commands[cmd][1]()
            self.write(safe_text(text if text.endswith("\n") else text + "\n"))
        elif cmd == "names":
            names = self.sb.names()
            if not names:
                self.write("(no names defined yet)\n")
            width = max((len(n) for n in names), default=0)
            for n, desc in sorted(names.items()):
                self.write(safe_text(f"{n.ljust(width)}  {desc}") + "\n")
            prims = self.sb.primitives
            if prims:
                self.write(f"primitives: {', '.join(prims)}\n")
        elif cmd == "stats":
            st = self.sb.stats()
            mean = st.total_s / st.cells if st.cells else 0.0
            limits = ", ".join(f"{k} {v}" for k, v in st.limits.items())
            self.write(
                f"cells {st.cells}  errors {st.errors}  time {st.total_s:.2f} s (mean {mean * 1000:.1f} ms)\n"
                f"limits hit: {limits}  restores {st.restores}  restarts {st.restarts}\n"
                f"primitive calls {st.primitive_calls} ({st.primitive_s:.2f} s)\n"
                f"limits: timeout {self.sb.config.timeout_s:g} s, memory {self.sb.config.memory_mb} MB, "
                f"output {self.sb.config.output_limit:,} chars\n"
            )
        elif cmd == "reset":
            self.sb.reset()
            self.write("namespace cleared\n")
        elif cmd in ("help", "?", ""):
            extra = "".join(f"%{name:<8} {help_}\n" for name, (help_, _) in self.hooks.commands.items())
            self.write(COMMANDS + "\n" + extra)
            self.show(self.sb.run("help()"))
        else:
            self.write(f"unknown command %{cmd} (try %help)\n")
        return True

    # -- the loop ----------------------------------------------------------------------------

    def run_source(self, source: str) -> CellResult | None:
        if self.hooks.before_cell:
            self.hooks.before_cell(source)
        try:
            res = self.sb.run(source)
        except KeyboardInterrupt:
            self.write("KeyboardInterrupt: the cell was stopped; the namespace is as it was before it\n")
            if self.hooks.after_cell:
                self.hooks.after_cell(source, None)
            return None
        self.show(res)
        if self.hooks.after_cell:
            self.hooks.after_cell(source, res)
        return res

    def loop(self, banner: str | None = None) -> int:
        readline = _setup_readline(self.history)
        if banner:
            self.write(banner + "\n")
        buffer: list[str] = []
        try:
            while True:
                prompt = "... " if buffer else ">>> "
                try:
                    line = input(prompt)
                except EOFError:
                    self.write("\n")
                    break
                except KeyboardInterrupt:
                    self.write("\nKeyboardInterrupt\n")
                    buffer.clear()
                    continue
                if not buffer and line.lstrip().startswith("%"):
                    if not self.command(line):
                        break
                    continue
                buffer.append(line)
                source = "\n".join(buffer)
                if not is_complete(source):
                    continue
                buffer.clear()
                if source.strip():
                    self.run_source(source)
        finally:
            if readline is not None and self.history is not None:
                try:
                    self.history.parent.mkdir(parents=True, exist_ok=True)
                    readline.write_history_file(str(self.history))
                except OSError:
                    pass
        return 0


def _setup_readline(history: Path | None):
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:  # pragma: no cover - e.g. Windows
        return None
    readline.set_history_length(5000)
    if history is not None and history.exists():
        try:
            readline.read_history_file(str(history))
        except OSError:
            pass
    return readline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repl", description="Sandboxed Python console (the RLM REPL).")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per cell (default 30)")
    p.add_argument("--memory-mb", type=int, default=1024, help="memory limit of the sandbox (default 1024)")
    p.add_argument("--output-limit", type=int, default=20_000, help="characters of output kept per cell")
    p.add_argument("--context", metavar="FILE", help="bind the text of FILE to the name `context`")
    p.add_argument("-c", dest="code", metavar="CODE", help="run CODE as one cell, print the result and exit")
    p.add_argument("--history-file", default=str(HISTORY_FILE), help="readline history file")
    p.add_argument("--no-history", action="store_true", help="do not read or write a history file")
    p.add_argument("-q", "--quiet", action="store_true", help="no banner")
    return p


def main(argv: list[str] | None = None, primitives: dict[str, Any] | None = None,
         hooks: ConsoleHooks | None = None) -> int:
    """Console entry point (``python -m repl``; ``rlm repl`` passes its worker in ``primitives`` and records
    the cells for it through ``hooks``)."""
    args = build_parser().parse_args(argv)
    prims: dict[str, Any] = dict(primitives or {})
    if args.context:
        prims.setdefault("context", Path(args.context).read_text(encoding="utf-8", errors="replace"))
    prims.setdefault("worker", _no_worker)
    prims.setdefault("worker_batch", _no_worker)

    holder: dict[str, Sandbox] = {}
    finals: list[Any] = []

    def FINAL(answer: Any = None) -> str:
        finals.append(answer)
        print(safe_text(f"[FINAL] {answer}"), flush=True)
        return "final answer recorded"

    def FINAL_VAR(name: str) -> Any:
        value = holder["sb"].get(name)
        finals.append(value)
        print(safe_text(f"[FINAL_VAR {name}] {value}"), flush=True)
        return value

    prims.setdefault("FINAL", FINAL)
    prims.setdefault("FINAL_VAR", FINAL_VAR)
    config = SandboxConfig(timeout_s=args.timeout, memory_mb=args.memory_mb, output_limit=args.output_limit)
    try:
        sb = Sandbox(primitives=prims, config=config)
    except Exception as e:  # noqa: BLE001 - report and exit, this is a CLI
        print(f"cannot start the sandbox: {e}", file=sys.stderr)
        return 2
    holder["sb"] = sb
    with sb:
        console = Console(sb, history=None if args.no_history else Path(os.path.expanduser(args.history_file)),
                          hooks=hooks)
        if args.code is not None:
            res = console.run_source(args.code)
            return 0 if res is not None and res.ok else 1
        banner = None if args.quiet else (
            f"Sandboxed Python {sys.version.split()[0]} (timeout {config.timeout_s:g} s, memory "
            f"{config.memory_mb} MB). Primitives: {', '.join(sb.primitives)}. %help for commands, %quit to leave."
        )
        return console.loop(banner)


__all__ = ["NO_WORKER", "Console", "ConsoleHooks", "is_complete", "main", "safe_text"]

