"""Functional tests of the sandboxed REPL (repl/): sessions, limits, primitives, console."""

from __future__ import annotations

import importlib.util
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from repl import CellResult, Sandbox, SandboxConfig
from repl.console import NO_WORKER, is_complete, main as console_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sb():
    box = Sandbox(
        primitives={"double": lambda x: 2 * x, "context": "The quick brown fox.", "nums": [3, 1, 2]},
        config=SandboxConfig(timeout_s=2.0, memory_mb=256, output_limit=1000),
    )
    yield box
    box.close()


def run_ok(box: Sandbox, code: str) -> CellResult:
    res = box.run(textwrap.dedent(code))
    assert res.ok, res.error
    return res


# ---------------------------------------------------------------------------------------------
# notebook semantics


def test_persistence_across_cells(sb):
    run_ok(sb, "a = 40")
    run_ok(sb, """
        def add(x, y=2):
            return x + y
        class Box:
            def __init__(self, v):
                self.v = v
            def __repr__(self):
                return f"Box({self.v!r})"
        def gen():
            yield from range(3)
        g = gen()
        next(g)
    """)
    assert sb.run("add(a)").value == "42"
    assert sb.run("Box(a)").value == "Box(40)"
    assert sb.run("next(g)").value == "1"  # a generator survives across cells


def test_trailing_expression_value(sb):
    assert sb.run("1 + 1").value == "2"
    assert sb.run("'x' * 3").value == "'xxx'"
    assert sb.run("None").value is None
    assert sb.run("y = 5").value is None
    res = sb.run("print('hi')")
    assert res.stdout == "hi\n" and res.value is None
    res = sb.run("z = [1, 2]\nz.append(3)\nz")
    assert res.value == "[1, 2, 3]"
    assert sb.run("if True:\n    7").value is None  # only a top-level trailing expression


def test_stdout_is_captured_per_cell(sb):
    assert sb.run("print('one')\nprint('two', 3, sep='-')").stdout == "one\ntwo-3\n"
    assert sb.run("x = 1").stdout == ""
    assert sb.run("import pprint\npprint.pprint({'k': 1})").stdout == "{'k': 1}\n"


def test_output_is_cut_with_head_and_tail(sb):
    res = sb.run("print('a' * 600 + 'b' * 5000 + 'c' * 600)")
    assert res.ok and res.limit == "output"
    assert res.stdout.startswith("a" * 500)
    assert res.stdout.rstrip("\n").endswith("c" * 499)
    m = re.search(r"\[\.\.\. ([\d,]+) characters dropped", res.stdout)
    assert m and int(m.group(1).replace(",", "")) == res.dropped_chars == 6201 - 1000
    assert len(res.stdout) < 1200
    long_value = sb.run("'v' * 10_000")
    assert long_value.value.startswith("'vvv") and "characters dropped" in long_value.value


