"""Host side of the sandbox: :class:`Sandbox`, which implements the session contract of
:mod:`repl.session` (:class:`~repl.session.ReplSession`, :class:`~repl.session.CellResult`,
:class:`~repl.session.SandboxConfig`), and :func:`layers`.

Execution model
===============

Why a separate process: the host holds a multi-GB model, and no in-process limit is safe
against hostile code (a C-level allocation or a tight loop in C cannot be interrupted, a thread
cannot be killed, and MemoryError can surface anywhere in the host). So each session is a child
process tree, and the host only ever reads length-prefixed JSON from it, with deadlines and a
size cap::

    host ──socketpair──> supervisor ──fork──> worker ──fork before each cell──> backup

* The child is ``python -I -B -c ...`` (no host environment, no user site, cwd ``/``) in its
  own session and process group. It imports RestrictedPython and the allowed modules once,
  builds the namespace and forks the worker, which runs every cell in that one namespace (so
  functions, classes and generators persist; nothing has to be picklable).
* Limits: ``RLIMIT_AS`` = ``memory_mb``, ``RLIMIT_FSIZE`` 0, ``RLIMIT_CORE`` 0, ``RLIMIT_NOFILE``
  64, all hard (soft = hard: an escaped cell cannot raise them), ``no_new_privs``, inherited
  descriptors closed, an empty environment; when the host is root the worker runs as an
  unprivileged uid of its own (``1_500_000_000 + supervisor pid``) with a hard ``RLIMIT_NPROC`` of
  2, which then counts this session's processes only: the worker and this cell's backup, so that
  during a cell no fork succeeds even after the soft limit is raised (the worker reaps the
  previous backup before forking the next one). During a cell also ``RLIMIT_NOFILE`` = no new
  descriptor, ``RLIMIT_NPROC`` 0 (soft) and ``RLIMIT_CPU`` as a backstop. The wall-clock
  timeout is enforced by the host, which SIGKILLs the worker through a pidfd (no pid-reuse race).
* OS layer (:mod:`repl._oslayer`), so that an escape from the policy still reaches nothing: the
  supervisor enters a network namespace; the worker restricts itself with Landlock (read-only
  beneath the interpreter's paths, no TCP, no signals outside the sandbox) and a seccomp
  allow-list (no execve, socket, connect, bind, ptrace, mount, kill, threads, open for writing,
  fcntl commands that point signals at a process). Each layer that the kernel or the
  permissions refuse is reported by the child, warned about once per process, logged once per
  session (logger ``repl.sandbox``, INFO, the active and the missing ones), and listed by
  :meth:`Sandbox.describe`, :func:`layers` and ``rlm doctor``. The host sets ``PR_SET_DUMPABLE`` 0 on itself, so
  a sandbox with the host's uid (non-root host) cannot read ``/proc/<host pid>``.
  Why ``fork`` stays allowed by seccomp: the backup below is a fork of the worker *after* the
  previous cell, so the process that runs cells must be able to fork; a filter (or a hard
  ``RLIMIT_NPROC`` 0) that forbids it would forbid the backup. Forbidding fork only during a cell
  is impossible (filters cannot be removed) and restructuring (run each cell in a fresh child)
  leaves the post-cell state in a process that can no longer fork. So fork is allowed with the
  narrowest flags (no ``CLONE_THREAD``/``CLONE_VM``/namespaces; ``clone3`` answers ENOSYS), every
  fork inherits every layer (seccomp, Landlock, namespace, uid, rlimits), and the hard NPROC cap
  bounds how many there can be (none during a cell, with a session uid); whatever exists besides
  the worker is killed after every cell (see "Trust" below). Without a session uid (non-root
  host) NPROC is soft only and an escaped cell can fork: its processes are killed after the
  cell, cannot answer on the channel, and die with the process group.
* The host treats the child as hostile. Its guarantees (issue 26: nothing a cell or a
  compromised child sends keeps the host busy past the cell's timeout + 1 s):

  H1. Every frame of a cell (``call``, ``done``) and every answer to a request must carry the
      nonce the host chose for it (a forged or stale ``done`` is refused and the session
      restored from the backup).
  H2. A frame is checked before its body is read: its 4-byte length against its op's limit
      (``call``/``got``/``names`` up to ``max_message_mb``; every other op is a control frame,
      refused past the size of an honest ``done``), and its first bytes against the ops this
      read expects and their nonce (``{"op":"call","nonce":"..."``, see
      :func:`repl._wire.frame_prefix`). A frame of another op or nonce is refused at once,
      however long it says it is. The body is read under the deadline: the clock is read
      before every chunk (a sender that never pauses is not read past it), and a frame that
      could not be decoded in the time left (:func:`repl._wire.check_time`, at the rate of a
      loaded VM with cold memory) is refused as soon as that is so, from its header on.
  H3. Decoding is bounded in units, nesting, int size and time (:mod:`repl._wire`): the frame is
      counted before ``json.loads`` builds anything (at most ``MAX_NODES`` = 1,000,000 units,
      brackets and commas outside strings, which the sender counts alike, so an honest value is
      refused in the sandbox with a clear error), nested at most ``MAX_JSON_DEPTH``, refused if it
      could not be decoded in the time left; json.loads charges every number and object and
      stops at the deadline, as does the strict decoding after it, GC off; ints past the
      sender's 12,000 bits and dicts with more than 32 keys colliding in hash are refused. The
      deadline is the cell's: decoding time counts against it (only a primitive's own time is
      excluded) and is reported, as is the host time per primitive; a decode that would pass it
      ends the cell as a timeout (worker killed, backup takes over).
  H4. ``get()`` and ``names()`` outside a cell run under a backup, as a cell does, and are
      answered and decoded within ``timeout_s`` (from a primitive: within the running cell's
      timeout): an answer that does not come in time, is refused, or kills the worker (memory)
      ends with a SandboxError that says so, the backup taking over with the namespace intact. A
      Ctrl-C while the host waits does the same before it goes on, so no answer is left behind.
  H5. The strings of a ``done`` are cut to ``output_limit`` again by the host. A primitive's reply
      is sent within the cell's remaining time: a worker that stops reading is killed at the
      deadline (frames queued past it are not served).
  H6. Whatever a primitive raises is the cell's exception, BaseExceptions included (SystemExit,
      GeneratorExit, asyncio.CancelledError): the session and its names go on. KeyboardInterrupt
      alone goes on to the caller, after the cell is ended as at a timeout (namespace as before
      the cell), so that a Ctrl-C still stops the host.
* Trust: the host starts the supervisor, and no cell code ever runs in it; but the worker, the
  backup and anything they fork run code the host does not trust once the policy is escaped
  (an escaped cell can patch the backup that later takes over). So the host takes no number,
  pid or authority from them. It learns the worker's pid from the kernel: its sockets have
  ``SO_PASSCRED``, and every chunk read carries the sender's pid in ``SCM_CREDENTIALS`` (an
  unprivileged process can only send its own); ``hello`` and ``ready`` are attributed to their
  sender, never to the ``pid`` they contain. Before adopting a pid the host opens a pidfd on it
  and checks, while the process is alive, that it is in the session's process group (the
  supervisor's, created by the host; seccomp forbids ``setpgid``/``setsid``), is neither the
  host nor the supervisor, and runs as the session's uid when there is one; every signal goes
  through that pidfd (no bare ``kill(pid)``: without a pidfd the whole session is stopped and
  restarted). Frames from any other pid than the worker's are refused (kill + takeover), so a
  forked process cannot answer on the channel. After every cell, request and takeover, every
  descendant of the supervisor but the worker (the old backup, anything a cell forked; orphans
  come back to the supervisor, a child subreaper) is SIGKILLed through a pidfd, checked the
  same way.
* Namespace intact after a kill: before each cell the worker forks a *backup* (copy-on-write,
  about 0.4 ms for the ~15 MB worker) that blocks on a fresh socket the host passed along with
  the cell (SCM_RIGHTS). Cell done: the host closes that socket and the backup exits. Timeout,
  memory limit, crash or Ctrl-C: the host kills the worker and tells the backup to take over, so
  the session goes on with the namespace exactly as it was before that cell (a cell stopped by a
  limit leaves no trace; a cell that merely raises keeps its partial effects, as in Python).
  Snapshotting by pickling was rejected (functions, classes, generators do not pickle), and so
  was replaying cells (it would call worker() again).
* The supervisor is a child subreaper: orphaned backups that took over are its children, it
  reaps them and reports exit statuses (SIGSEGV, SIGXCPU...) on its stdout; it SIGTERMs the
  group when the host goes away (EOF on its stdin) or closes the session.
* Primitives are host callables: the worker sends ``call`` messages and waits; arguments and
  results are plain data (encoded by :mod:`repl._wire`, so copied by construction). While it
  waits it still answers ``get``/``names``, so a primitive may call :meth:`Sandbox.get`
  (FINAL_VAR). Time spent inside primitives does not count against the cell's timeout unless
  ``count_primitive_time``.

The sandbox policy itself (what cell code may touch) is documented in :mod:`repl._policy`.
"""

