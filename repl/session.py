"""The REPL session contract: what the runtime (and any other host) codes against.

* :class:`ReplSession`, the protocol a backend implements, and :data:`SessionFactory`, how the
  runtime makes one: ``(primitives, config) -> session``;
* :class:`CellResult`, what running a cell returns; :class:`SandboxConfig`, the limits a session
  is made with; :class:`SandboxError`, a failure of the session itself.

`repl.Sandbox` (:mod:`repl.sandbox`) implements it; so do test fakes (`tests/fakes.py`) and any
other executor a user brings (a container, a remote kernel), as alexzhang13/rlm's `BaseEnv` and
smolagents' `PythonExecutor` declare theirs. A session holds a persistent namespace seeded with
`primitives` (host callables and data, which cells may call but not rebind) and runs one cell at a
time. This module knows nothing of the concrete sandbox (it imports pydantic only).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = ["CellResult", "ReplSession", "SandboxConfig", "SandboxError", "SessionFactory"]


class SandboxError(RuntimeError):
    """The session itself failed (it could not be started, or is unusable): never a cell's own error."""


class SandboxConfig(BaseModel):
    """Limits of a session (``repl.Sandbox`` applies them all; another backend, those that apply to it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per cell (time inside primitives excluded)")
    memory_mb: int = Field(1024, ge=64, description="address-space limit of the sandbox process")
    output_limit: int = Field(20_000, ge=200, description="characters of stdout (and of a value repr) kept per cell")
    recursion_limit: int = Field(2000, ge=100, le=100_000)
    count_primitive_time: bool = Field(False, description="count time spent inside primitives against timeout_s")
    max_message_mb: int = Field(256, ge=1, description="largest message accepted from the sandbox")
    startup_timeout_s: float = Field(60.0, gt=0)
    python: str | None = Field(None, description="interpreter for the sandbox (default: sys.executable)")
    drop_privileges: bool = Field(True, description="when the host runs as root, run cells as user 'nobody'")
    debug: bool = Field(False, description="let the sandbox process write to the host's stderr")
    os_layers: bool = Field(True, description="network namespace, landlock and seccomp in the sandbox process")
    protect_host_proc: bool = Field(True, description="set PR_SET_DUMPABLE 0 on the host process, so that a "
                                                      "same-uid sandbox cannot read its /proc entries")
    unsafe_real_builtins: bool = Field(False, description="TESTS ONLY: cells get the real builtins and no "
                                                          "policy, as after an escape, to test the OS layer alone")


class CellResult(BaseModel):
    """What running one cell produced."""

    model_config = ConfigDict(frozen=True)

    stdout: str = ""
    value: str | None = None
    error: str | None = None
    error_type: str | None = None
    limit: Literal["timeout", "memory", "output"] | None = None
    duration_s: float = 0.0
    cell: int = 0
    restored: bool = Field(False, description="the namespace was rolled back to before this cell (after a kill)")
    primitive_s: float = Field(0.0, description="time spent inside host primitives")
    primitive_times: dict[str, float] = Field(default_factory=dict,
                                              description="host seconds per primitive name (calls included)")
    decode_s: float = Field(0.0, description="host time spent decoding the cell's messages (counts against timeout_s)")
    dropped_chars: int = Field(0, description="stdout characters cut by output_limit")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return self.error is None

    def text(self) -> str:
        """stdout, value and error as a notebook would show them."""
        parts = [p for p in (self.stdout.rstrip("\n"), self.value, self.error) if p]
        return "\n".join(parts)


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
SessionFactory = Callable[[dict[str, Any], SandboxConfig | None], ReplSession]