def test_common_python_works(sb):
    res = run_ok(sb, """
        import re, json, collections, itertools, functools, statistics, string, textwrap, random
        import datetime, heapq, bisect, difflib, unicodedata, fractions, decimal, operator, math
        words = re.findall(r"\\w+", "the cat and the hat and the bat")
        counts = collections.Counter(words)
        d = {}
        for w in words:
            d[w] = d.get(w, 0)
            d[w] += 1
        pairs = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
        a, *rest = pairs
        first, (k, v) = 0, a
        class Acc:
            def __init__(self):
                self.total = 0
            def add(self, n):
                self.total += n
                return self
        acc = Acc().add(2).add(3)
        @functools.lru_cache(maxsize=None)
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)
        decimal.getcontext().prec = 10
        out = {
            "top": counts.most_common(1)[0],
            "kv": (k, v),
            "json": json.loads(json.dumps({"a": [1, 2]})),
            "mean": statistics.mean([1, 2, 3]),
            "ratio": round(difflib.SequenceMatcher(None, "abcd", "abce").ratio(), 2),
            "fmt": "{:>4}|{name}".format(7, name="x") + f"{3.14159:.2f}",
            "tmpl": string.Template("$x!").substitute(x="hi"),
            "short": textwrap.shorten("hello world again", width=12),
            "fib": fib(30),
            "acc": acc.total,
            "chain": list(itertools.chain([1], [2])),
            "date": datetime.datetime.strptime("2024-05-06", "%Y-%m-%d").strftime("%d/%m"),
            "frac": str(fractions.Fraction(1, 3) + fractions.Fraction(1, 6)),
            "dec": str(decimal.Decimal(1) / decimal.Decimal(7)),
            "nfc": unicodedata.normalize("NFC", "e\\u0301") == "\\u00e9",
            "getter": operator.itemgetter(1)([5, 6]),
            "attr": operator.attrgetter("real")(3),
            "isinstance": isinstance(Acc, type) and type(acc).__name__,
            "heap": heapq.nsmallest(2, [5, 1, 4]),
        }
        grid = [[0, 0], [0, 0]]
        grid[1][0] += 5
        span = [1, 2, 3]
        span[0:2] += [9]
        out["aug"] = (grid, span)
        out
    """)
    value = res.value
    for expected in ("'top': ('the', 3)", "'kv': ('the', 3)", "'mean': 2", "'ratio': 0.75",
                     "'fmt': '   7|x3.14'", "'tmpl': 'hi!'", "'fib': 832040", "'acc': 5",
                     "'date': '06/05'", "'frac': '1/2'", "'dec': '0.1428571429'", "'nfc': True",
                     "'getter': 6", "'attr': 3", "'isinstance': 'Acc'", "'heap': [1, 4]",
                     "'aug': ([[0, 0], [5, 0]], [1, 2, 9, 3])"):
        assert expected in value, (expected, value)


# ---------------------------------------------------------------------------------------------
# errors


def test_error_format_is_pythonic_without_host_paths(sb):
    res = sb.run("a1 = 1\nb1 = 2\nprint(undefined_x)")
    assert not res.ok
    assert res.error == "NameError: name 'undefined_x' is not defined (line 3: print(undefined_x))"
    assert res.error_type == "NameError"
    res = sb.run("import json\njson.loads('{bad')")
    assert res.error_type == "JSONDecodeError"
    assert res.error.startswith("JSONDecodeError: Expecting property name") and "(line 2: " in res.error
    for r in (res, sb.run("1/0"), sb.run("[].pop()")):
        assert "Traceback" not in r.error and "File " not in r.error and str(ROOT) not in r.error


def test_error_inside_function_from_earlier_cell(sb):
    run_ok(sb, "def boom(n):\n    return 10 / n")
    cell = sb.run("boom(0)")
    assert cell.error_type == "ZeroDivisionError"
    assert re.fullmatch(r"ZeroDivisionError: division by zero \(cell \d+, line 2: return 10 / n\)", cell.error)


def test_syntax_errors(sb):
    res = sb.run("x = 1\nif x\n    pass")
    assert res.error_type == "SyntaxError"
    assert res.error.startswith("SyntaxError: ") and "(line 2: if x)" in res.error
    res = sb.run("obj = 1\nobj.__class__")
    assert res.error_type == "SyntaxError" and "not allowed in the sandbox" in res.error and "line 2" in res.error


# ---------------------------------------------------------------------------------------------
# primitives


def test_primitives_callable_and_values(sb):
    assert sb.run("double(21)").value == "42"
    assert sb.run("context.split()[1]").value == "'quick'"
    assert sb.run("sorted(nums)").value == "[1, 2, 3]"


def test_primitives_cannot_be_rebound_or_deleted(sb):
    for code in ("double = 1", "del double", "context = 'x'", "def double():\n    pass",
                 "import json as double", "for double in []:\n    pass",
                 "def f():\n    global context\n    context = 1"):
        res = sb.run(code)
        assert res.error_type == "PermissionError", (code, res)
        assert "sandbox primitive" in res.error
    assert sb.run("double(2)").value == "4"
    assert sb.run("context").value == "'The quick brown fox.'"


