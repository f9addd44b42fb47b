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
import sys
import time
from json.encoder import encode_basestring_ascii as _encode_str
from typing import NoReturn

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


def _str_size(x: str) -> int:
    """The exact size of ``x`` in ASCII JSON, escapes and quotes included (json's own C encoder)."""
    return len(_encode_str(x))


def to_wire(x: object, depth: int = 0, budget: list[int] | None = None) -> object:
    """Encode plain data into JSON-able values (see module doc). Raises PlainDataError.

    ``budget`` (a list ``[bytes still allowed]``, optionally ``[bytes, units still allowed]``)
    stops the walk as soon as the JSON would exceed it, before the encoded copy is built: a
    value too large to send must not cost the sender its memory (``big = ['y' * 10**6] * 300``
    under a 256 MB limit), nor its time (``[int('9' * 3612)] * 70000`` is 253 MB of digits,
    not 70,000 times 8 bytes). Sizes are the real ones in ASCII JSON: an int by its decimal
    digits, a string with its escapes. Units are what the receiver counts before it decodes
    (:func:`count_units`: brackets and commas outside strings, the tags included), so a value
    with more than :data:`MAX_NODES` of them is refused here, by the sender, exactly as the
    receiver would refuse it (``[[]] * 4_000_000``)."""
    if depth > MAX_DEPTH:
        raise PlainDataError("plain data nested too deeply (or a reference cycle)")
    t = type(x)
    if t is int and x.bit_length() > MAX_INT_BITS:
        raise PlainDataError(f"int of {x.bit_length()} bits is too large to be plain data")
    if budget is not None:
        if t is str:
            size = _str_size(x)
        elif t is int:
            size = (x.bit_length() * 1233 >> 12) + 2  # decimal digits (an upper bound) and a sign
        elif t is float:
            size = 24
        elif t is list or t is tuple or t is dict:
            size = 2 + len(x) + (8 if t is tuple else 0)
        else:
            size = 5
        budget[0] -= size
        if budget[0] < 0:
            raise PlainDataError("the value is over the limit of the message size (max_message_mb); send a smaller "
                                 "part")
    if t is str or t is int or t is bool or x is None:
        return x
    if t is float:
        return x
    if t is list:
        _charge_units(budget, 1 + max(len(x) - 1, 0))
        return [to_wire(v, depth + 1, budget) for v in x]
    if t is tuple:
        _charge_units(budget, 2 + max(len(x) - 1, 0))
        return {"$t": [to_wire(v, depth + 1, budget) for v in x]}
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in x):
            _charge_units(budget, 1 + max(len(x) - 1, 0))
            return {to_wire(k, depth + 1, budget): to_wire(v, depth + 1, budget) for k, v in x.items()}
        _charge_units(budget, 2 + max(len(x) - 1, 0) + 2 * len(x))  # {"$d":[[k,v],...]}
        items = []
        for k, v in x.items():
            if type(k) not in (str, int, float, bool, tuple) and k is not None:
                raise PlainDataError(f"dict key of type {_type_name(k)} is not plain data")
            items.append([to_wire(k, depth + 1, budget), to_wire(v, depth + 1, budget)])
        return {"$d": items}
    raise PlainDataError(
        f"{_type_name(x)} is not plain data (allowed: str, int, float, bool, None, list, dict, tuple)"
    )


def _charge_units(budget: list[int] | None, units: int) -> None:
    if budget is None or len(budget) < 2:
        return
    budget[1] -= units
    if budget[1] < 0:
        raise PlainDataError(f"the value has more than {MAX_NODES:,} items (lists, dicts, strings, numbers "
                             "counted together); send a smaller part")