from __future__ import annotations

import keyword
import logging
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable

from pydantic import BaseModel, Field

from repl import _wire
from repl.session import CellResult, SandboxConfig, SandboxError

__all__ = ["CellResult", "Layer", "LayerReport", "Sandbox", "SandboxConfig", "SandboxError", "SandboxStats",
           "layers"]

_HEADER = struct.Struct(">I")
_log = logging.getLogger("repl.sandbox")
_RESERVED_NAMES = {"print", "printed", "breakpoint", "builtins"}


class SandboxStats(BaseModel):
    cells: int = 0
    errors: int = 0
    total_s: float = 0.0
    primitive_calls: int = 0
    primitive_s: float = 0.0
    primitive_times: dict[str, float] = Field(default_factory=dict, description="host seconds per primitive")
    decode_s: float = 0.0
    limits: dict[str, int] = Field(default_factory=lambda: {"timeout": 0, "memory": 0, "output": 0})
    restores: int = 0
    restarts: int = 0


# ---------------------------------------------------------------------------------------------


class _Dead(Exception):
    """The peer process is gone (EOF or a broken protocol)."""


class _Forged(_Dead):
    """A frame that the worker did not send (the kernel's SCM_CREDENTIALS name another
    process), or that no honest worker sends: an op or a nonce this read does not expect, a
    frame over its op's size, a frame that does not decode."""


class _Late(_Forged):
    """Decoding a frame did not finish before the deadline (refused, as a cell past its timeout)."""


_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_CRED_SPACE = socket.CMSG_SPACE(_UCRED.size)
# Frames that carry user data (a primitive call, a get() answer, the names listing) may be up
# to max_message_mb; every other frame is a small control frame (see _Conn.control_bytes).
_DATA_OPS = frozenset({"call", "got", "names"})
# A frame over this size is checked against the time left before each chunk of its body is
# read, and once read, decoded in place rather than copied (smaller ones take microseconds).
_BIG_FRAME = 1 << 16