def test_values_crossing_the_boundary_are_copied():
    seen = []

    def keep(x):
        seen.append(x)
        x.append("host-side")
        return shared

    shared = {"k": [1, 2], (1, 2): "tuple-key"}
    with Sandbox(primitives={"keep": keep}, config=SandboxConfig(timeout_s=5)) as box:
        res = box.run("mine = [1, (2, 3), {'a': None}]\nback = keep(mine)\nback['k'].append(3)\n(mine, back)")
        assert res.ok, res.error
        assert res.value == "([1, (2, 3), {'a': None}], {'k': [1, 2, 3], (1, 2): 'tuple-key'})"
        assert seen == [[1, (2, 3), {"a": None}, "host-side"]]
        assert shared == {"k": [1, 2], (1, 2): "tuple-key"}
        assert box.get("mine") == [1, (2, 3), {"a": None}]
        res = box.run("keep(object())")
        assert res.error_type == "TypeError" and "not plain data" in res.error


def test_primitive_errors_show_as_python_exceptions():
    class BudgetExceeded(Exception):
        pass

    def fail(kind):
        if kind == "value":
            raise ValueError("bad value")
        raise BudgetExceeded("out of budget")

    def weird():
        return {1, 2}

    with Sandbox(primitives={"fail": fail, "weird": weird}) as box:
        res = box.run("try:\n    fail('value')\nexcept ValueError as e:\n    caught = str(e)\ncaught")
        assert res.value == "'bad value'"
        res = box.run("fail('budget')")
        assert res.error_type == "BudgetExceeded"
        assert res.error == "BudgetExceeded: out of budget (line 1: fail('budget'))"
        res = box.run("weird()")
        assert res.error_type == "TypeError" and "not plain data" in res.error


def test_primitive_time_does_not_count_and_reentrant_get():
    holder = {}

    def slow_final(name):
        time.sleep(1.2)
        return holder["sb"].get(name)  # re-entrant: the cell is waiting on this primitive

    with Sandbox(primitives={"FINAL_VAR": slow_final}, config=SandboxConfig(timeout_s=1.0)) as box:
        holder["sb"] = box
        res = box.run("answer = {'text': 'done', 'n': (1, 2)}\nFINAL_VAR('answer')")
        assert res.ok, res.error
        assert res.value == "{'text': 'done', 'n': (1, 2)}"
        assert res.primitive_s >= 1.2


def test_get_and_names(sb):
    run_ok(sb, "plain = {'a': [1, 2.5, None, True], 3: ('x',)}\ndef fn(a, b):\n    pass\nimport json")
    assert sb.get("plain") == {"a": [1, 2.5, None, True], 3: ("x",)}
    assert sb.get("context") == "The quick brown fox."
    with pytest.raises(KeyError):
        sb.get("never_defined")
    with pytest.raises(TypeError):
        sb.get("fn")
    names = sb.names()
    assert names["fn"] == "function fn(a, b)"
    assert names["json"] == "module json"
    assert names["plain"].startswith("dict (len 2)")
    assert "double" not in names and "context" not in names
    assert not any(n.startswith("_") for n in names)


# ---------------------------------------------------------------------------------------------
# limits


def test_namespace_intact_after_timeout():
    with Sandbox(config=SandboxConfig(timeout_s=1.0)) as box:
        run_ok(box, "state = {'n': 1}\ndef helper():\n    return 'still here'")
        t0 = time.monotonic()
        res = box.run("state['n'] = 2\nnew_name = 1\nwhile True:\n    pass")
        usable = box.run("state['n'], helper()")
        elapsed = time.monotonic() - t0
        assert res.limit == "timeout" and res.error_type == "TimeoutError" and res.restored
        assert usable.value == "(1, 'still here')"
        assert elapsed < 1.0 + 1.0, elapsed
        assert box.run("new_name").error_type == "NameError"
        assert box.stats().limits["timeout"] == 1