# Decoding limits: what the host decodes comes from a process it treats as hostile.
# * Units (count_units): every frame is counted before json.loads builds anything, at C speed
#   and in chunks, stopping at the first chunk past the limit: an item costs the host ~60-100
#   bytes however few bytes it took on the wire ('[],' is 3 bytes, a list is 56).
# * Depth: nesting is counted at the same time (json.loads recurses in C).
# * Time: the scan, json.loads (through its number and object hooks) and from_wire check the
#   caller's deadline as they go, so decoding stops at the deadline (DecodeTimeout), whatever
#   the frame holds; an int's cost grows with the square of its digits and is charged so.
MAX_NODES = 1_000_000
# A rate json.loads sustains on strings and lists on a slow, loaded machine, memory included. On
# the 2-core VM this was measured on it parses 300-900 MB/s, but every byte of a string-heavy frame
# lands in memory the host has not touched yet twice (the decoded text, then the strings), and
# there a first touch can cost 10-30 us a page (the VM's free pages are handed back to the
# hypervisor): a 238-250 MB frame of strings then took 2.3-4.5 s to decode in a fresh process
# (53-110 MB/s), where 200 MB/s, the rate assumed before, had charged it 1.3 s.
PARSE_BYTES_PER_S = 50e6
# What each backslash escape costs json.loads on top of its bytes: a string of two-byte escapes
# (\" or \n in the JSON text, the costliest content without a hook) parses at 126-185 MB/s on
# that machine under load against 300-550 MB/s for plain text; 15 ns an escape puts its estimate
# at about 35 MB/s.
ESCAPE_S = 15e-9
# Units are charged 0.3 us each (what a container or an item costs json.loads at most).
UNIT_S = 3e-7
# Frames up to this size are decoded without the hooks (they cost ~8 us a frame): 1 MB of the
# costliest content (4,300-digit ints) takes ~20 ms to decode here.
_HOOKS_FROM = 1 << 20
DECODE_S = 5.0  # from_wire's time limit when the caller gives no deadline
_NODE_SLACK = 1_000  # the message envelope around the value
# An honest value nests at most MAX_DEPTH containers, each of which is at most two JSON levels
# (a tuple is {"$t": [...]}), inside the message envelope.
MAX_JSON_DEPTH = 2 * MAX_DEPTH + 16
# The longest int the sender writes (MAX_INT_BITS bits) has 3,613 digits: refused beyond.
MAX_INT_CHARS = (MAX_INT_BITS * 1233 >> 12) + 2
# Keys with equal hashes make each dict insert linear in the keys sharing that hash (int and
# tuple hashes are not salted, and tuple keys with long equal prefixes make each comparison
# costly too). An honest dict essentially never holds two distinct keys with one hash: more
# than this many keys sharing a hash with another key, in one dict, is refused.
MAX_HASH_COLLISIONS = 32


class DecodeTimeout(WireError):
    """Decoding did not finish before the caller's deadline (the message is refused)."""


class _Budget:
    __slots__ = ("deadline", "nodes", "started")

    def __init__(self, max_nodes: int, deadline: float):
        self.nodes = max_nodes
        self.started = time.monotonic()
        self.deadline = deadline

    def tick(self, n: int = 1) -> None:
        self.nodes -= n
        if self.nodes < 0:
            raise WireError("plain data with too many items to decode")
        if not self.nodes & 0x3FF and time.monotonic() > self.deadline:
            _late(self.started)


def _late(started: float) -> NoReturn:
    raise DecodeTimeout(f"decoding took longer than the time left ({time.monotonic() - started:.2f} s, refused)")


def from_wire(x: object, depth: int = 0, *, max_nodes: int = MAX_NODES, max_s: float | None = None,
              deadline: float | None = None) -> object:
    """Decode what :func:`to_wire` produced, strictly, within ``max_nodes`` items and before
    ``deadline`` (``time.monotonic()``; or within ``max_s`` seconds; :data:`DECODE_S` if
    neither is given); dicts whose keys collide in hash are refused. Raises WireError
    (DecodeTimeout at the deadline)."""
    if deadline is None:
        deadline = time.monotonic() + (DECODE_S if max_s is None else max_s)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _from_wire(x, depth, _Budget(max_nodes, deadline))
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
                return _tagged_dict(v, depth, b)
        out = {}
        for k, v in x.items():
            if k.startswith("$"):
                raise WireError(f"unexpected tag {k!r}")
            out[k] = _from_wire(v, depth + 1, b)
        return out
    raise WireError(f"unexpected JSON value of type {t.__name__}")


def _tagged_dict(v: object, depth: int, b: _Budget) -> dict:
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
    b.tick(len(pairs) - len(hashes))  # each colliding key costs a comparison per insert: charged, and timed
    out = {}
    for key, val in pairs:
        out[key] = _from_wire(val, depth + 1, b)
    return out


_SCAN_CHUNK = 1 << 22
_KEEP_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{},"')  # deleted by translate
_BRACKETS = bytes.maketrans(b"{}", b"[]")


