"""The sandbox side of a session. Started by :class:`repl.sandbox.Sandbox` as
``python -I -B -c "...; from repl._child import main; main()" <fd>`` with ``<fd>`` one end of a
Unix socket pair. Stdlib + RestrictedPython only; nothing here imports pydantic or the host
packages.

Three roles, all forks of one start-up image (so imports and the namespace are built once):

* the **supervisor** (the process the host started): reads the init message, builds the
  namespace, hardens itself, forks the first worker, then only reaps children (it is a child
  subreaper, so orphaned workers come back to it) and reports their exit status to the host on
  its stdout. It kills the whole process group when the host goes away (EOF on its stdin).
* the **worker**: owns the namespace and runs cells, one at a time, under tightened rlimits.
* the **backup**: for each cell the worker forks a frozen copy of itself *before* running it.
  The backup blocks on a socket the host handed over for this cell. After a successful cell the
  host closes that socket and the backup exits; after a kill (timeout, memory, crash) the host
  sends ``takeover`` and the backup becomes the worker, namespace exactly as before the cell.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import socket
import sys
import time
import types
from typing import ClassVar

from repl import _wire
from repl._wire import CappedOutput, PlainDataError, cut, from_wire, recv_msg, send_msg, to_wire

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38


class _State:
    chan: socket.socket | None = None
    config: dict = {}
    ns: dict = {}
    protected: dict = {}
    reserved: dict = {}
    cells: dict[str, str] = {}
    scrub: list[str] = []
    limits: dict = {}
    read_paths: ClassVar[list[str]] = []
    nonce: str = ""  # echoed in every frame of the current cell or request (see repl.sandbox)
    layers: ClassVar[dict[str, str]] = {}  # OS layers: name -> what is active
    missing: ClassVar[dict[str, str]] = {}  # OS layers: name -> why it is not
    session_uid: int | None = None
    unsafe_ns: dict | None = None  # the test hook's namespace (real builtins), see SandboxConfig


S = _State()


def _from_host(x):
    """Values from the host are trusted (its item cap protects the host, not the sandbox)."""
    return from_wire(x, max_nodes=1 << 40, max_s=1e9)


def _prctl(option: int, arg: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except Exception:
        return False


def _setrlimit(kind: int, soft: int, hard: int | None = None) -> None:
    try:
        cur_soft, cur_hard = resource.getrlimit(kind)
        if hard is None:
            hard = cur_hard
        elif cur_hard != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > cur_hard):
            hard = cur_hard
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            soft = hard
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):
        pass


# ---------------------------------------------------------------------------------------------
# Entry point: the supervisor


def main() -> None:
    chan = socket.socket(fileno=int(sys.argv[1]))
    init, _ = recv_msg(chan)
    cfg = init["config"]
    S.config = cfg

    from repl import _policy

    prims = {}
    for name, spec in init["primitives"].items():
        prims[name] = _make_proxy(name) if spec.get("callable") else _from_host(spec["value"])
    ns = _policy.build_namespace(prims)
    S.ns = ns
    S.protected = {name: ns[name] for name in prims}
    S.reserved = {name: ns[name] for name in _policy.RESERVED}
    S.scrub = sorted(
        {p for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(__file__)),
                     os.path.expanduser("~"), os.getcwd()) if p and len(p) > 1},
        key=len, reverse=True,
    )
    if cfg.get("unsafe_real_builtins"):
        import builtins

        S.unsafe_ns = {"__builtins__": builtins, "__name__": "__main__"}
    # Inherited by every worker: no core files, no file writes, no privilege gain on exec.
    _setrlimit(resource.RLIMIT_CORE, 0, 0)
    _setrlimit(resource.RLIMIT_FSIZE, 0, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    S.read_paths = _read_paths()
    if cfg.get("os_layers", True):
        from repl import _oslayer

        _oslayer.preload()  # nothing can be imported from disk after lock-down
        try:
            S.layers["network"] = _oslayer.network_namespace()
        except _oslayer.LayerUnavailable as e:
            S.missing["network"] = str(e)
    else:
        S.missing["network"] = S.missing["landlock"] = S.missing["seccomp"] = "disabled (os_layers=False)"
    if os.getuid() == 0 and cfg.get("drop_privileges", True):
        # a uid of its own per session: RLIMIT_NPROC then counts this session's processes only,
        # and no other process (another session included) shares its uid
        S.session_uid = _SESSION_UID_BASE + os.getpid()
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the supervisor outlives a group SIGTERM
    keep = {0, 1, 2, chan.fileno()}
    _close_fds_except(keep)
    gc.collect()
    gc.freeze()  # startup objects: never scanned again, fewer pages touched after each fork

    pid = os.fork()
    if pid == 0:
        _worker_start(chan)  # never returns
    chan.close()
    _supervise()


_SESSION_UID_BASE = 1_500_000_000
# Worker + this cell's backup, nothing more: while a cell runs, the count is already at the cap,
# so no fork can succeed even if an escaped cell raises its soft limit back to the hard one.
# The worker reaps the previous backup before it forks the next (_fork_backup).
_NPROC_CAP = 2
_NOFILE_CAP = 64


def _read_paths() -> list[str]:
    """What the worker may still read under landlock: the interpreter's own files (imports are
    done before lock-down, but a lazily loaded submodule or data file must still work)."""
    import sysconfig

    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/repl")
    try:
        import RestrictedPython

        paths.add(os.path.dirname(os.path.abspath(RestrictedPython.__file__)))
    except ImportError:  # pragma: no cover - the sandbox needs it anyway
        pass
    paths.update(("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/usr/share/zoneinfo", "/etc/localtime",
                  "/dev/null", "/dev/urandom", "/usr/lib/locale"))
    return sorted(p for p in paths if p and os.path.exists(p))


def _close_fds_except(keep: set[int]) -> None:
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 256))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _supervise() -> None:
    import threading

    def watch_host():
        # EOF on stdin: the host closed the session or died. SIGTERM the group (this process
        # ignores it and reaps the others, so nothing is left for init to reap), then insist.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os.killpg(0, signal.SIGTERM)
        time.sleep(3)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch_host, daemon=True).start()
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover
            continue
        try:
            os.write(1, f"{pid} {status}\n".encode())
        except OSError:
            pass
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# The worker


def _drop_privileges() -> None:
    """Running as root: become an unprivileged uid of this session's own (file permissions then
    apply, only world-readable files, and RLIMIT_NPROC is enforced for this session alone).
    Everything the worker needs is already imported or open."""
    uid = S.session_uid
    if uid is None:
        S.missing["uid"] = "the host is not root: cells run with the host's uid" if os.getuid() else \
            "drop_privileges=False: cells run as root"
        return
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    except OSError as e:
        S.missing["uid"] = f"cannot drop privileges ({e})"
        return
    S.layers["uid"] = f"uid {uid} (unprivileged, unique to this session)"


def _worker_start(chan: socket.socket) -> None:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if not S.config.get("debug"):
            os.dup2(devnull, 2)
        os.close(devnull)
        _drop_privileges()
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        mem = int(S.config["memory_mb"]) * 2**20
        _setrlimit(resource.RLIMIT_AS, mem, mem)
        _setrlimit(resource.RLIMIT_NOFILE, _NOFILE_CAP, _NOFILE_CAP)
        limits = [f"AS {S.config['memory_mb']} MB", f"NOFILE {_NOFILE_CAP}", "FSIZE 0", "CORE 0"]
        if S.session_uid is not None and os.getuid() == S.session_uid:
            _setrlimit(resource.RLIMIT_NPROC, _NPROC_CAP, _NPROC_CAP)
            limits.append(f"NPROC {_NPROC_CAP}")
            S.layers["rlimit_nproc"] = (f"hard RLIMIT_NPROC {_NPROC_CAP} for the session's uid (the worker and this "
                                        "cell's backup): no fork during a cell")
        else:
            S.missing["rlimit_nproc"] = ("RLIMIT_NPROC is soft (0 during a cell) only: it counts every process "
                                         "of the host's uid")
        S.layers["rlimits"] = "hard rlimits: " + ", ".join(limits)
        sys.setrecursionlimit(int(S.config["recursion_limit"]))
        gc.disable()  # collections (and so finalizers) only run inside cells
        S.chan = chan
        S.limits = {k: resource.getrlimit(k) for k in (resource.RLIMIT_CPU, resource.RLIMIT_NPROC,
                                                       resource.RLIMIT_NOFILE)}
        if S.config.get("os_layers", True):
            _lock_down()
        send_msg(chan, {"op": "hello", "pid": os.getpid(), "layers": S.layers, "missing": S.missing})
        _serve()
    finally:
        os._exit(0)


def _lock_down() -> None:
    """Landlock, then seccomp (the seccomp filter forbids the landlock calls)."""
    from repl import _oslayer

    for name, apply in (("landlock", lambda: _oslayer.landlock(S.read_paths)), ("seccomp", _oslayer.seccomp)):
        try:
            S.layers[name] = apply()
        except _oslayer.LayerUnavailable as e:
            S.missing[name] = str(e)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _serve() -> None:
    while True:
        _reap()
        try:
            msg, fds = recv_msg(S.chan, max_fds=1)
        except (EOFError, OSError, _wire.WireError):
            os._exit(0)
        op = msg["op"]
        S.nonce = msg.get("nonce") if type(msg.get("nonce")) is str else ""
        if op in ("run", "get", "names"):  # under a backup when the host passed one along
            if fds:
                backup_fd = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
                pid = _fork_backup()
                if pid == 0:
                    _backup_wait(backup_fd)  # returns only after a takeover
                    continue
                os.close(backup_fd)
            reply = _run_cell(msg) if op == "run" else _handle_request(msg)
        else:
            for fd in fds:
                os.close(fd)
            reply = _handle_request(msg) if op == "ping" else {"op": "error", "message": f"unknown op {op!r}"}
        try:
            send_msg(S.chan, reply)
        except OSError:
            os._exit(0)


_BACKUP = [0]  # the pid of this worker's current backup


def _fork_backup() -> int:
    """Fork this cell's backup (-1 if impossible: a kill would then cost the namespace). The
    previous backup (told to exit, or killed, by the host) is reaped first, and a fork refused
    for the process cap (a killed worker not reaped yet) is retried for a moment."""
    prev, _BACKUP[0] = _BACKUP[0], 0
    deadline = time.monotonic() + 1.0
    while prev:
        try:
            done, _ = os.waitpid(prev, os.WNOHANG)
        except ChildProcessError:
            break
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.0002)
    while True:
        try:
            pid = os.fork()
        except BlockingIOError:  # EAGAIN: RLIMIT_NPROC
            if time.monotonic() > deadline:
                return -1
            time.sleep(0.001)
            continue
        except OSError:
            return -1
        if pid:
            _BACKUP[0] = pid
        return pid


def _backup_wait(fd: int) -> None:
    S.chan.close()
    sock = socket.socket(fileno=fd)
    try:
        msg, _ = recv_msg(sock)
    except BaseException:
        os._exit(0)
    if msg.get("op") != "takeover":
        os._exit(0)
    # The worker is dead; this process now holds the session (state: before the cell).
    _BACKUP[0] = 0
    S.chan = sock
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        send_msg(sock, {"op": "ready", "pid": os.getpid()})
    except OSError:
        os._exit(0)


# ---------------------------------------------------------------------------------------------
# Cells


def _tighten(timeout: float) -> None:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_hard = S.limits[resource.RLIMIT_CPU][1]
    _setrlimit(resource.RLIMIT_CPU, int(ru.ru_utime + ru.ru_stime + timeout + 2) + 1, cpu_hard)
    _setrlimit(resource.RLIMIT_NPROC, 0)  # no fork, no threads (not enforced for root)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    _setrlimit(resource.RLIMIT_NOFILE, lowest_free)  # no new descriptors at all


def _relax() -> None:
    for kind, (soft, hard) in S.limits.items():
        _setrlimit(kind, soft, hard)


def _scrub(text: str) -> str:
    for p in S.scrub:
        if p in text:
            text = text.replace(p, "<host>")
    return text


def _error_text(etype: str, msg: str, lineno: int | None, filename: str | None, current: str) -> str:
    text = f"{etype}: {msg}" if msg else etype
    if lineno:
        src = S.cells.get(filename or current, "")
        lines = src.splitlines()
        line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        if len(line) > 200:
            line = line[:200] + "..."
        where = f"line {lineno}" if (filename or current) == current else f"{filename[1:-1]}, line {lineno}"
        text += f" ({where}: {line})" if line else f" ({where})"
    return text


def _describe_exception(e: BaseException, current: str) -> tuple[str, str]:
    t = type(e)
    etype = t.__name__ if type(t.__name__) is str else "Exception"
    try:
        msg = str(e)
        if type(msg) is not str:
            msg = ""
    except BaseException:
        msg = "<the exception message could not be computed>"
    filename = lineno = None
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith("<cell "):
            filename, lineno = code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    text = _error_text(etype, msg, lineno, filename, current)
    return etype, _scrub(cut(text, 4000)[0])


def _run_cell(msg: dict) -> dict:
    from repl import _policy

    t0 = time.perf_counter()
    code = msg["code"] if type(msg.get("code")) is str else ""
    n = msg.get("cell", 0)
    filename = f"<cell {n}>"
    S.cells[filename] = code
    limit_chars = int(S.config["output_limit"])
    out = CappedOutput(limit_chars)
    value = error = etype = limit = None
    real_stdout, real_stderr = sys.stdout, sys.stderr
    _policy.OUTPUT.current = out
    sys.stdout = sys.stderr = out
    _tighten(float(msg.get("timeout") or S.config["timeout_s"]))
    try:
        try:
            if S.unsafe_ns is not None:
                body, expr = _compile_unsafe(code, filename)
            else:
                body, expr = _policy.compile_cell(code, filename, S.protected)
        except _policy.CellSyntaxError as e:
            etype = e.etype
            error = _scrub(cut(_error_text(e.etype, e.msg, e.lineno, filename, filename), 4000)[0])
        else:
            gc.enable()
            ns = S.ns if S.unsafe_ns is None else S.unsafe_ns
            try:
                exec(body, ns)
                if expr is not None:
                    v = eval(expr, ns)
                    if v is not None:
                        value = cut(repr(v), limit_chars)[0]
                    v = None
            except BaseException as e:  # noqa: BLE001 - everything a cell raises is its result
                etype, error = _describe_exception(e, filename)
                if issubclass(type(e), MemoryError):
                    limit = "memory"
                e = None
            finally:
                body = expr = None
                gc.disable()
    except MemoryError:
        gc.disable()
        etype, error, limit, value = "MemoryError", "MemoryError: out of memory", "memory", None
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr
        _policy.OUTPUT.current = _policy._Sink()
        _relax()
    broken = _restore_protected()
    if broken and error is None:
        etype = "PermissionError"
        error = f"PermissionError: cannot rebind '{broken[0]}': it is a sandbox primitive (restored)"
    stdout, dropped = out.getvalue()
    if dropped and limit is None:
        limit = "output"
    return {"op": "done", "nonce": S.nonce, "stdout": stdout, "value": value, "error": error, "etype": etype,
            "limit": limit, "dropped": dropped, "exec_s": time.perf_counter() - t0}


def _compile_unsafe(code: str, filename: str):
    """The test hook (``SandboxConfig.unsafe_real_builtins``): plain Python with the real
    builtins, as if the cell had escaped the policy; only the OS layer stands."""
    import ast

    from repl import _policy

    try:
        tree = ast.parse(code, filename, "exec")
        expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            expr = ast.Expression(body=tree.body.pop().value)
        return (compile(tree, filename, "exec"),
                compile(expr, filename, "eval") if expr is not None else None)
    except SyntaxError as e:
        raise _policy.CellSyntaxError(str(e.msg), e.lineno, type(e).__name__) from None


def _restore_protected() -> list[str]:
    ns = S.ns
    broken = []
    for name, obj in S.protected.items():
        if ns.get(name, _restore_protected) is not obj:
            ns[name] = obj
            broken.append(name)
    for name, obj in S.reserved.items():
        if ns.get(name, _restore_protected) is not obj:
            ns[name] = obj
    return broken


# ---------------------------------------------------------------------------------------------
# Requests from the host (between cells, or while a cell waits for a primitive)


def _max_message() -> int:
    return int(S.config.get("max_message_bytes") or _wire.MAX_FRAME)


def _handle_request(msg: dict) -> dict | bytes:
    op = msg["op"]
    nonce = msg.get("nonce") if type(msg.get("nonce")) is str else ""
    if op == "ping":
        return {"op": "pong", "nonce": nonce, "pid": os.getpid()}
    if op == "names":
        return {"op": "names", "nonce": nonce, "names": _names()}
    name = msg.get("name")
    ns = S.ns
    if type(name) is not str or name.startswith("_") or name not in ns:
        return {"op": "got", "nonce": nonce, "ok": False, "etype": "KeyError", "message": str(name)}
    try:
        value = to_wire(ns[name], budget=[_max_message(), _wire.MAX_NODES])
        return _wire.frame({"op": "got", "nonce": nonce, "ok": True, "value": value}, _max_message())
    except PlainDataError as e:
        return {"op": "got", "nonce": nonce, "ok": False, "etype": "TypeError",
                "message": f"'{name}' is not plain data: {e}"}
    except MemoryError:
        return {"op": "got", "nonce": nonce, "ok": False, "etype": "MemoryError",
                "message": f"'{name}' is too large to send within the sandbox's memory limit"}


def _short(v, width: int = 60) -> str:
    """A preview that runs no sandbox code (no user __repr__)."""
    t = type(v)
    if t in (int, float, complex, bool) or v is None:
        try:
            r = repr(v)
        except ValueError:  # int too large to print
            return f"<int with {v.bit_length()} bits>"
        return r if len(r) <= width else r[: width - 3] + "..."
    if t is str:
        r = repr(v[: width + 2])
        return r if len(v) <= width else r[: width - 3] + "..."
    if t in (list, tuple, set, frozenset, dict):
        items = []
        size = 0
        seq = v.items() if t is dict else v
        for i, item in enumerate(seq):
            if i >= 8 or size > width:
                items.append("...")
                break
            s = f"{_short(item[0], 20)}: {_short(item[1], 20)}" if t is dict else _short(item, 20)
            items.append(s)
            size += len(s) + 2
        open_, close = {list: "[]", tuple: "()", set: "{}", frozenset: "{}", dict: "{}"}[t]
        r = open_ + ", ".join(items) + close
        return r if len(r) <= width + 10 else r[: width + 7] + "..."
    return f"<{t.__name__}>"


def _names() -> dict[str, str]:
    from repl import _policy

    out = {}
    for k, v in S.ns.items():
        if k.startswith("_") or k in S.protected or type(k) is not str:
            continue
        t = type(v)
        try:
            if t is types.FunctionType:
                c = v.__code__
                params = list(c.co_varnames[: c.co_argcount + c.co_kwonlyargcount])
                if c.co_flags & 0x04:
                    params.append("*" + c.co_varnames[c.co_argcount + c.co_kwonlyargcount])
                desc = f"function {k}({', '.join(params)})"
            elif issubclass(t, type):
                desc = f"class {v.__name__}"
            elif t is _policy.SandboxModule:
                desc = f"module {object.__getattribute__(v, '__dict__')['_sandbox_label']}"
            elif t in (list, tuple, set, frozenset, dict, str):
                desc = f"{t.__name__} (len {len(v)}) = {_short(v)}"
            elif t in (int, float, complex, bool) or v is None:
                desc = f"{t.__name__} = {_short(v)}"
            else:
                desc = f"{t.__name__} object"
        except Exception:
            desc = f"{t.__name__} object"
        out[k] = desc
    return out


# ---------------------------------------------------------------------------------------------
# Primitives: proxies that call the host


_EXC_CACHE: dict[str, type] = {}


def _make_exception(etype: object, message: object) -> BaseException:
    import builtins

    etype = etype if type(etype) is str and etype.isidentifier() else "PrimitiveError"
    message = message if type(message) is str else ""
    cls = getattr(builtins, etype, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = _EXC_CACHE.get(etype)
        if cls is None:
            cls = _EXC_CACHE[etype] = type(etype, (RuntimeError,), {"__module__": "host"})
    try:
        return cls(message)
    except Exception:  # an exception class with a different constructor signature
        return RuntimeError(f"{etype}: {message}")


def _make_proxy(name: str):
    def primitive(*args, **kwargs):
        return _call_host(name, args, kwargs)

    primitive.__name__ = primitive.__qualname__ = name
    primitive.__doc__ = f"{name}(...): a primitive provided by the host (arguments and result are plain data)"
    return primitive


def _call_host(name: str, args: tuple, kwargs: dict):
    try:
        budget = [_max_message(), _wire.MAX_NODES]
        call = _wire.frame({"op": "call", "nonce": S.nonce, "name": name,
                            "args": to_wire(list(args), budget=budget),
                            "kwargs": to_wire(kwargs, budget=budget)}, _max_message())
    except PlainDataError as e:
        raise TypeError(f"{name}(): {e}") from None
    except MemoryError:
        raise MemoryError(f"{name}(): the arguments are too large to send within the memory limit") from None
    try:
        send_msg(S.chan, call)
        while True:
            msg, _ = recv_msg(S.chan, max_fds=1)
            op = msg["op"]
            if op == "reply":
                break
            if op in ("get", "names", "ping"):
                for fd in _:
                    os.close(fd)  # no backup needed: the cell's own backup covers this request
                send_msg(S.chan, _handle_request(msg))
                continue
            raise RuntimeError(f"protocol error: unexpected {op!r} during {name}()")
    except (EOFError, OSError, _wire.WireError):
        os._exit(0)
    if msg.get("ok"):
        try:
            return _from_host(msg.get("value"))
        except _wire.WireError as e:
            raise RuntimeError(f"{name}(): bad reply from the host: {e}") from None
    raise _make_exception(msg.get("etype"), msg.get("message")) from None