def test_namespace_intact_after_memory_kill():
    with Sandbox(config=SandboxConfig(timeout_s=5.0, memory_mb=200)) as box:
        run_ok(box, "keep = list(range(10))")
        res = box.run("keep.append(99)\nblob = 'x' * 10 ** 10")
        assert res.limit == "memory" and res.error_type == "MemoryError" and res.restored
        res = box.run("keep.append(99)\nhog = []\nwhile True:\n    hog.append(bytearray(10 ** 6))")
        assert res.limit == "memory"
        assert box.get("keep") == list(range(10))
        assert box.run("hog").error_type == "NameError"
        assert box.run("len(bytearray(50 * 10 ** 6))").value == "50000000"  # memory was given back


def test_crash_of_the_worker_is_survived():
    with Sandbox(config=SandboxConfig(timeout_s=10.0)) as box:
        run_ok(box, "v = 'kept'")
        killer = threading.Timer(0.5, lambda: os.kill(box._pid, signal.SIGSEGV))
        killer.start()
        res = box.run("import time\ntime.sleep(5)")
        killer.join()
        assert res.error_type == "SandboxCrash" and "SIGSEGV" in res.error and res.restored
        assert box.get("v") == "kept"


def test_keyboard_interrupt_from_a_primitive_restores_the_session():
    def interrupt():
        raise KeyboardInterrupt

    with Sandbox(primitives={"interrupt": interrupt}) as box:
        run_ok(box, "a = 1")
        with pytest.raises(KeyboardInterrupt):
            box.run("a = 2\ninterrupt()")
        assert box.run("a").value == "1"


@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit(), "cancelled", BaseException("odd")],
                         ids=["SystemExit", "GeneratorExit", "CancelledError", "BaseException"])
def test_primitive_base_exception_becomes_the_cells_error(exc):
    """Issue 26, 6: a primitive raising SystemExit, GeneratorExit or asyncio.CancelledError (an async
    client being cancelled) escaped run(); the next cell failed with "done frame without this cell's
    nonce" and a fresh session lost the names. It is now the cell's exception, and the session goes on."""
    import asyncio

    exc = asyncio.CancelledError() if exc == "cancelled" else exc

    def boom():
        raise exc

    with Sandbox(primitives={"boom": boom}, config=SandboxConfig(timeout_s=5.0)) as box:
        run_ok(box, "keep = 26")
        res = box.run("boom()")
        name = type(exc).__name__
        assert res.error_type == name and res.error.startswith(name) and not res.restored, res
        res = box.run("try:\n    boom()\nexcept Exception as e:\n    caught = type(e).__name__\ncaught")
        assert res.value == repr(name), res  # catchable in the cell as an Exception
        assert box.run("keep").value == "26" and box.stats().restarts == 0


def test_keyboard_interrupt_still_stops_the_host_and_the_session_is_consistent():
    """Issue 26, 6 (decided): a KeyboardInterrupt from a primitive, or the user's Ctrl-C on the host,
    still goes on to the caller, so Ctrl-C stops the host; first the cell is ended as at a timeout
    (the worker killed, its backup takes over: the namespace as it was before the cell)."""
    def interrupt():
        raise KeyboardInterrupt

    with Sandbox(primitives={"interrupt": interrupt}) as box:
        run_ok(box, "a = 1")
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt):
                box.run("a = 2\ninterrupt()")
            assert box.run("a").value == "1" and box.names() == {"a": "int = 1"}
        assert box.stats().restarts == 0 and box.stats().restores == 2


def test_time_strptime_works(sb):
    """Issue 26, 6: time.strptime always failed (import of '_strptime' is not allowed)."""
    res = sb.run("import time, datetime\nt = time.strptime('2024-03-05 07:08', '%Y-%m-%d %H:%M')\n"
                 "t.tm_year, t.tm_mday, t.tm_hour, datetime.datetime.strptime('2024-01-02', '%Y-%m-%d').day")
    assert res.value == "(2024, 5, 7, 2)", res
    res = sb.run("import time\ntime.strptime('nope', '%Y')")
    assert res.error_type == "ValueError" and "does not match" in res.error, res


