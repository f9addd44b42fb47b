"""Wire format between the host (:mod:`repl.sandbox`) and the sandbox process (:mod:`repl._child`).

Stdlib only: the sandbox process imports this module before anything else.

Framing: a 4-byte big-endian length, then that many bytes of ASCII JSON (``ensure_ascii``
keeps lone surrogates intact). A message is a JSON object with an ``"op"`` key.

Plain data: the only values that cross the boundary are ``str``, ``int``, ``float``, ``bool``,
``None``, ``list``, ``dict`` and ``tuple`` (nested). Exact types only: a subclass of ``str`` or
``dict`` defined in the sandbox could run sandbox code while being encoded, so it is refused.
JSON has no tuples and only string keys, hence two tags::

    ("a", 1)        -> {"$t": ["a", 1]}
    {1: "x"}        -> {"$d": [[1, "x"]]}      (any dict whose keys are not all plain strings,
                                                 or which has a key starting with "$")

Decoding is strict: anything else (an unknown tag, a stray key starting with "$") is an error,
so a compromised sandbox cannot smuggle anything but plain data into the host.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import struct
import time

MAX_DEPTH = 200
_HEADER = struct.Struct(">I")
MAX_FRAME = 2**32 - 1
# An int whose decimal form json could not write (sys.int_info.default_max_str_digits is 4300)
# must be refused here, not fail later in dumps() where the caller expects a WireError/OSError.
MAX_INT_BITS = 12_000

_SCALARS = (str, int, float, bool, type(None))


class WireError(Exception):
    """The peer broke the protocol (bad frame, bad JSON, not plain data) or went away."""


class PlainDataError(TypeError):
    """A value is not plain data and cannot cross the sandbox boundary."""


def _type_name(x: object) -> str:
    t = type(x)
    return t.__name__ if isinstance(t.__name__, str) else "object"


def to_wire(x: object, depth: int = 0, budget: list[int] | None = None) -> object:
    """Encode plain data into JSON-able values (see module doc). Raises PlainDataError.

    ``budget`` (a list ``[bytes still allowed]``, optionally ``[bytes, items still allowed]``)
    stops the walk as soon as the JSON would exceed it, before the encoded copy is built: a
    value too large to send must not cost the sender its memory (``big = ['y' * 10**6] * 300``
    under a 256 MB limit), and a value with more than :data:`MAX_NODES` items is refused here,
    by the sender, as the receiver would refuse it (``[[]] * 4_000_000``)."""
    if depth > MAX_DEPTH:
        raise PlainDataError("plain data nested too deeply (or a reference cycle)")
    t = type(x)
    if budget is not None:
        budget[0] -= (len(x) + 3) if t is str else 8
        if budget[0] < 0:
            raise PlainDataError("the value is over the limit of the message size (max_message_mb); send a smaller part")
        if len(budget) > 1:
            budget[1] -= 1
            if (t is list or t is tuple or t is dict) and budget[1] < len(x):  # one per item at least:
                budget[1] = -1  # fail before the walk
            if budget[1] < 0:
                raise PlainDataError(f"the value has more than {MAX_NODES:,} items (lists, dicts, strings, numbers "
                                     "counted together); send a smaller part")
    if t is int and x.bit_length() > MAX_INT_BITS:
        raise PlainDataError(f"int of {x.bit_length()} bits is too large to be plain data")
    if t is str or t is int or t is bool or x is None:
        return x
    if t is float:
        return x
    if t is list:
        return [to_wire(v, depth + 1, budget) for v in x]
    if t is tuple:
        return {"$t": [to_wire(v, depth + 1, budget) for v in x]}
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in x):
            return {to_wire(k, depth + 1, budget): to_wire(v, depth + 1, budget) for k, v in x.items()}
        items = []
        for k, v in x.items():
            if type(k) not in (str, int, float, bool, tuple) and k is not None:
                raise PlainDataError(f"dict key of type {_type_name(k)} is not plain data")
            items.append([to_wire(k, depth + 1, budget), to_wire(v, depth + 1, budget)])
        return {"$d": items}
    raise PlainDataError(
        f"{_type_name(x)} is not plain data (allowed: str, int, float, bool, None, list, dict, tuple)"
    )


# Decoding limits: what the host decodes comes from a process it treats as hostile. Every
# frame is counted (structure_count) before json.loads builds anything: an item costs the host
# ~60-100 bytes however few bytes it took on the wire ('[],' is 3 bytes, a list is 56).
MAX_NODES = 1_000_000
DECODE_S = 5.0
_NODE_SLACK = 1_000  # the message envelope around the value
# Keys with equal hashes make each dict insert linear (int and tuple hashes are not salted):
# 20,000 colliding int keys held the host for seconds per decode. More than this many keys
# sharing a hash with another key is refused.
MAX_HASH_COLLISIONS = 256


class _Budget:
    __slots__ = ("deadline", "nodes", "started")

    def __init__(self, max_nodes: int, max_s: float):
        self.nodes = max_nodes
        self.started = time.monotonic()
        self.deadline = self.started + max_s

    def tick(self, n: int = 1) -> None:
        self.nodes -= n
        if self.nodes < 0:
            raise WireError("plain data with too many items to decode")
        if not self.nodes & 0x3FF and time.monotonic() > self.deadline:
            raise WireError(f"decoding took longer than {self.deadline - self.started:g} s (refused)")


def from_wire(x: object, depth: int = 0, *, max_nodes: int = MAX_NODES, max_s: float = DECODE_S) -> object:
    """Decode what :func:`to_wire` produced, strictly, within ``max_nodes`` items and
    ``max_s`` seconds; dicts whose keys collide in hash are refused. Raises WireError."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _from_wire(x, depth, _Budget(max_nodes, max_s))
    finally:
        if enabled:
            gc.enable()