def count_units(body: bytes | bytearray, max_units: int | None = MAX_NODES, deadline: float | None = None,
                max_depth: int = MAX_JSON_DEPTH) -> int:
    """The units of the JSON text ``body``: its brackets and commas outside strings (an upper
    bound of the values it holds), computed with C-speed bytes methods, in chunks, before
    anything is decoded. WireError past ``max_units`` (at the first chunk that passes it) or
    nested deeper than ``max_depth``; DecodeTimeout past ``deadline``.

    Fast path (nearly every frame): brackets and commas counted anywhere, strings included;
    below both limits, done. Exact path: per chunk (never cut inside a backslash escape),
    escaped backslashes and quotes removed, everything but structure and quotes deleted, the
    text outside the strings counted; the brackets kept there give the depth. Exact for valid
    JSON; anything else fails json.loads afterwards."""
    started = time.monotonic()
    limit = max_units if max_units is not None else 1 << 62
    n = opens = 0
    for i in range(0, len(body), _SCAN_CHUNK):
        if deadline is not None and i and time.monotonic() > deadline:
            _late(started)
        o = body.count(b"[", i, i + _SCAN_CHUNK) + body.count(b"{", i, i + _SCAN_CHUNK)
        opens += o
        n += o + body.count(b",", i, i + _SCAN_CHUNK)
        if n > limit:
            break
    if n <= limit and opens <= max_depth:
        return n
    n = 0
    inside = False
    brackets = []
    start = 0
    while start < len(body):
        if deadline is not None and time.monotonic() > deadline:
            _late(started)
        end = min(start + _SCAN_CHUNK, len(body))
        while end < len(body) and body[end - 1] == 0x5C:  # never cut after a backslash
            end += 1
        chunk = body[start:end]
        start = end
        if b"\\" in chunk:
            chunk = chunk.replace(b"\\\\", b"").replace(b'\\"', b"")
        kept = chunk.translate(None, _KEEP_STRUCTURE)
        parts = kept.split(b'"')
        outside = b"".join(parts[1 if inside else 0 :: 2])
        if (len(parts) - 1) % 2:
            inside = not inside
        n += outside.count(b",") + outside.count(b"[") + outside.count(b"{")
        if n > limit:
            return n
        brackets.append(outside.translate(_BRACKETS, b","))
    if opens > max_depth:
        _check_depth(b"".join(brackets), max_depth, deadline, started)
    return n


def _check_depth(brackets: bytes, max_depth: int, deadline: float | None, started: float) -> None:
    """Innermost pairs removed, one level a pass: a balanced text is empty after as many passes
    as it is deep. Unbalanced text is left to json.loads to refuse."""
    for level in range(max_depth):
        if not brackets:
            return
        if deadline is not None and not level & 15 and time.monotonic() > deadline:
            _late(started)
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return
        brackets = shorter
    if b"[]" in brackets:
        raise WireError(f"bad message: nested more than {max_depth} levels deep (refused before decoding)")


def structure_count(body: bytes) -> int:
    """Units of ``body`` (see :func:`count_units`), without limits."""
    return count_units(body, None, None, 1 << 62)


