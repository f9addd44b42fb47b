"""The REPL session contract: what the runtime (and any other host) codes against.

`repl.Sandbox` implements it; so do test fakes (`tests/fakes.py`) and any other executor a user brings
(a container, a remote kernel), as alexzhang13/rlm's `BaseEnv` and smolagents' `PythonExecutor` declare theirs.
A session holds a persistent namespace seeded with `primitives` (host callables and data, which cells may call
but not rebind) and runs one cell at a time.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pydantic only where the types are used
    from repl.sandbox import CellResult, SandboxConfig


@runtime_checkable
class ReplSession(Protocol):
    """A persistent Python session."""

    def run(self, code: str, timeout_s: float | None = None) -> CellResult:
        """Run one cell: stdout, the trailing expression's repr, the error as one string; never raises for the
        cell's own errors (a failure of the session itself may raise)."""
        ...

    def get(self, name: str) -> Any:
        """The value of a variable the cells assigned (KeyError if none; primitives are not variables)."""
        ...

    def names(self) -> dict[str, str]:
        """Variables the cells assigned: name -> type name."""
        ...

    def close(self) -> None:
        """Release the session (idempotent)."""
        ...


# (primitives, config) -> a new session; `repl.Sandbox` is one.
SessionFactory = Callable[[dict[str, Any], "SandboxConfig | None"], ReplSession]
