"""repl: a sandboxed, persistent Python session for RLM orchestrators (and people).

    from repl import Sandbox, SandboxConfig, CellResult
    with Sandbox(primitives={"worker": ask, "context": text}, config=SandboxConfig(timeout_s=10)) as sb:
        res = sb.run("print(len(context))\\nworker('what is this about?')")

Two layers of defence:

* :mod:`repl._policy`: cells are compiled with RestrictedPython and run against guard hooks,
  safe builtins and wrapped modules (no ``_`` names, no frames, no real modules, no I/O).
* :mod:`repl.sandbox`: every session runs in its own rlimited process tree; the host enforces
  timeouts by killing it, a per-cell copy-on-write backup keeps the namespace after a kill, and
  only plain data crosses the boundary. The module docstring there explains the model.

``python -m repl`` (or ``rlm repl``) starts an interactive console (:mod:`repl.console`).

Exports are resolved lazily so that the sandbox process, which imports ``repl._child``, does not
pay for pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from repl.sandbox import CellResult, Sandbox, SandboxConfig, SandboxError, SandboxStats
    from repl.session import ReplSession, SessionFactory

__all__ = ["CellResult", "ReplSession", "Sandbox", "SandboxConfig", "SandboxError", "SandboxStats", "SessionFactory"]


def __getattr__(name: str):
    if name in ("ReplSession", "SessionFactory"):
        from repl import session

        return getattr(session, name)
    if name in __all__:
        from repl import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module 'repl' has no attribute {name!r}")