class _Conn:
    """A socket to one sandbox process with a deadline-aware framed reader.

    SO_PASSCRED is on: the kernel attaches the sending process's pid to every chunk read
    (SCM_CREDENTIALS; an unprivileged sender can only send its own). ``expect_pid``, once
    set, is the only process whose bytes are accepted; ``frame_pids`` are the senders of the
    last frame returned. That is how the host learns a worker's pid without taking it from
    the sandbox's word, and why a process forked by a cell cannot answer on the channel.

    Every read names the ops it accepts and the nonce they must carry: the 4-byte header (the
    length, against the op's limit) and the first bytes of the body (op and nonce, see
    :func:`repl._wire.frame_prefix`) are checked as soon as they arrive, before the rest of the
    frame is read; the rest is read, and decoded, under the caller's deadline."""

    def __init__(self, sock: socket.socket, max_bytes: int, control_bytes: int = 1 << 20):
        self.sock = sock
        self.max_bytes = max_bytes
        self.control_bytes = control_bytes
        self.buf = bytearray()
        self.decode_s = 0.0
        self.expect_pid: int | None = None
        self.pids: set[int] = set()
        self.frame_pids: set[int] = set()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict, fds: list[int] | None = None, timeout: float = 30.0) -> None:
        data = _wire.frame(msg)
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        try:
            if fds:
                self._wait(select.POLLOUT, deadline)
                n = self.sock.sendmsg([view[:4]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                     struct.pack(f"{len(fds)}i", *fds))])
                view = view[n:]
            while view:
                self._wait(select.POLLOUT, deadline)
                try:
                    n = self.sock.send(view)
                except BlockingIOError:
                    continue
                view = view[n:]
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise _Dead(f"send failed: {e}") from None

    def _wait(self, events: int, deadline: float | None) -> bool:
        p = select.poll()
        p.register(self.sock.fileno(), events)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            res = p.poll(None if remaining is None else remaining * 1000)
            if res:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                if events == select.POLLOUT:
                    raise _Dead("the sandbox stopped reading")
                return False

    def _check_head(self, n: int, ops: tuple[str, ...], nonce: str | None) -> bool:
        """Header and body prefix of the frame at the front of the buffer, before its body is
        read: True once checked, False if more bytes are needed; _Forged if refused."""
        if n > self.max_bytes:
            raise _Forged(f"message of {n:,} bytes from the sandbox exceeds max_message_mb")
        prefixes = [(op, _wire.frame_prefix(op, nonce)) for op in ops]
        need = max(len(p) for _, p in prefixes)
        if len(self.buf) < 4 + min(n, need):
            return False
        head = bytes(self.buf[4 : 4 + min(n, need)])
        for op, prefix in prefixes:
            if head.startswith(prefix):
                limit = self.max_bytes if op in _DATA_OPS else self.control_bytes
                if n > limit:
                    raise _Forged(f"{op} frame of {n:,} bytes from the sandbox (at most {limit:,})")
                return True
        got = head[:40].decode("ascii", "replace")
        want = " or ".join(ops) + (" with this nonce" if nonce is not None else "")
        raise _Forged(f"a frame that is not {want} ({got!r}...), refused before reading its {n:,} bytes")

    def recv(self, deadline: float | None, ops: tuple[str, ...], nonce: str | None = None) -> dict | None:
        """Next message, one of ``ops`` carrying ``nonce``; None at the deadline. Raises _Dead on
        EOF, _Forged on bytes from a process other than ``expect_pid`` or a frame refused (from
        its header and first bytes, before its body is read, or when it does not decode), _Late
        when decoding would go past the deadline."""
        checked = False
        while True:
            if len(self.buf) >= 4:
                (n,) = _HEADER.unpack_from(self.buf)
                if not checked:
                    checked = self._check_head(n, ops, nonce)
                if checked and n > _BIG_FRAME and len(self.buf) < 4 + n:
                    try:  # before each chunk: could the frame still be decoded in the time left?
                        _wire.check_time(n, deadline)
                    except _wire.DecodeTimeout as e:
                        raise _Late(f"{e}, before reading all of it") from None
                if checked and len(self.buf) >= 4 + n:
                    if n <= _BIG_FRAME:
                        body: bytes | bytearray = bytes(memoryview(self.buf)[4 : 4 + n])
                        del self.buf[: 4 + n]
                    else:  # decoded in place: copying 256 MB takes 0.2 s, more when page faults are slow
                        if deadline is not None and time.monotonic() > deadline:
                            raise _Late(f"a message of {n:,} bytes came in after the deadline (refused before "
                                        "decoding)")
                        body, self.buf = self.buf, bytearray(memoryview(self.buf)[4 + n :])  # the next frame's
                        del body[4 + n :]  # both cut without a copy: the end, then the header
                        del body[:4]
                    self.frame_pids, self.pids = self.pids, set()
                    if self.buf:  # the next frame began in the same chunk: same sender
                        self.pids = set(self.frame_pids)
                    t0 = time.monotonic()
                    try:
                        return _wire.loads(body, deadline=deadline)
                    except _wire.DecodeTimeout as e:
                        raise _Late(str(e)) from None
                    except _wire.WireError as e:
                        raise _Forged(str(e)) from None
                    finally:
                        body = None
                        self.decode_s += time.monotonic() - t0
            # the deadline is checked before every read, not only while waiting: a sender that
            # streams without pause would otherwise be read to the end of its frame, however late
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if not self._wait(select.POLLIN, deadline):
                return None
            try:
                chunk, anc, _flags, _addr = self.sock.recvmsg(1 << 20, _CRED_SPACE)
            except BlockingIOError:
                continue
            except (ConnectionResetError, OSError) as e:
                raise _Dead(f"recv failed: {e}") from None
            if not chunk:
                raise _Dead("the sandbox process closed the connection")
            pid = 0
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
                    pid = _UCRED.unpack_from(data)[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:  # never wanted here
                    for fd in struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4]):
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            if self.expect_pid is not None and pid != self.expect_pid:
                raise _Forged(f"a frame from process {pid}, not from the worker")
            self.pids.add(pid)
            self.buf += chunk

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _child_command(python: str) -> list[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    boot = f"import sys; sys.path.insert(0, {root!r}); from repl._child import main; main()"
    return [python, "-I", "-B", "-c", boot]


def _child_env() -> dict[str, str]:
    """Nothing of the host's environment (API keys...): the sandbox starts with an empty one."""
    return {}


_WARNED: set[str] = set()
_HOST_PROTECTED: list[bool] = []


def _protect_host() -> None:
    """PR_SET_DUMPABLE 0: /proc/<host pid>/{environ,mem,fd...} become root-owned and ptrace
    attach is refused, so a sandbox running with the host's uid cannot read them. Once."""
    if _HOST_PROTECTED:
        return
    ok = False
    try:
        import ctypes

        ok = ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        ok = False
    _HOST_PROTECTED.append(ok)
    if not ok:
        _warn_once("host", "cannot set PR_SET_DUMPABLE 0 on the host: a sandbox with the host's uid could "
                           "read /proc/<host pid>")


def _warn_once(key: str, text: str) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    import warnings

    warnings.warn(f"sandbox: {text}", RuntimeWarning, stacklevel=3)


_SESSION_UID_BASE = 1_500_000_000  # as in repl._child: the session uid is this + the supervisor's pid


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


def _state_parent(pid: int) -> tuple[bytes, int]:
    """(state, parent pid) from /proc/<pid>/stat; (b"", -1) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return b"", -1


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (/proc/<pid>/task/<tid>/children, breadth first)."""
    out: list[int] = []
    todo = _children(root)
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        todo += _children(pid)
    return out


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class Sandbox:
    """A persistent sandboxed Python session.

    >>> with Sandbox(primitives={"double": lambda x: 2 * x}) as sb:
    ...     sb.run("y = double(21)\\ny").value
    '42'
    """

    def __init__(self, primitives: dict[str, Any] | None = None, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._callables: dict[str, Callable[..., Any]] = {}
        self._values: dict[str, Any] = {}
        for name, obj in (primitives or {}).items():
            if (not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name)
                    or name.startswith("_") or name in _RESERVED_NAMES):
                raise ValueError(f"invalid primitive name {name!r}")
            if callable(obj):
                self._callables[name] = obj
            else:
                _wire.to_wire(obj)  # plain data only
                self._values[name] = obj
        self._lock = threading.RLock()
        self._in_run = False
        self._abandoned: str | None = None  # set when a request from a primitive had to kill the worker
        self._cell = 0
        self._closed = False
        self._stats = SandboxStats()
        self._proc: subprocess.Popen | None = None
        self._conn: _Conn | None = None
        self._pid = 0
        self._pidfd: int | None = None
        self._session_uid: int | None = None
        self._run_timeout = self.config.timeout_s
        self._status_buf = b""
        self._statuses: dict[int, int] = {}
        self._layers: dict[str, str] = {}
        self._missing: dict[str, str] = {}
        if self.config.protect_host_proc:
            _protect_host()
        self._spawn()
        self._finalizer = weakref.finalize(self, Sandbox._cleanup, self._proc, self._conn)
        if _log.isEnabledFor(logging.INFO):  # once per session: the layers this session got
            _log.info(self.layer_report().summary())

    # -- lifecycle --------------------------------------------------------------------------

    def _spawn(self) -> None:
        cfg = self.config
        self._session_uid = None  # known once the new worker reports its layers
        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                _child_command(cfg.python or sys.executable) + [str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=None if cfg.debug else subprocess.PIPE, env=_child_env(), cwd="/",
                start_new_session=True, close_fds=True,
            )
        except OSError as e:
            host_sock.close()
            raise SandboxError(f"cannot start the sandbox process: {e}") from None
        finally:
            child_sock.close()
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._conn = self._new_conn(host_sock)
        prims: dict[str, dict] = {n: {"callable": True} for n in self._callables}
        prims.update({n: {"value": _wire.to_wire(v)} for n, v in self._values.items()})
        init = {"op": "init", "primitives": prims, "config": {
            "timeout_s": cfg.timeout_s, "memory_mb": cfg.memory_mb, "output_limit": cfg.output_limit,
            "recursion_limit": cfg.recursion_limit, "debug": cfg.debug,
            "max_message_bytes": cfg.max_message_mb * 2**20,
            "drop_privileges": cfg.drop_privileges, "os_layers": cfg.os_layers,
            "unsafe_real_builtins": cfg.unsafe_real_builtins}}
        try:
            self._conn.send(init, timeout=cfg.startup_timeout_s)
            hello = self._conn.recv(time.monotonic() + cfg.startup_timeout_s, ("hello",))
            if hello is None or hello.get("op") != "hello":
                raise _Dead("no hello from the sandbox")
            # the worker's pid as the kernel reports it (SCM_CREDENTIALS), never the frame's word
            if len(self._conn.frame_pids) != 1 or not self._set_worker(next(iter(self._conn.frame_pids))):
                raise _Dead(f"the hello frame did not come from a worker of this session ({self._conn.frame_pids})")
        except _Dead as e:
            err = b""
            if self._proc.stderr is not None:
                try:
                    os.set_blocking(self._proc.stderr.fileno(), False)
                    err = self._proc.stderr.read() or b""
                except OSError:
                    pass
            self._kill_group()
            tail = err.decode(errors="replace")[-2000:]
            raise SandboxError(f"the sandbox process failed to start ({e}): {tail}") from None
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._layers = {str(k): str(v) for k, v in (hello.get("layers") or {}).items()}
        self._missing = {str(k): str(v) for k, v in (hello.get("missing") or {}).items()}
        for name, why in self._missing.items():
            if cfg.os_layers or name in ("uid", "rlimit_nproc"):
                _warn_once(name, f"layer '{name}' is not active: {why}")
        if "uid" in self._layers:
            self._session_uid = _SESSION_UID_BASE + self._proc.pid
            if not self._in_session(self._pid):
                self._kill_group()
                raise SandboxError("the sandbox worker does not run as the session's uid")

    def _new_conn(self, sock: socket.socket) -> _Conn:
        cfg = self.config
        # a done frame: stdout and value (output_limit each, plus a marker), an error (4,000),
        # up to 12 bytes per character in ASCII JSON (a surrogate pair), and the envelope
        control = 12 * (2 * cfg.output_limit + 8_000) + 65_536
        return _Conn(sock, cfg.max_message_mb * 2**20, control)

    def _in_session(self, pid: int) -> bool:
        """``pid`` is a process of this session: in the process group of the supervisor (the
        host started it with a session of its own; cells cannot call setpgid/setsid), not the
        supervisor itself, and running as the session's uid when there is one."""
        proc = self._proc
        if proc is None or type(pid) is not int or pid <= 1 or pid == os.getpid() or pid == proc.pid:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) != proc.pid:
                return False
            if self._session_uid is not None and os.stat(f"/proc/{pid}").st_uid != self._session_uid:
                return False
        except (OSError, ValueError, IndexError):
            return False
        return True

    def _set_worker(self, pid: int) -> bool:
        """Adopt ``pid`` (known from the kernel, never from a frame) as the worker: a pidfd on
        it, taken only if it is a live process of this session. False: refused (no handle)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._pid = 0
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError, TypeError, ValueError, OverflowError):
            return False
        # checked after the pidfd is open and while it is still alive: the pid then still
        # names the process the pidfd holds, so no reuse can slip in between
        if not self._in_session(pid) or select.select([fd], [], [], 0)[0]:
            os.close(fd)
            return False
        self._pid, self._pidfd = pid, fd
        if self._conn is not None:
            self._conn.expect_pid = pid
        return True

    def _kill_group(self) -> None:
        """Stop every process of the session. SIGTERM first: the supervisor ignores it, reaps
        the others and exits, so no zombie is left for init; SIGKILL if that takes too long."""
        proc = self._proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError, OSError):
                pass
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    @staticmethod
    def _cleanup(proc: subprocess.Popen | None, conn: _Conn | None) -> None:
        if conn is not None:
            conn.close()
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except Exception:
                pass

    def close(self) -> None:
        """Stop the session (kills the sandbox processes). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None:
                self._conn.close()
            self._kill_group()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._finalizer.detach()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        """Start over with a fresh namespace (same primitives and config)."""
        with self._lock:
            self._check_open()
            self._restart()

    def _restart(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._kill_group()
        self._statuses.clear()
        self._status_buf = b""
        self._spawn()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, Sandbox._cleanup, self._proc, self._conn)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox is closed")

    @property
    def alive(self) -> bool:
        return not self._closed and self._proc is not None and self._proc.poll() is None

    # -- child bookkeeping ------------------------------------------------------------------

    def _read_statuses(self) -> None:
        if self._proc is None or self._proc.stdout is None:
            return
        try:
            data = self._proc.stdout.read()
        except (OSError, ValueError):
            return
        if not data:
            return
        self._status_buf += data
        *lines, self._status_buf = self._status_buf.split(b"\n")
        for line in lines:
            try:
                pid, status = map(int, line.split())
            except ValueError:
                continue
            self._statuses[pid] = status

    def _exit_status(self, pid: int, wait_s: float = 1.0) -> int | None:
        deadline = time.monotonic() + wait_s
        while True:
            self._read_statuses()
            if pid in self._statuses:
                return self._statuses.pop(pid)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def _kill_worker(self) -> None:
        """SIGKILL the worker through its pidfd (never by a bare pid: no reuse race, and no
        number from the sandbox). Without a pidfd there is no safe handle: stop the whole
        session (the backup with it), so the caller's takeover fails and it restarts."""
        if self._pidfd is None:
            self._kill_group()
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        # wait until it is really gone (its memory freed) before the backup takes over
        select.select([self._pidfd], [], [], 5.0)

    def _kill_strays(self) -> None:
        """After a cell, a request or a takeover: SIGKILL every process of the session but the
        supervisor and the worker (what a cell forked, a backup that should be exiting), so
        that nothing a cell started outlives it. Found as the supervisor's descendants (it is
        the child subreaper: orphans come back to it), each one checked through a pidfd, before
        the signal, to still be the child of a process of the session (no pid reuse slips in)."""
        proc = self._proc
        if proc is None or self._pidfd is None:
            return
        for _ in range(4):
            found = _descendants(proc.pid)
            known = {proc.pid, *found}
            killed = 0
            for pid in found:
                if pid == self._pid:
                    continue
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    state, parent = _state_parent(pid)  # after pidfd_open: a reused pid has a foreign parent
                    if state not in (b"Z", b"X", b"") and parent in known and pid != os.getpid():
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                        killed += 1
                except OSError:
                    pass
                finally:
                    os.close(fd)
            if not killed:  # none left but zombies (their parents reap them)
                return

    def _takeover(self, backup: _Conn | None) -> bool:
        """After the worker died or was killed: let the backup become the worker."""
        self._read_statuses()  # keep the supervisor's status pipe drained
        if len(self._statuses) > 100:
            for pid in list(self._statuses)[:-100]:
                del self._statuses[pid]
        if self._conn is not None:
            self._conn.close()
        if backup is None:
            return False
        deadline = time.monotonic() + 5.0
        try:
            backup.send({"op": "takeover"}, timeout=5.0)
            msg = backup.recv(deadline, ("ready",))
        except _Dead:
            msg = None
        # The new worker's pid is the sender of 'ready' as the kernel vouches for it, checked
        # to be a live process of this session; the frame's own "pid" is never read.
        self._conn = backup
        if (msg is None or msg.get("op") != "ready" or len(backup.frame_pids) != 1
                or not self._set_worker(next(iter(backup.frame_pids)))):
            backup.close()
            self._conn = None
            self._kill_group()
            return False
        self._stats.restores += 1
        self._kill_strays()
        return True

    # -- cells ------------------------------------------------------------------------------

    def run(self, code: str, timeout_s: float | None = None) -> CellResult:
        """Run one cell. Never raises for anything the cell does; raises KeyboardInterrupt
        (after stopping the cell and restoring the session) if the host is interrupted."""
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        with self._lock:
            self._check_open()
            if self._in_run:
                raise SandboxError("Sandbox.run() is not reentrant (called from inside a primitive?)")
            self._in_run = True
            try:
                res = self._run(code, float(timeout_s or self.config.timeout_s))
            finally:
                self._in_run = False
            st = self._stats
            st.cells += 1
            st.total_s += res.duration_s
            if res.error is not None:
                st.errors += 1
            if res.limit:
                st.limits[res.limit] = st.limits.get(res.limit, 0) + 1
            return res

    def _run(self, code: str, timeout: float) -> CellResult:
        self._run_timeout = timeout
        self._abandoned = None
        self._cell += 1
        cell = self._cell
        # Every frame of this cell must carry this nonce: a frame forged or left over from an
        # earlier cell (a 'done' sent ahead of time by code that reached the socket) is refused.
        nonce = secrets.token_hex(16)
        t0 = time.monotonic()
        prim_s = 0.0
        prim_times: dict[str, float] = {}
        h_new, c_new = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        backup = self._new_conn(h_new)
        conn0 = self._conn
        decode0 = conn0.decode_s if conn0 is not None else 0.0

        def result(**kw) -> CellResult:
            kw.setdefault("duration_s", time.monotonic() - t0)
            decode = (conn0.decode_s - decode0) if conn0 is not None else 0.0
            if self._conn is not conn0 and self._conn is not None:
                decode += self._conn.decode_s
            self._stats.decode_s += decode
            return CellResult(cell=cell, primitive_s=prim_s, primitive_times=prim_times, decode_s=decode, **kw)

        def lost(why: str) -> CellResult:
            backup.close()
            self._restart()
            self._stats.restarts += 1
            return result(error=f"SandboxError: {why}; a fresh session was started (earlier names are lost)",
                          error_type="SandboxError", restored=True)

        try:
            self._conn.send({"op": "run", "code": code, "cell": cell, "timeout": timeout, "nonce": nonce},
                            fds=[c_new.fileno()], timeout=max(timeout, 5.0))
        except _Dead as e:
            c_new.close()
            return lost(f"the sandbox process was gone ({e})")
        c_new.close()
        deadline = time.monotonic() + timeout

        def timed_out(late: str | None = None) -> CellResult:
            self._kill_worker()
            if not self._takeover(backup):
                return lost("the session could not be restored after the timeout")
            what = (f"the cell ran longer than {timeout:g} s and was stopped" if late is None else
                    f"the cell was stopped: its message to the host could not be decoded within its {timeout:g} s "
                    f"({late})")
            return result(error=f"TimeoutError: {what}; the namespace is as it was before the cell",
                          error_type="TimeoutError", limit="timeout", restored=True)

        try:
            while True:
                try:
                    msg = self._conn.recv(deadline, ("call", "done"), nonce)
                except _Late as e:
                    return timed_out(str(e))
                except _Forged as e:
                    op = f"refused frame: {e}"
                    msg = {}
                except _Dead as e:
                    return self._after_death(backup, result, lost, str(e), timeout)
                else:
                    if msg is None:
                        return timed_out()
                    op = msg.get("op")
                if not msg:
                    pass
                elif msg.get("nonce") != nonce:  # checked before the body was read; kept as a second check
                    op = f"{op} frame without this cell's nonce"
                elif op == "call":
                    if time.monotonic() >= deadline:  # frames queued past the deadline are not served
                        return timed_out()
                    try:
                        reply, spent = self._call_primitive(msg, deadline)
                    except _wire.DecodeTimeout as e:
                        return timed_out(str(e))
                    prim_s += spent
                    if type(msg.get("name")) is str and msg["name"] in self._callables:
                        prim_times[msg["name"]] = prim_times.get(msg["name"], 0.0) + spent
                    if self._abandoned is not None:  # a get()/names() from the primitive killed the worker
                        why, self._abandoned = self._abandoned, None
                        if not self._takeover(backup):
                            return lost(f"the session could not be restored ({why})")
                        return result(error=f"SandboxError: the sandbox {why}; the cell was stopped and the "
                                            "namespace is as it was before the cell",
                                      error_type="SandboxError", restored=True)
                    if not self.config.count_primitive_time:
                        deadline += spent  # only the primitive itself: decoding counts against the cell
                    # The reply is sent within the cell's remaining time: a worker that does not
                    # read it (it queued calls and stopped reading) is killed at the deadline.
                    try:
                        self._conn.send(reply, timeout=max(0.0, deadline - time.monotonic()))
                    except _Dead:
                        return timed_out()
                    continue
                elif op == "done":
                    return self._finish(msg, backup, result, lost)
                self._kill_worker()
                if not self._takeover(backup):
                    return lost(f"protocol error ({op!r})")
                return result(error=f"SandboxError: protocol error from the sandbox ({op!r}); session restored",
                              error_type="SandboxError", restored=True)
        except KeyboardInterrupt:
            # The host's Ctrl-C (or a primitive that raised KeyboardInterrupt): the cell is
            # stopped as at a timeout (worker killed, its backup takes over: the namespace as it
            # was before the cell), then the interrupt goes on to the caller.
            self._kill_worker()
            if not self._takeover(backup):
                backup.close()
                self._restart()
                self._stats.restarts += 1
            raise

    def _finish(self, msg: dict, backup: _Conn, result, lost) -> CellResult:
        # cut again here, whatever the sandbox says it sent: a forged 'done' cannot hand the
        # caller more than output_limit characters (control frames are small anyway)
        limit_chars = self.config.output_limit

        def s(key, n=limit_chars):
            v = msg.get(key)
            if type(v) is not str:
                return None
            return _wire.cut(v, n)[0] if len(v) > n + 200 else v  # 200: the child's own marker

        limit = msg.get("limit") if msg.get("limit") in ("memory", "output") else None
        dropped = msg.get("dropped") if type(msg.get("dropped")) is int and msg["dropped"] >= 0 else 0
        stdout = msg.get("stdout")
        if type(stdout) is str and len(stdout) > limit_chars + 200:  # over the limit and its marker
            dropped += len(stdout) - limit_chars
            limit = limit or "output"
        restored = False
        error = s("error", 4_400)
        if limit == "memory":
            # The cell hit the address-space limit: whatever it built may still hold the memory.
            self._kill_worker()
            if not self._takeover(backup):
                return lost("the session could not be restored after running out of memory")
            restored = True
            error = (error or "MemoryError") + (f" [memory limit {self.config.memory_mb} MB; "
                                                "the namespace is as it was before the cell]")
        else:
            backup.close()  # the backup sees EOF and exits
            self._kill_strays()  # and so does anything else but the worker
        return result(stdout=s("stdout") or "", value=s("value"), error=error,
                      error_type=s("etype", 200) if error else None, limit=limit, restored=restored,
                      dropped_chars=dropped)

    def _after_death(self, backup: _Conn, result, lost, why: str, timeout: float) -> CellResult:
        pid = self._pid
        status = self._exit_status(pid, 0.2)
        self._kill_worker()  # EOF does not prove it is gone (it may have closed the socket)
        if status is None:
            status = self._exit_status(pid)
        if not self._takeover(backup):
            return lost(f"the sandbox process died ({why})")
        limit = None
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                limit, etype, text = "timeout", "TimeoutError", f"the cell used more than {timeout:g} s of CPU"
            elif sig in (signal.SIGKILL, signal.SIGABRT, signal.SIGBUS):
                limit, etype = "memory", "MemoryError"
                text = f"the cell's process was killed ({_signal_name(sig)}), most likely out of memory"
            else:
                etype, text = "SandboxCrash", f"the cell's process crashed ({_signal_name(sig)})"
        elif status is not None:
            etype, text = "SandboxCrash", f"the cell's process exited (status {os.WEXITSTATUS(status)})"
        else:
            etype, text = "SandboxCrash", "the cell's process died"
        return result(error=f"{etype}: {text}; the namespace is as it was before the cell",
                      error_type=etype, limit=limit, restored=True)

    def _call_primitive(self, msg: dict, deadline: float) -> tuple[dict, float]:
        """Run one primitive call: (reply, seconds inside the primitive itself). Its arguments are
        decoded before ``deadline`` (the cell's; _wire.DecodeTimeout past it). Whatever the
        primitive raises becomes the cell's exception, BaseExceptions included (SystemExit,
        GeneratorExit, asyncio.CancelledError from an async client being cancelled): the session
        and its names go on. KeyboardInterrupt alone goes on to the caller (``run`` stops the
        cell cleanly first): a Ctrl-C on the host must still stop the host."""
        name = msg.get("name")
        fn = self._callables.get(name) if type(name) is str else None
        self._stats.primitive_calls += 1
        if fn is None:
            return {"op": "reply", "ok": False, "etype": "NameError", "message": f"no primitive {name!r}"}, 0.0
        t0 = time.monotonic()
        try:
            args = _wire.from_wire(msg.get("args"), deadline=deadline)
            kwargs = _wire.from_wire(msg.get("kwargs"), deadline=deadline)
            if type(args) is not list or type(kwargs) is not dict:
                raise _wire.WireError("bad call")
        except _wire.DecodeTimeout:
            raise
        except _wire.WireError as e:
            return {"op": "reply", "ok": False, "etype": "TypeError", "message": f"{name}(): {e}"}, 0.0
        finally:
            self._conn.decode_s += time.monotonic() - t0
        t0 = time.monotonic()
        try:
            value = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - a primitive's exception belongs to the cell
            return {"op": "reply", "ok": False, "etype": type(e).__name__, "message": _scrub(_exc_text(e))}, \
                time.monotonic() - t0
        finally:
            spent = time.monotonic() - t0
            self._stats.primitive_s += spent
            self._stats.primitive_times[name] = self._stats.primitive_times.get(name, 0.0) + spent
        try:
            return {"op": "reply", "ok": True, "value": _wire.to_wire(value)}, spent
        except _wire.PlainDataError as e:
            return {"op": "reply", "ok": False, "etype": "TypeError",
                    "message": f"primitive {name}() returned something that is not plain data: {e}"}, spent

    # -- namespace --------------------------------------------------------------------------

    def _request(self, msg: dict, reply_op: str, what: str) -> tuple[dict, float]:
        """Send a request (``get``, ``names``) and read its answer: (reply, deadline). The answer is
        read and decoded within the cell's timeout (from a primitive: the running cell's; else
        ``timeout_s``). Outside a cell the request runs under a backup, as a cell does: if the
        answer does not come, comes late, is refused, or the worker dies sending it (memory), the
        worker is killed and the backup takes over with the namespace intact; inside a cell the
        worker is killed and the running cell's backup takes over when run() sees it gone."""
        timeout = self._run_timeout if self._in_run else self.config.timeout_s
        nonce = secrets.token_hex(16)
        backup: _Conn | None = None
        fds: list[int] = []
        c_new = None
        if not self._in_run:
            h_new, c_new = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            backup = self._new_conn(h_new)
            fds = [c_new.fileno()]
        deadline = time.monotonic() + timeout
        why = ""
        reply: dict | None = None
        try:
            try:
                self._conn.send({**msg, "nonce": nonce}, fds=fds, timeout=timeout)
                reply = self._conn.recv(deadline, (reply_op,), nonce)
                if reply is None:
                    why = f"did not answer within {timeout:g} s (the cell timeout) while sending {what}"
            except _Late as e:
                why = (f"answered too slowly to decode within {timeout:g} s (the cell timeout) while sending "
                       f"{what} ({e})")
            except _Forged as e:
                why = f"sent a frame the host refused while sending {what} ({e})"
            except _Dead as e:
                why = f"died (most likely out of memory) while sending {what} ({e})"
            finally:
                if c_new is not None:
                    c_new.close()
        except BaseException:  # Ctrl-C: the answer may still come; never leave it in the channel
            self._abandon(backup, why=f"was interrupted while sending {what}")
            raise
        if not why:
            if backup is not None:
                backup.close()
                self._kill_strays()
            return reply, deadline
        restored = self._abandon(backup, dead=why.startswith("died"), why=why)
        if self._in_run:
            raise SandboxError(f"the sandbox {why}; the running cell is stopped")
        if not restored:
            raise SandboxError(f"the sandbox {why}; a fresh session was started (earlier names are lost)")
        raise SandboxError(f"the sandbox {why}; the session was restored as it was before; "
                           "send a smaller value (a slice, a summary)")

    def _abandon(self, backup: _Conn | None, dead: bool = False, why: str = "") -> bool:
        """A request's answer did not come as it should: kill the worker; outside a cell its
        backup takes over (a fresh session if that fails: False); inside, the cell's backup will."""
        self._kill_worker()
        if dead:
            self._exit_status(self._pid)
        if self._in_run:
            self._abandoned = why or "did not answer a request from a primitive"
            return True
        if self._takeover(backup):
            return True
        if backup is not None:
            backup.close()
        self._restart()
        self._stats.restarts += 1
        return False

    def get(self, name: str) -> Any:
        """A copy of the plain-data value bound to ``name``. KeyError if undefined, TypeError if
        the value is not plain data, SandboxError if it cannot be sent (too large to send, or to
        send and decode within the cell timeout): the namespace is then as it was."""
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        with self._lock:
            self._check_open()
            reply, deadline = self._request({"op": "get", "name": name}, "got", f"'{name}'")
        if reply.get("ok"):
            t0 = time.monotonic()
            try:
                return _wire.from_wire(reply.get("value"), deadline=deadline)
            except _wire.DecodeTimeout:
                raise SandboxError(f"decoding '{name}' took longer than the cell timeout; refused (the session "
                                   "is intact); send a smaller value (a slice, a summary)") from None
            except _wire.WireError as e:
                raise SandboxError(f"cannot decode '{name}' from the sandbox: {e}") from None
            finally:
                self._stats.decode_s += time.monotonic() - t0
        if reply.get("etype") == "KeyError":
            raise KeyError(name)
        if reply.get("etype") == "MemoryError":
            raise SandboxError(str(reply.get("message")))
        raise TypeError(str(reply.get("message")))

    def names(self) -> dict[str, str]:
        """User-defined names -> short description (type and a preview), primitives excluded."""
        with self._lock:
            self._check_open()
            reply, _ = self._request({"op": "names"}, "names", "the names")
        names = reply.get("names")
        if type(names) is not dict:
            raise SandboxError("unexpected reply")
        return {str(k): str(v) for k, v in names.items()}

    def describe(self) -> dict[str, Any]:
        """The protection layers of this session: ``active`` (name -> what it does) and
        ``missing`` (name -> why it is not there), as the sandbox process reported them.
        :func:`layers` and ``rlm doctor`` report the same, as a typed :class:`LayerReport`."""
        layers = {"policy": "RestrictedPython policy and guarded builtins (repl._policy)",
                  "process": "separate process tree, killed by the host at the timeout; backup before each cell"}
        missing = {}
        if _HOST_PROTECTED and _HOST_PROTECTED[0]:
            layers["host"] = "host PR_SET_DUMPABLE 0 (a sandbox with the host's uid cannot read its /proc entries)"
        else:
            why = ("protect_host_proc=False" if not self.config.protect_host_proc else
                   "PR_SET_DUMPABLE 0 refused on the host")
            missing["host"] = f"{why}: a sandbox with the host's uid could read /proc/<host pid>"
        layers.update(self._layers)
        missing.update(self._missing)
        if self.config.unsafe_real_builtins:
            del layers["policy"]
            missing["policy"] = "unsafe_real_builtins=True (tests only)"
        return {"active": layers, "missing": missing}

    def layer_report(self) -> LayerReport:
        """:meth:`describe` as a :class:`LayerReport`."""
        return LayerReport.from_describe(self.describe())

    def stats(self) -> SandboxStats:
        return self._stats.model_copy(deep=True)

    @property
    def primitives(self) -> list[str]:
        return sorted([*self._callables, *self._values])


