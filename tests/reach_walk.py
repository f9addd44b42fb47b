"""Reachability walk over what sandboxed code can touch (run as a script by
tests/test_repl_reachability.py, in a process of its own: building the sandbox namespace
patches the stdlib in place, as the sandbox process does).

From the sandbox's builtins and allowed modules, follow every edge a cell has, through the
same guards a cell goes through, to a bounded depth:

* attributes: every name ``dir()`` lists plus the readable dunders, via ``getattr`` (guarded);
* ``mro()`` of every class; ``type(x)`` (the sandbox's ``type``);
* calls with no arguments (classes, functions, bound methods);
* ``copy.copy`` / ``copy.deepcopy`` (the sandbox's), i.e. whatever a reducer would hand back;
* the items of containers;
* ``functools.update_wrapper(x, obj)`` (the sandbox's) for a fresh instance and a fresh
  function of the sandbox's own as ``x``, and every class/function ``obj``: whatever it copies
  into ``x`` is walked on (red-team F1b: ``update_wrapper(b, str)`` put the real ``str.format``
  in an instance dict under a public name);
* one-argument calls of classes with a sandbox function (``functools.cached_property(f)``...);
* classes subscripted (``list[int]``: a generic alias).

Then fail if any escape primitive was reached: the real ``getattr``/``setattr``/``eval``/
``exec``/``open``/``__import__``/``compile``, any module object (``sys``, ``os``...), a module's
globals dict, frames, code objects, tracebacks, cells, the constructors ``MethodType``,
``FunctionType``, ``CodeType``, ``GenericAlias`` (issue 26: it wrote ``__orig_class__`` on
whatever the function it wraps returned), the module type (it built modules), ``type`` itself,
the original ``str.format``/``format_map``, a C-level callable with a private name
(``object.__getattribute__``'s slot wrapper), or an instance of a stdlib class whose attributes
the sandbox may write (red-team F1: the stdlib used ``cached_property.attrname`` as a name, set
to ``__getattribute__``).

``--plant getattr`` / ``--plant weak-type`` plant a leak on purpose (a real ``getattr`` in an
allowed module; a ``type()`` that returns interpreter types again) to show the walk finds them;
``--plant old-update-wrapper`` / ``--plant stdlib-writes`` put back what branch issue9 had
(the red team's F1b and F1), which the walk also finds.
Prints one JSON line with the findings and the walk's statistics.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from repl import _policy  # after the path tweak

MAX_DEPTH = 6
MAX_NODES = 200_000
LEAVES = (str, int, float, complex, bytes, bool, type(None))  # expanded through type() only
MAX_ITEMS = 30
SKIP_CALLS = {"sleep", "help", "input", "breakpoint", "exit", "quit"}


def main(argv: list[str]) -> int:
    plant = argv[argv.index("--plant") + 1] if "--plant" in argv else None
    ns = _policy.build_namespace({})
    if plant == "getattr":
        object.__getattribute__(_policy.MODULES["json"], "__dict__")["helper"] = builtins.getattr
    elif plant == "weak-type":
        class Everything(set):
            def __contains__(self, item) -> bool:
                return True

        _policy.INTERPRETER_TYPES = _policy._HIDDEN_TYPES = frozenset()
        _policy.EXPORTED_TYPES = Everything()  # and every C type counted as one the cell can name
    elif plant == "old-update-wrapper":  # issue9's: any wrapped, its whole __dict__ copied
        import functools

        def old(wrapper, wrapped, assigned=functools.WRAPPER_ASSIGNMENTS, updated=functools.WRAPPER_UPDATES):
            return functools.update_wrapper(wrapper, wrapped, assigned, updated)
        object.__getattribute__(_policy.MODULES["functools"], "__dict__")["update_wrapper"] = old
        _policy._hidden_c_callable = lambda value: False  # and without guarded_getattr's second check
    elif plant == "stdlib-writes":  # issue9's: stdlib instances writable (cached_property.attrname)
        _policy._attrs_writable = lambda obj: True

    forbidden_ids = {
        id(o): name for name, o in {
            "getattr": builtins.getattr, "setattr": builtins.setattr, "delattr": builtins.delattr,
            "eval": builtins.eval, "exec": builtins.exec, "open": builtins.open, "__import__": builtins.__import__,
            "compile": builtins.compile, "globals": builtins.globals, "locals": builtins.locals,
            "vars": builtins.vars, "breakpoint": builtins.breakpoint, "input": builtins.input,
            "type": type, "MethodType": types.MethodType, "FunctionType": types.FunctionType,
            "CodeType": types.CodeType, "FrameType": types.FrameType, "TracebackType": types.TracebackType,
            "CellType": types.CellType, "ModuleType": types.ModuleType, "super": super,
            "object.__subclasses__": object.__subclasses__, "memoryview": memoryview,
            "str.format": str.format, "str.format_map": str.format_map,
            "object.__getattribute__": object.__getattribute__,
            "GenericAlias": types.GenericAlias, "SandboxModule": _policy.SandboxModule,
        }.items()
    }
    c_callables = (types.WrapperDescriptorType, types.MethodWrapperType, types.MethodDescriptorType,
                   types.ClassMethodDescriptorType, types.BuiltinFunctionType)
    attr_allowed = tuple(getattr(_policy, "_ATTR_WRITABLE_STDLIB", ()))
    update_wrapper = object.__getattribute__(_policy.MODULES["functools"], "__dict__")["update_wrapper"]
    ns_exec = dict(ns)
    exec("class Probe:\n    pass\ndef probe(self=None):\n    return None\n",  # noqa: S102 - the sandbox's own objects
         _policy.SANDBOX_GLOBALS)
    probe_cls, probe_fn = _policy.SANDBOX_GLOBALS["Probe"], _policy.SANDBOX_GLOBALS["probe"]
    del ns_exec
    module_dicts = {id(vars(m)): n for n, m in list(sys.modules.items()) if m is not None and hasattr(m, "__dict__")}
    bad_types = (types.ModuleType, types.FrameType, types.CodeType, types.TracebackType, types.CellType)

    builtins_ns = ns["__builtins__"]
    roots = [(f"builtins.{k}", v) for k, v in builtins_ns.items()]
    roots += [(f"import {k}", m) for k, m in _policy.MODULES.items()]
    seen: set[int] = set()
    keep: list = []  # keep everything alive: ids stay unique during the walk
    found: dict[str, str] = {}
    frontier = []
    for path, obj in roots:
        frontier.append((path, obj))
    depth_reached = 0
    edges = 0
    t0 = time.monotonic()
    sandbox_type = builtins_ns["type"]
    guarded_copy = _policy.guarded_copy
    safe_deepcopy = _policy.safe_deepcopy
    getattr_ = _policy.guarded_getattr

    def check(path: str, obj) -> None:
        name = forbidden_ids.get(id(obj))
        if name is None and type(obj) is dict and id(obj) in module_dicts:
            name = f"globals of module {module_dicts[id(obj)]}"
        if name is None and isinstance(obj, bad_types):
            name = f"{type(obj).__name__} object"
        t = type(obj)
        if name is None and t in c_callables and obj is not builtins.__build_class__:  # a root no cell can name
            n = getattr(obj, "__name__", "")
            if type(n) is str and n.startswith("_"):
                name = f"C callable {n}"
            elif n in ("format", "format_map") and isinstance(getattr(obj, "__self__", None), str):
                name = "str.format (bound)"
        if (name is None and t.__flags__ & (1 << 9) and t not in _policy.SANDBOX_CLASSES
                and not any(c in _policy.SANDBOX_CLASSES for c in t.__mro__) and not isinstance(obj, type)
                and not isinstance(obj, BaseException) and t not in attr_allowed
                and hasattr(obj, "__dict__") and _policy.guarded_write(obj) is obj):
            name = f"attribute-writable stdlib instance ({t.__module__}.{t.__qualname__})"
        if name is not None and name not in found:
            found[name] = path

    real_stdout = sys.stdout
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - zero-argument calls print (help())
    for depth in range(MAX_DEPTH + 1):
        nxt = []
        for path, obj in frontier:
            if id(obj) in seen or len(seen) >= MAX_NODES:
                continue
            seen.add(id(obj))
            keep.append(obj)
            check(path, obj)
            depth_reached = depth
            if depth == MAX_DEPTH:
                continue
            out: list[tuple[str, object]] = []
            if type(obj) in LEAVES:
                nxt.append((f"type({path})", sandbox_type(obj)))
                edges += 1
                continue
            try:
                names = _policy.safe_dir(obj)
            except Exception:  # noqa: BLE001 - a hostile __dir__ is just a dead end here
                names = []
            for n in [*names, *_policy.READABLE_DUNDERS]:
                try:
                    out.append((f"{path}.{n}", getattr_(obj, n)))
                except Exception:  # noqa: BLE001, S112 - refused or failing attributes are not edges
                    continue
            if isinstance(obj, type):
                try:
                    for i, c in enumerate(getattr_(obj, "mro")()):
                        out.append((f"{path}.mro()[{i}]", c))
                except Exception:  # noqa: BLE001, S110 - type.mro needs a class; views have none
                    pass
            for label, fn in (("type", sandbox_type), ("copy.copy", guarded_copy), ("copy.deepcopy", safe_deepcopy)):
                try:
                    out.append((f"{label}({path})", fn(obj)))
                except Exception:  # noqa: BLE001, S112 - refused: not an edge
                    continue
            if callable(obj) and getattr(obj, "__name__", "") not in SKIP_CALLS:
                try:
                    out.append((f"{path}()", obj()))
                except BaseException:  # noqa: BLE001, S110 - SystemExit/KeyboardInterrupt from a call are dead ends too
                    pass
                if isinstance(obj, type) and depth <= 3:
                    try:
                        out.append((f"{path}(probe)", obj(probe_fn)))
                    except BaseException:  # noqa: BLE001, S110 - refused or failing: not an edge
                        pass
            if isinstance(obj, type) and depth <= 3:  # list[int]: a generic alias
                try:
                    out.append((f"{path}[int]", _policy.guarded_getitem(obj, int)))
                except BaseException:  # noqa: BLE001, S110 - not subscriptable: not an edge
                    pass
            if (isinstance(obj, type) or type(obj) is types.FunctionType) and depth <= 4:
                for label, mk in (("instance", probe_cls), ("function", None)):
                    try:
                        target = mk() if mk is not None else _copy_fn(probe_fn)
                        update_wrapper(target, obj)
                    except BaseException:  # noqa: BLE001, S112 - refused: not an edge
                        continue
                    out.append((f"update_wrapper({label}, {path})", target))
            if type(obj) in (list, tuple, set, frozenset):
                out += [(f"{path}[{i}]", v) for i, v in enumerate(list(obj)[:MAX_ITEMS])]
            elif type(obj) is dict:
                out += [(f"{path}[{k!r}]", v) for k, v in list(obj.items())[:MAX_ITEMS]]
            edges += len(out)
            nxt += out
        frontier = nxt
    sys.stdout = real_stdout
    print(json.dumps({"found": found, "visited": len(seen), "edges": edges, "depth": depth_reached,
                      "seconds": round(time.monotonic() - t0, 2), "plant": plant}))
    return 0


def _copy_fn(fn):
    return types.FunctionType(fn.__code__, fn.__globals__, "probe", fn.__defaults__, fn.__closure__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
