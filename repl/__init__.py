"""repl: a sandboxed, persistent Python session for RLM orchestrators (and people).

    from repl import Sandbox, SandboxConfig, CellResult
    with Sandbox(primitives={"worker": ask, "context": text}, config=SandboxConfig(timeout_s=10)) as sb:
        res = sb.run("print(len(context))\\nworker('what is this about?')")

The contract a session implements (:class:`ReplSession`, :class:`CellResult`, :class:`SandboxConfig`,
:class:`SandboxError`, :data:`SessionFactory`) is :mod:`repl.session`; :class:`Sandbox` is one
implementation. :func:`layers` reports which isolation layers protect cells on this machine
(``rlm doctor`` prints it).

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
    from repl.sandbox import Layer, LayerReport, Sandbox, SandboxStats, layers
    from repl.session import CellResult, ReplSession, SandboxConfig, SandboxError, SessionFactory

__all__ = ["CellResult", "Layer", "LayerReport", "ReplSession", "Sandbox", "SandboxConfig", "SandboxError",
           "SandboxStats", "SessionFactory", "layers"]
# the contract (repl.session: pydantic only) and the concrete sandbox (repl.sandbox)
_CONTRACT = ("CellResult", "ReplSession", "SandboxConfig", "SandboxError", "SessionFactory")


def __getattr__(name: str):
    if name in _CONTRACT:
        from repl import session

        return getattr(session, name)
    if name in __all__:
        from repl import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module 'repl' has no attribute {name!r}")