def test_type_views_keep_honest_uses(sb):
    """Issue 26, 4: type() hands out the real class only for classes the cell can name (builtins,
    what allowed modules export, its own classes, exceptions); other classes give a view that
    compares, prints and checks isinstance, but constructs nothing."""
    res = sb.run("import re, json, collections\nclass A:\n    pass\n"
                 "[type(1) is int, type(re.compile('a')) is re.Pattern, type(A()) is A, type({}) == dict,"
                 " isinstance({}.keys(), type({}.keys())), type(json) is type(json), isinstance(json, type(json)),"
                 " type(A())() is not None, type(ValueError('x'))('y').args, repr(type(list[int])),"
                 " collections.OrderedDict[int]() == {}, type(None).__name__]")
    assert res.value == ("[True, True, True, True, True, True, True, True, ('y',), \"<class 'GenericAlias'>\", True, "
                         "'NoneType']"), res


def test_session_reuse_stats_reset_and_close():
    box = Sandbox(config=SandboxConfig(timeout_s=5.0))
    try:
        for i in range(30):
            assert box.run(f"x{i} = {i}\nx{i} * 2").value == str(2 * i)
        st = box.stats()
        assert st.cells == 30 and st.errors == 0
        box.reset()
        assert box.run("x1").error_type == "NameError"
        pgid = box._proc.pid
    finally:
        box.close()
    box.close()  # idempotent
    assert _wait_group_gone(pgid, 5.0)
    with pytest.raises(RuntimeError):
        box.run("1")


def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (init may reap those late)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _live_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc")
def test_worker_limits_during_a_cell():
    with Sandbox(config=SandboxConfig(timeout_s=5.0, memory_mb=300)) as box:
        pid = box._pid
        seen = {}

        def look():
            time.sleep(0.4)
            seen["limits"] = Path(f"/proc/{pid}/limits").read_text()
            seen["status"] = Path(f"/proc/{pid}/status").read_text()
            seen["fds"] = sorted(int(f) for f in os.listdir(f"/proc/{pid}/fd"))

        t = threading.Thread(target=look)
        t.start()
        assert box.run("import time\ntime.sleep(1)").ok
        t.join()
        limits = {line[:26].strip(): line[26:].split() for line in seen["limits"].splitlines()[1:]}
        assert limits["Max processes"][0] == "0"
        assert limits["Max file size"][:2] == ["0", "0"]  # soft and hard
        assert limits["Max core file size"][:2] == ["0", "0"]
        assert limits["Max address space"][:2] == [str(300 * 2**20)] * 2
        assert int(limits["Max open files"][0]) <= len(seen["fds"])  # no new descriptor can open
        assert limits["Max open files"][1] == "64"  # hard: an escape cannot raise it past that
        assert limits["Max cpu time"][0] != "unlimited"
        assert "NoNewPrivs:\t1" in seen["status"]
        active = box.describe()["active"]
        if os.getuid() == 0:
            uid = int(seen["status"].split("Uid:\t")[1].split()[0])
            assert uid >= 1_500_000_000  # root host: cells run as an unprivileged uid of their own
            assert limits["Max processes"][1] == "2"  # hard: worker + backup, this session only
            assert "uid" in active
        if "seccomp" in active:
            assert "Seccomp:\t2" in seen["status"]
        assert len(seen["fds"]) <= 5


def test_sandbox_processes_die_with_the_host(tmp_path):
    script = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from repl import Sandbox\n"
        "sb = Sandbox()\n"
        "print(sb._proc.pid, sb._pid, flush=True)\n"
        "time.sleep(60)\n" % str(ROOT)
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pgid, worker = map(int, host.stdout.readline().split())
        assert worker in _live_members(pgid)
        os.kill(host.pid, signal.SIGKILL)
        host.wait()
        assert _wait_group_gone(pgid, 10.0), "sandbox processes outlived the host"
    finally:
        if host.poll() is None:
            host.kill()