def _from_wire(x: object, depth: int, b: _Budget) -> object:
    if depth > MAX_DEPTH + 2:
        raise WireError("plain data nested too deeply")
    b.tick()
    t = type(x)
    if t in _SCALARS:
        return x
    if t is list:
        return [_from_wire(v, depth + 1, b) for v in x]
    if t is dict:
        if len(x) == 1:
            ((k, v),) = x.items()
            if k == "$t":
                if type(v) is not list:
                    raise WireError("bad tuple tag")
                return tuple(_from_wire(i, depth + 1, b) for i in v)
            if k == "$d":
                if type(v) is not list:
                    raise WireError("bad dict tag")
                pairs = []
                for pair in v:
                    if type(pair) is not list or len(pair) != 2:
                        raise WireError("bad dict item")
                    pairs.append((_from_wire(pair[0], depth + 1, b), pair[1]))
                try:
                    hashes = {hash(key) for key, _ in pairs}
                except TypeError as e:  # unhashable key (a list inside a tuple...)
                    raise WireError(f"bad dict key: {e}") from None
                if len(pairs) - len(hashes) > MAX_HASH_COLLISIONS:
                    raise WireError(f"dict with {len(pairs) - len(hashes):,} keys whose hashes collide refused "
                                    "(decoding it would take quadratic time)")
                out = {}
                for key, val in pairs:
                    out[key] = _from_wire(val, depth + 1, b)
                return out
        out = {}
        for k, v in x.items():
            if k.startswith("$"):
                raise WireError(f"unexpected tag {k!r}")
            out[k] = _from_wire(v, depth + 1, b)
        return out
    raise WireError(f"unexpected JSON value of type {t.__name__}")


def structure_count(body: bytes) -> int:
    """An upper bound of the values in the JSON text ``body`` (containers, and commas outside
    strings), computed with C-speed bytes methods only, before anything is decoded.

    Fast path: brackets and commas anywhere (strings included) -- nearly every frame. Exact
    path (many commas inside long strings: text): escaped backslashes removed, then the real
    quotes counted (each string is a value: too many strings is refused before splitting),
    escaped quotes removed, and the text outside the strings counted. Exact for valid JSON;
    anything else fails json.loads afterwards."""
    n = body.count(b"[") + body.count(b"{") + body.count(b",")
    if n <= MAX_NODES:
        return n
    b = body.replace(b"\\\\", b"")
    strings = (b.count(b'"') - b.count(b'\\"')) // 2
    if strings > MAX_NODES:
        return strings
    parts = b.replace(b'\\"', b"").split(b'"')
    outside = b"".join(parts[0::2])
    parts = None
    return strings + outside.count(b"[") + outside.count(b"{") + outside.count(b",")


