"""The OS layer of the sandbox: what still holds when cell code escapes the interpreter policy.

Applied in the sandbox process (see :mod:`repl._child`), never in the host. Each function
returns a short description of what it enabled, or raises :class:`LayerUnavailable` with the
reason; the child reports both to the host, which warns once and lists them in
:meth:`repl.Sandbox.describe`.

* :func:`network_namespace` - the supervisor moves into a fresh network namespace (only a
  down loopback): no network even for a raw socket. Needs root, or unprivileged user
  namespaces (then a user namespace is created first, mapping the current uid).
* :func:`landlock` - filesystem: read-only access beneath the paths the interpreter needs
  (its stdlib, the packages the sandbox imports, shared libraries, zoneinfo, /dev/null,
  /dev/urandom); nothing else can be opened, listed, written, created or removed (``/proc`` of
  the host included). ABI >= 4: no TCP bind/connect; ABI >= 6: no signals to, and no abstract
  Unix sockets of, processes outside the sandbox.
* :func:`seccomp` - a system-call allow-list (libseccomp through ``pyseccomp``): no
  ``execve``, ``socket``/``connect``/``bind``, ``ptrace``, ``mount``, ``unshare``, ``kill``,
  threads (``clone`` with ``CLONE_THREAD``, ``clone3``), ``open`` for writing or creating,
  ``fcntl`` commands that point signals at a process (``F_SETOWN``, ``F_SETOWN_EX``,
  ``F_SETSIG``, ``F_SETLEASE``, ``F_NOTIFY``, ``F_SETFL`` with ``O_ASYNC``: an allow-list of
  commands, the flag checked with a masked comparison), and any call not listed fails with
  EPERM. ``fork`` (``clone`` without ``CLONE_THREAD``/``CLONE_VM`` or namespace flags) stays
  allowed: the copy-on-write backup taken before each cell needs it (see :mod:`repl.sandbox`);
  every forked process inherits all the layers and counts against ``RLIMIT_NPROC``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

__all__ = ["LayerUnavailable", "landlock", "network_namespace", "seccomp"]


class LayerUnavailable(Exception):
    """A layer could not be applied here (kernel, permissions or a missing library)."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _err() -> str:
    e = ctypes.get_errno()
    return f"{errno.errorcode.get(e, e)}: {os.strerror(e)}"


def network_namespace() -> str:
    """Unshare the network namespace (before the worker is forked). Returns a description."""
    if os.getuid() == 0 and _libc.unshare(_CLONE_NEWNET) == 0:
        return "network namespace (no interfaces)"
    why = _err() if os.getuid() == 0 else "not root"
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        raise LayerUnavailable(f"network namespace: {why}; unprivileged user namespace refused ({_err()})")
    try:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
    except OSError as e:
        raise LayerUnavailable(f"network namespace: user namespace mapping failed ({e})") from None
    return "network namespace (no interfaces, inside a user namespace)"


# --- Landlock (raw syscalls: no maintained Python binding covers ABI 4-7) --------------------

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
_FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_ALL_LATEST = (1 << 16) - 1  # ABI >= 5 adds IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2


def landlock_abi() -> int:
    if os.uname().machine != "x86_64":
        return -1
    abi = _libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return int(abi)


def landlock(read_paths: list[str]) -> str:
    """Restrict this process (and its future children) to reading beneath ``read_paths``."""
    abi = landlock_abi()
    if abi < 1:
        raise LayerUnavailable(f"landlock: not supported by this kernel ({_err() if abi < 0 else 'ABI 0'})")
    fs = _FS_ALL_BY_ABI.get(abi, _FS_ALL_LATEST)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("=QQQ", fs, net, scoped) if abi >= 6 else (
        struct.pack("=QQ", fs, net) if abi >= 4 else struct.pack("=Q", fs))
    buf = ctypes.create_string_buffer(attr, len(attr))
    rfd = _libc.syscall(_SYS_CREATE_RULESET, buf, len(attr), 0)
    if rfd < 0:
        raise LayerUnavailable(f"landlock: cannot create a ruleset ({_err()})")
    allowed = []
    try:
        for path in read_paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                access = _FS_READ_FILE | (_FS_READ_DIR if os.path.isdir(path) else 0)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
                if _libc.syscall(_SYS_ADD_RULE, rfd, _RULE_PATH_BENEATH, rule, 0) == 0:
                    allowed.append(path)
            finally:
                os.close(fd)
        if _libc.syscall(_SYS_RESTRICT_SELF, rfd, 0) != 0:
            raise LayerUnavailable(f"landlock: restrict_self refused ({_err()})")
    finally:
        os.close(rfd)
    extra = []
    if net:
        extra.append("no TCP bind/connect")
    if scoped:
        extra.append("no signals or abstract sockets outside the sandbox")
    return f"landlock ABI {abi} (read-only beneath {len(allowed)} paths; {', '.join(extra) or 'filesystem only'})"


# --- seccomp ------------------------------------------------------------------------------