def dumps(msg: dict) -> bytes:
    return json.dumps(msg, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode("ascii")


def loads(data: bytes | bytearray, max_nodes: int | None = MAX_NODES, deadline: float | None = None) -> dict:
    """Decode one frame body. ``max_nodes`` None: a trusted peer (the sandbox reading the host),
    plain json.loads. Otherwise (the host reading the sandbox): refused before json.loads if it
    holds more than ``max_nodes`` units or nests too deeply (:func:`count_units`), then decoded
    with the cyclic GC off (millions of fresh containers would trigger collections that scan all
    of them, over and over) and with hooks on every number and object that charge its cost and
    check ``deadline`` (DecodeTimeout: json.loads stops there), ints refused past the longest
    the sender writes."""
    kw = {}
    if max_nodes is not None:
        started = time.monotonic()
        if deadline is not None and started > deadline:
            _late(started)
        # json.loads reads strings and lists without a hook to stop it: a frame that could not
        # be decoded in the time left, at a rate this host sustains even under load, is refused
        # before it starts (an honest value that large needs a longer timeout anyway). By its
        # size first, before it is even counted (counting 256 MB takes 0.4-1.3 s); then with its
        # units and escapes.
        check_time(len(data), deadline)
        units = count_units(data, max_nodes + _NODE_SLACK, deadline)
        if units > max_nodes + _NODE_SLACK:
            raise WireError(f"bad message: more than {max_nodes:,} items (refused before decoding)")
        check_time(len(data), deadline, units)
        if deadline is not None and len(data) > _HOOKS_FROM:
            escapes = 0
            for i in range(0, len(data), _SCAN_CHUNK):  # charged as they are counted: stops at the deadline
                escapes += data.count(b"\\", i, i + _SCAN_CHUNK)
                check_time(len(data), deadline, units, escapes)
        # a smaller frame decodes in milliseconds whatever it holds, as long as int() refuses long
        # digit strings itself (sys.set_int_max_str_digits: a host may have lifted the limit)
        if len(data) > _HOOKS_FROM or not 0 < _int_digits_limit() <= 2 * MAX_INT_CHARS:
            kw = _hooks(deadline)
    enabled = gc.isenabled()
    gc.disable()
    try:
        msg = json.loads(data.decode("ascii"), **kw)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise WireError(f"bad message: {e}") from None
    finally:
        if enabled:
            gc.enable()
    if type(msg) is not dict or type(msg.get("op")) is not str:
        raise WireError("bad message: not an object with an 'op'")
    return msg


def decode_s(size: int, units: int = 0, escapes: int = 0) -> float:
    """The most seconds :func:`loads` may take, on this host under load, for a frame of ``size``
    bytes holding ``units`` units (:func:`count_units`) and ``escapes`` backslashes."""
    return size / PARSE_BYTES_PER_S + units * UNIT_S + escapes * ESCAPE_S


def check_time(size: int, deadline: float | None, units: int = 0, escapes: int = 0) -> None:
    """DecodeTimeout if a frame of ``size`` bytes (with ``units`` and ``escapes`` when known)
    could not be decoded before ``deadline``: refused before it is read, counted or decoded."""
    if deadline is None:
        return
    now = time.monotonic()
    if now + decode_s(size, units, escapes) > deadline:
        raise DecodeTimeout(f"a message of {size:,} bytes cannot be decoded in the {max(0.0, deadline - now):.2f} s "
                            "left (refused before decoding)")


def _int_digits_limit() -> int:
    get = getattr(sys, "get_int_max_str_digits", None)
    return get() if get is not None else 0


def _hooks(deadline: float | None) -> dict:
    """json.loads hooks for an untrusted frame: each number and object is charged (a unit is about
    0.1 us; an int's parse grows with the square of its digits) and, every 4,096 units, the clock
    is read against ``deadline``. Between two hook calls json only scans strings and lists
    (bounded by the frame size and the unit count: well under a second for max_message_mb)."""
    started = time.monotonic()
    spent = [0]

    def charge(units: int) -> None:
        spent[0] += units
        if spent[0] >= 4096:
            spent[0] = 0
            if deadline is not None and time.monotonic() > deadline:
                _late(started)

    def parse_int(text: str) -> int:
        if len(text) > MAX_INT_CHARS:
            raise WireError(f"int of {len(text):,} digits refused (at most {MAX_INT_CHARS:,})")
        charge(1 + len(text) * len(text) // 20_000)
        return int(text)

    def parse_float(text: str) -> float:
        charge(1 + len(text) // 1000)
        return float(text)

    def object_hook(obj: dict) -> dict:
        charge(1 + len(obj))
        return obj

    return {"parse_int": parse_int, "parse_float": parse_float, "parse_constant": parse_float,
            "object_hook": object_hook}


def frame_prefix(op: str, nonce: str | None) -> bytes:
    """How the body of a frame of ``op`` begins: ``{"op":"<op>","nonce":"<nonce>"`` (every frame
    that belongs to a cell or a request), or ``{"op":"<op>",`` for the two that belong to none
    (``hello``, ``ready``). :func:`dumps` keeps a dict's order, so a sender that builds its
    message with ``op`` then ``nonce`` first writes exactly this; the host reads it before the
    rest of the frame, and refuses a frame that does not begin so before reading its body."""
    if op.isalnum() and op.isascii() and (nonce is None or (nonce.isalnum() and nonce.isascii())):
        # what dumps writes for plain names (the host's nonces are hex), without its cost
        return (f'{{"op":"{op}","nonce":"{nonce}"' if nonce is not None else f'{{"op":"{op}",').encode()
    head = dumps({"op": op, "nonce": nonce} if nonce is not None else {"op": op})
    return head[:-1] + (b"" if nonce is not None else b",")


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