def dumps(msg: dict) -> bytes:
    return json.dumps(msg, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode("ascii")


def loads(data: bytes, max_nodes: int | None = MAX_NODES) -> dict:
    """Decode one frame body: refused before json.loads if it holds more than ``max_nodes``
    values (:func:`structure_count`); the cyclic GC is off while decoding (millions of fresh
    containers would trigger collections that scan all of them, over and over)."""
    if max_nodes is not None and structure_count(data) > max_nodes + _NODE_SLACK:
        raise WireError(f"bad message: more than {max_nodes:,} items (refused before decoding)")
    enabled = gc.isenabled()
    gc.disable()
    try:
        msg = json.loads(data.decode("ascii"))
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise WireError(f"bad message: {e}") from None
    finally:
        if enabled:
            gc.enable()
    if type(msg) is not dict or type(msg.get("op")) is not str:
        raise WireError("bad message: not an object with an 'op'")
    return msg


def frame(msg: dict, limit: int = MAX_FRAME) -> bytes:
    """Encode a message; PlainDataError if its body is over ``limit`` bytes (the sender checks
    what the receiver would refuse, so an oversized frame never desynchronizes the stream)."""
    body = dumps(msg)
    if len(body) > min(limit, MAX_FRAME):
        raise PlainDataError(f"message of {len(body):,} bytes is over the limit of {min(limit, MAX_FRAME):,}")
    return _HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------------------------
# Blocking helpers used by the sandbox process (the host has its own deadline-aware reader).


def send_msg(sock: socket.socket, msg: dict | bytes, fds: list[int] | None = None) -> None:
    """Send a message (a dict, or bytes already made by :func:`frame`)."""
    data = msg if type(msg) is bytes else frame(msg)
    if fds:
        # The descriptors ride on the 4-byte header; the receiver always reads headers with
        # recvmsg, so they arrive with the message they belong to.
        sent = sock.sendmsg([data[:4]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        if sent != 4:  # pragma: no cover - a 4-byte send on a blocking socket is never short
            raise WireError("short send")
        data = data[4:]
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the connection")
        got += k
    return bytes(buf)


def recv_msg(sock: socket.socket, max_fds: int = 0) -> tuple[dict, list[int]]:
    """Read one message; return it with any descriptors passed along with its header."""
    fds: list[int] = []
    header = b""
    while len(header) < 4:
        if max_fds:
            data, anc, _flags, _addr = sock.recvmsg(4 - len(header), socket.CMSG_SPACE(max_fds * 4))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    n = len(payload) // 4
                    fds.extend(struct.unpack(f"{n}i", payload[: n * 4]))
        else:
            data = sock.recv(4 - len(header))
        if not data:
            for fd in fds:
                _close(fd)
            raise EOFError("peer closed the connection")
        header += data
    (n,) = _HEADER.unpack(header)
    body = _recv_exact(sock, n)
    return loads(body, max_nodes=None), fds  # the sandbox's side: what the host sends is trusted


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass



# ---------------------------------------------------------------------------------------------
# Output caps: keep the head and the tail, say how much was dropped in between.


def marker(dropped: int, limit: int) -> str:
    return f"\n[... {dropped:,} characters dropped: output limit is {limit:,}; head and tail kept ...]\n"


def cut(text: str, limit: int) -> tuple[str, int]:
    """Return ``text`` cut to about ``limit`` characters (head + marker + tail) and how many
    characters were dropped (0 when it fits)."""
    if len(text) <= limit:
        return text, 0
    head = limit // 2
    tail = limit - head
    dropped = len(text) - head - tail
    return text[:head] + marker(dropped, limit) + text[len(text) - tail:], dropped


class CappedOutput:
    """A write-only text stream that keeps at most ``limit`` characters (head and tail) in
    memory however much is written to it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head_max = limit // 2
        self.tail_max = limit - self.head_max
        self.head: list[str] = []
        self.head_len = 0
        self.tail: list[str] = []
        self.tail_len = 0
        self.total = 0

    def write(self, text) -> int:
        if type(text) is not str:
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        n = len(text)
        self.total += n
        if self.head_len < self.head_max:
            room = self.head_max - self.head_len
            self.head.append(text[:room])
            self.head_len += min(n, room)
            text = text[room:]
            if not text:
                return n
        self.tail.append(text)
        self.tail_len += len(text)
        if self.tail_len > 2 * self.tail_max + 4096:
            joined = "".join(self.tail)[-self.tail_max:]
            self.tail = [joined]
            self.tail_len = len(joined)
        return n

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def dropped(self) -> int:
        return max(0, self.total - self.limit)

    def getvalue(self) -> tuple[str, int]:
        head = "".join(self.head)
        tail = "".join(self.tail)
        if self.total <= self.limit:
            return head + tail, 0
        tail = tail[-self.tail_max:]
        dropped = self.total - len(head) - len(tail)
        return head + marker(dropped, self.limit) + tail, dropped