# Everything the worker and its backups do after lock-down (CPython's runtime, the framed
# socket protocol, rlimits, fork for the backup, reaping). Anything else: EPERM.
_ALLOWED = [
    "read", "readv", "pread64", "write", "writev", "sendmsg", "recvmsg", "sendto", "recvfrom", "shutdown",
    "getsockopt", "setsockopt", "getsockname", "getpeername", "close", "close_range", "fstat", "newfstatat",
    "stat", "lstat", "statx", "fstatfs", "statfs", "lseek", "getdents64", "readlink", "readlinkat", "access",
    "faccessat", "faccessat2", "getcwd", "dup", "dup2", "dup3", "pipe", "pipe2", "mmap", "munmap",
    "mremap", "mprotect", "brk", "madvise", "mincore", "msync", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "sigaltstack", "restart_syscall", "getpid", "gettid", "getppid", "getpgid", "getpgrp",
    "getsid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "getrlimit",
    "prlimit64", "setrlimit", "getrusage", "times", "sysinfo", "uname", "getcpu", "getrandom",
    "sched_getaffinity", "sched_yield", "sched_getparam", "sched_getscheduler", "clock_gettime",
    "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "select", "pselect6", "poll",
    "ppoll", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "futex", "set_robust_list",
    "get_robust_list", "set_tid_address", "rseq", "arch_prctl", "wait4", "waitid", "exit", "exit_group",
]
_O_WRITE_FLAGS = (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                  | (getattr(os, "O_TMPFILE", 0) & ~os.O_DIRECTORY))  # O_TMPFILE includes O_DIRECTORY
_CLONE_FORBIDDEN = (0x00000100 | 0x00010000 | _CLONE_NEWNS | _CLONE_NEWUSER | _CLONE_NEWNET  # VM, THREAD
                    | 0x04000000 | 0x08000000 | 0x20000000 | 0x02000000 | 0x00000080)  # UTS IPC PID CGROUP...
_PR_SET_PDEATHSIG = 1
_IOCTLS = (0x5401, 0x541B, 0x5421, 0x5450, 0x5451)  # TCGETS FIONREAD FIONBIO FIONCLEX FIOCLEX
# fcntl commands, an allow-list (issue 26): not F_SETOWN (8), F_SETSIG (10), F_SETOWN_EX (15), which
# direct SIGIO/SIGURG, or any signal, at another process; not F_SETLEASE (1024) or F_NOTIFY (1026),
# which also deliver signals (and a lease blocks other processes opening the file); F_SETFL (4)
# only without O_ASYNC (which turns that signalling on).
_F_DUPFD, _F_GETFD, _F_SETFD, _F_GETFL, _F_SETFL, _F_GETLK, _F_SETLK, _F_SETLKW = range(8)
_FCNTLS = (_F_DUPFD, _F_GETFD, _F_SETFD, _F_GETFL, _F_GETLK, _F_SETLK, _F_SETLKW,
           9, 11, 16,  # F_GETOWN F_GETSIG F_GETOWN_EX
           36, 37, 38,  # F_OFD_GETLK F_OFD_SETLK F_OFD_SETLKW
           1025, 1030, 1032, 1034)  # F_GETLEASE F_DUPFD_CLOEXEC F_GETPIPE_SZ F_GET_SEALS
_O_ASYNC = getattr(os, "O_ASYNC", 0o20000)


def preload() -> None:
    """Import what :func:`seccomp` needs while the files can still be read."""
    try:
        import ctypes.util  # noqa: F401 - pyseccomp imports it when loaded

        import pyseccomp  # noqa: F401
    except ImportError:
        pass


def seccomp() -> str:
    """Install the allow-list on this process (inherited by every fork)."""
    try:
        import pyseccomp as sc
    except ImportError as e:
        raise LayerUnavailable(f"seccomp: pyseccomp is not installed ({e})") from None
    try:
        f = sc.SyscallFilter(defaction=sc.ERRNO(errno.EPERM))
        n = 0
        for name in _ALLOWED:
            try:
                f.add_rule(sc.ALLOW, name)
                n += 1
            except (OSError, ValueError, RuntimeError):
                continue  # not a syscall on this architecture
        for name in ("openat", "open"):
            arg = 2 if name == "openat" else 1
            f.add_rule(sc.ALLOW, name, sc.Arg(arg, sc.MASKED_EQ, _O_WRITE_FLAGS, 0))
        for request in _IOCTLS:  # isatty() and friends; not TIOCSTI (typing into a terminal)
            f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.EQ, request))
        for cmd in _FCNTLS:
            f.add_rule(sc.ALLOW, "fcntl", sc.Arg(1, sc.EQ, cmd))
        f.add_rule(sc.ALLOW, "fcntl", sc.Arg(1, sc.EQ, _F_SETFL), sc.Arg(2, sc.MASKED_EQ, _O_ASYNC, 0))
        f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_FORBIDDEN, 0))
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # libc falls back to clone, checked above
        f.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, _PR_SET_PDEATHSIG))
        f.load()
    except OSError as e:
        raise LayerUnavailable(f"seccomp: the filter could not be loaded ({e})") from None
    return (f"seccomp allow-list ({n + 5} calls; no execve, socket, connect, bind, ptrace, mount, kill, "
            "threads, open for writing, fcntl signal ownership or O_ASYNC)")