# ---------------------------------------------------------------------------------------------
# Which layers protect cells on this machine


# Every layer a session can have, in the order a report lists them: what it stops.
LAYERS: dict[str, str] = {
    "policy": "what cell code may touch (RestrictedPython, guarded builtins, wrapped modules)",
    "process": "a separate process tree: timeouts, memory, crashes stop the sandbox, never the host",
    "host": "the host's /proc entries (environment, memory) out of reach of a sandbox with its uid",
    "uid": "an unprivileged uid of the session's own (root host): file permissions, no other process to signal",
    "rlimits": "hard limits on memory, files, descriptors, core dumps",
    "rlimit_nproc": "a hard cap on processes: no fork during a cell",
    "network": "a network namespace with no interfaces",
    "landlock": "filesystem: read-only, beneath the interpreter's own files; no TCP (ABI 4), no signals out (ABI 6)",
    "seccomp": "a system-call allow-list: no exec, sockets, ptrace, kill, threads, writes, fcntl signal ownership",
}


class Layer(BaseModel):
    """One isolation layer: ``active``, and ``detail``: what it does here, or why it is missing."""

    name: str
    active: bool
    detail: str
    purpose: str = ""


class LayerReport(BaseModel):
    """Which isolation layers protect cells on this machine (:func:`layers`, ``rlm doctor``)."""

    layers: list[Layer]
    uid: int = Field(default_factory=os.getuid, description="the host's uid")
    kernel: str = Field(default_factory=lambda: os.uname().release)

    @classmethod
    def from_describe(cls, described: dict[str, Any]) -> LayerReport:
        active, missing = described["active"], described["missing"]
        names = [n for n in LAYERS if n in active or n in missing]
        names += sorted(n for n in {*active, *missing} if n not in LAYERS)
        return cls(layers=[Layer(name=n, active=n in active, detail=str(active.get(n, missing.get(n, ""))),
                                 purpose=LAYERS.get(n, "")) for n in names])

    @property
    def active(self) -> list[str]:
        return [la.name for la in self.layers if la.active]

    @property
    def missing(self) -> dict[str, str]:
        return {la.name: la.detail for la in self.layers if not la.active}

    def summary(self) -> str:
        """One line: what is active, what is missing and why."""
        missing = "; ".join(f"{n} ({why})" for n, why in self.missing.items())
        return f"sandbox layers active: {', '.join(self.active)}" + (f"; missing: {missing}" if missing else "")

    def text(self) -> str:
        """The report as ``rlm doctor`` prints it."""
        host = "root" if self.uid == 0 else f"uid {self.uid} (not root)"
        lines = [f"Sandbox isolation layers on this machine (host {host}, kernel {self.kernel}):"]
        for la in self.layers:
            lines.append(f"  [{'x' if la.active else ' '}] {la.name:<13} {la.detail}")
            if not la.active and la.purpose:
                lines.append(f"      {'':<13} (what it would add: {la.purpose})")
        n = len(self.active)
        lines.append(f"{n} of {len(self.layers)} layers active."
                     + ("" if n == len(self.layers) else " See docs/sandbox.md, 'Running as a non-root host'."))
        return "\n".join(lines)


def layers(config: SandboxConfig | None = None) -> LayerReport:
    """Start a throwaway session with ``config`` and report which isolation layers it got on this
    machine, and why any is missing (what :meth:`Sandbox.describe` reports, typed). Raises
    SandboxError if no session can be started at all."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the report says it all
        with Sandbox(config=config) as sb:
            return sb.layer_report()


def _scrub(text: str) -> str:
    for p in sorted({sys.prefix, sys.base_prefix, os.path.expanduser("~"),
                     os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}, key=len, reverse=True):
        if p and len(p) > 1:
            text = text.replace(p, "<host>")
    return text


def _exc_text(e: BaseException) -> str:
    try:
        text = str(e)
    except Exception:  # noqa: BLE001 - a hostile or broken __str__
        return "<the exception message could not be computed>"
    return text if type(text) is str else ""