def test_per_cell_overhead_is_small(sb):
    times = []
    for _ in range(100):
        t0 = time.perf_counter()
        sb.run("1")
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(f"median per-cell overhead: {median * 1000:.2f} ms")
    assert median < 0.05


# ---------------------------------------------------------------------------------------------
# console


def test_is_complete():
    assert is_complete("x = 1")
    assert not is_complete("def f():")
    assert not is_complete("def f():\n    return 1")
    assert is_complete("def f():\n    return 1\n")
    assert is_complete("x = (")  is False
    assert is_complete("x = )")  # a syntax error: let the sandbox report it


def test_console_main_with_code(capsys):
    assert console_main(["-c", "worker('hi')", "--no-history"], primitives={"worker": lambda q: q.upper()}) == 0
    assert capsys.readouterr().out == "'HI'\n"
    assert console_main(["-c", "worker('hi')", "--no-history"]) == 1
    assert NO_WORKER in capsys.readouterr().out


class Pty:
    """Drive `python -m repl` through a real terminal."""

    def __init__(self, args, env):
        import fcntl
        import pty
        import termios

        self.master, slave = pty.openpty()
        def controlling_tty():  # a session of its own with the pty as its terminal: ^C -> SIGINT
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)   # a background job's shell ignores ^C: a terminal does not

        self.proc = subprocess.Popen([sys.executable, "-m", "repl", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, cwd=ROOT, close_fds=True,
                                     preexec_fn=controlling_tty)
        os.close(slave)
        self.buf = ""

    def expect(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            clean = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|\r", "", self.buf)
            m = rx.search(clean)
            if m:
                self.buf = ""
                return clean[: m.end()]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timeout waiting for {pattern!r}; got {clean[-2000:]!r}")
            r, _, _ = select.select([self.master], [], [], remaining)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"EOF waiting for {pattern!r}; got {clean[-2000:]!r}")
                self.buf += data.decode(errors="replace")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_console_through_a_pty(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "dumb", "PYTHONPATH": str(ROOT)}
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("alpha beta gamma")
    term = Pty(["--timeout", "2", "--context", str(ctx)], env)
    try:
        term.expect(r">>> ")
        term.send("x = 21\n")
        term.expect(r">>> ")
        term.send("def f(n):\n")
        term.expect(r"\.\.\. ")
        term.send("    return n * 2\n")
        term.expect(r"\.\.\. ")
        term.send("\n")
        term.expect(r">>> ")
        term.send("f(x)\n")
        term.expect(r"\n42\n>>> ")
        term.send("context.split()[-1]\n")
        term.expect(r"'gamma'\n>>> ")
        term.send("worker('hi')\n")
        term.expect(r"no worker configured: run `rlm repl --worker briefed`.*\n>>> ")
        term.send("while True: pass\n")
        term.expect(r"\.\.\. ")  # a compound statement waits for a blank line, as in python
        term.send("\n")
        term.expect(r"TimeoutError: .*\n>>> ")
        term.send("x\n")
        term.expect(r"\n21\n>>> ")
        term.send("import time; time.sleep(30)\n")
        time.sleep(0.3)
        term.send("\x03")
        term.expect(r"KeyboardInterrupt: the cell was stopped.*\n>>> ")
        term.send("ans = [x, 'y']\nFINAL_VAR('ans')\n")
        term.expect(r"\[FINAL_VAR ans\] \[21, 'y'\]")
        term.send("%names\n")
        out = term.expect(r"primitives: .*\n>>> ")
        assert "function f(n)" in out and "int = 21" in out
        term.send("%stats\n")
        out = term.expect(r"limits: timeout 2 s.*\n>>> ")
        assert "timeout 1" in out and "cells " in out
        term.send("%quit\n")
        assert term.proc.wait(timeout=10) == 0
    finally:
        term.close()
    history = tmp_path / ".cache" / "latent-briefing" / "repl_history"
    if importlib.util.find_spec("readline") is not None:
        assert history.exists() and "x = 21" in history.read_text()
