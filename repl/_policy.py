"""What sandboxed code may touch: the RestrictedPython policy, guard hooks, safe builtins and
wrapped modules. Imported only inside the sandbox process (see :mod:`repl._child`).

Invariants the guards keep (each one is tested in tests/test_repl_redteam.py):

1. No attribute whose name starts with ``_`` can be read, written or deleted, statically
   (RestrictedPython rejects ``x.__class__`` at compile time) or dynamically (``getattr``,
   ``hasattr``, ``setattr``, format strings, ``operator.attrgetter``...). Four harmless dunders
   are readable: ``__name__``, ``__qualname__``, ``__doc__``, ``__module__`` (strings only).
2. No frame, code or traceback object can be looked into (``gi_frame``, ``tb_frame``,
   ``f_globals``, ... and every attribute of those types), nor ``AttributeError.obj``.
3. No real module object is ever handed out: ``import`` returns a :class:`SandboxModule` that
   holds copies of a module's public functions, classes and constants only, never the modules
   reachable from it (``statistics.sys``, ``json.decoder``), and whose ``__name__`` does not
   exist (``from json import decoder`` would otherwise fall back to ``sys.modules``); nor is
   the module type's constructor (``type(json)`` is a view, see 8: it built modules with any names).
4. Functions that reach around the guards are replaced: ``str.format``/``format_map``,
   ``string.Formatter`` and ``collections.UserString.format`` (attribute lookups inside format
   strings), ``operator.attrgetter``,
   ``methodcaller``, ``setitem``, ``delitem``, ``functools.update_wrapper``/``wraps`` (custom
   ``assigned``/``updated`` names), ``functools.total_ordering`` (writes to any class),
   ``copy.deepcopy`` (a caller's ``memo`` keeps what it traversed), ``type(name, bases, dict)``.
5. No I/O or introspection builtins: ``open``, ``input``, ``compile``, ``globals``, ``locals``,
   ``vars``, ``breakpoint``, ``exit``... are absent or raise ``PermissionError`` with a message;
   ``exec``/``eval`` calls are compile-time errors; no ``typing``, ``inspect``, ``dataclasses``,
   ``pickle`` (they evaluate strings or rebuild objects outside the guards).
6. Writes go through ``_write_``: classes, modules, functions and descriptors that the sandbox
   did not create are read-only; so are the attributes of instances of classes the sandbox did
   not create (the stdlib uses some as names later: ``cached_property.attrname``), except an
   allow-list (``decimal.Context``, ``textwrap.TextWrapper``) and exceptions; items of any
   container stay writable. ``functools.update_wrapper`` writes only into the sandbox's own
   functions and classes and copies a ``__dict__`` only from them; ``copy`` refuses instances with private
   keys in their own dict.
   ``functools.cached_property`` caches under a public ``attrname`` only, for classes made in the
   sandbox, reading the name once (a subclass's ``attrname = '__deepcopy__'`` planted a private key).
7. ``getattr`` never returns a C-level callable with a private name, nor the original
   ``str.format``/``format_map``, whatever public name it was found under.
8. ``type(x)`` hands out the real class only for classes the cell can already name: a builtin,
   a class an allowed module exports, a class made in the sandbox, an exception. Any other
   class, the interpreter's types (``MethodType``, ``FunctionType``, ``GenericAlias``:
   ``type(list[int])(f, ())()`` called ``f`` and wrote ``__orig_class__`` on what it returned)
   and the policy's own (``SandboxModule``) give a view, which compares, prints and works with
   ``isinstance`` but cannot be called or subclassed. (A subscripted stdlib generic, called,
   still has C code write ``__orig_class__`` on the fresh instance it builds, as in Python:
   ``collections.OrderedDict[int]()``; ``copy`` refuses such an instance.)

This is one layer; the process model in :mod:`repl.sandbox` is the other (a killed or
compromised cell cannot reach the host: it runs in a separate, rlimited process).
"""

from __future__ import annotations

import ast
import builtins as _builtins
import functools as _functools
import gc
import operator as _operator
import sys
import types
import weakref

import _string
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, RestrictingNodeTransformer

# ---------------------------------------------------------------------------------------------
# Attribute policy

READABLE_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__", "__module__"})

BLOCKED_ATTRS = frozenset(INSPECT_ATTRIBUTES) | {
    "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "f_trace", "f_trace_lines",
    "f_trace_opcodes", "f_lasti", "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code",
    "cr_await", "cr_origin", "ag_frame", "ag_code", "ag_await", "tb_frame", "tb_next",
    "co_code", "co_consts", "co_names",
}

OPAQUE_TYPES = (types.FrameType, types.CodeType, types.TracebackType, types.CellType)

# Class-body methods that sandboxed classes may define (RestrictedPython allows only __init__,
# __contains__ and comparisons). Left out on purpose: __del__ (runs at unpredictable times),
# __getattr__/__getattribute__/__setattr__, __new__, __init_subclass__, __set_name__,
# __class_getitem__, __get__/__set__, __reduce__, __format__, __index__.
ALLOWED_DUNDER_DEFS = frozenset({
    "__init__", "__repr__", "__str__", "__len__", "__iter__", "__next__", "__getitem__",
    "__setitem__", "__delitem__", "__contains__", "__eq__", "__ne__", "__lt__", "__le__",
    "__gt__", "__ge__", "__hash__", "__bool__", "__call__", "__enter__", "__exit__",
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
    "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__",
    "__neg__", "__pos__", "__abs__", "__and__", "__or__", "__xor__", "__invert__",
    "__matmul__", "__reversed__",
})


class SandboxAccessError(AttributeError):
    """An attribute the sandbox does not give access to."""


def _deny(name: str) -> SandboxAccessError:
    if name.startswith("_"):
        why = "names starting with '_' are private in the sandbox"
    else:
        why = "it gives access to interpreter internals"
    return SandboxAccessError(f"access to attribute '{name}' is not allowed ({why})")


def check_attr_name(name: object) -> str:
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if (name.startswith("_") and name not in READABLE_DUNDERS) or name in BLOCKED_ATTRS:
        raise _deny(name)
    return name


_MISSING = object()


def guarded_getattr(obj, name, default=_MISSING):
    """``getattr`` for sandboxed code (also the ``_getattr_`` hook behind every ``a.b``)."""
    try:
        check_attr_name(name)
        t = type(obj)
        if issubclass(t, OPAQUE_TYPES):
            raise _deny(name)
        if name == "obj" and issubclass(t, BaseException):
            raise _deny(name)
        if name in ("format", "format_map"):
            if issubclass(t, str):
                return _bound_format(obj, name)
            if issubclass(t, type) and issubclass(obj, str):
                return safe_str_format if name == "format" else safe_str_format_map
    except SandboxAccessError:
        if default is not _MISSING:
            return default
        raise
    if default is _MISSING:
        value = getattr(obj, name)
    else:
        value = getattr(obj, name, default)
    vt = type(value)
    if name in READABLE_DUNDERS and value is not None and vt is not str:
        raise _deny(name)
    if (vt is types.ModuleType or issubclass(vt, OPAQUE_TYPES)
            or (vt in _C_CALLABLE_TYPES and _hidden_c_callable(value))):
        if default is not _MISSING:
            return default
        raise _deny(name)
    return value


# Defence in depth (red-team F1/F1b): a public name must never hand out a C-level callable
# whose own name is private (object.__getattribute__'s slot wrapper, copied into an instance
# dict under a public name) nor the original str.format/format_map (attribute lookups in the
# format string bypass the guards). The sandbox's own way to those is _bound_format above.
_C_CALLABLE_TYPES = frozenset({types.WrapperDescriptorType, types.MethodWrapperType, types.MethodDescriptorType,
                               types.ClassMethodDescriptorType, types.BuiltinFunctionType})
_STR_FORMATS = (str.format, str.format_map)


def _hidden_c_callable(value) -> bool:
    try:
        name = object.__getattribute__(value, "__name__")
    except AttributeError:
        return True
    if type(name) is not str or name.startswith("_"):
        return True
    if name in ("format", "format_map"):
        if value is str.format or value is str.format_map:
            return True
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) or (isinstance(owner, type) and issubclass(owner, str)):
            return True
        objclass = getattr(value, "__objclass__", None)
        if isinstance(objclass, type) and issubclass(objclass, str):
            return True
    return False


def guarded_hasattr(obj, name) -> bool:
    try:
        guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Writes

SANDBOX_CLASSES: "weakref.WeakSet[type]" = weakref.WeakSet()
SANDBOX_GLOBALS: dict = {}  # the namespace; filled by build_namespace()

_READONLY_TYPES = (
    types.ModuleType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType,
    types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType,
    types.ClassMethodDescriptorType, types.GetSetDescriptorType, types.MemberDescriptorType,
    types.MappingProxyType, property, staticmethod, classmethod, _functools.partial,
) + OPAQUE_TYPES


class _ReadOnly:
    __slots__ = ("_what",)

    def __init__(self, what: str):
        object.__setattr__(self, "_what", what)

    def _refuse(self, *args):
        raise TypeError(f"cannot modify {object.__getattribute__(self, '_what')} in the sandbox")

    __setattr__ = __delattr__ = __setitem__ = __delitem__ = _refuse


def _what(obj) -> str:
    t = type(obj)
    if issubclass(t, type):
        return f"class '{getattr(obj, '__name__', '?')}' (it was not defined in the sandbox)"
    if t is SandboxModule:
        return "a module"
    return f"{t.__name__} objects"


def is_writable(obj) -> bool:
    t = type(obj)
    if issubclass(t, type):
        return obj in SANDBOX_CLASSES
    if t is types.FunctionType:
        return obj.__globals__ is SANDBOX_GLOBALS
    if t is SandboxModule or t is _ReadOnly or t is _ItemsOnly or issubclass(t, _READONLY_TYPES):
        return False
    return True


def _attrs_writable(obj) -> bool:
    """Attributes of an instance may be written only if its class was made in the sandbox
    (or derives from one), or is on a short allow-list. Instances of stdlib classes are
    read-only: the stdlib uses some of their attributes as names or callables later
    (``cached_property.attrname`` became ``__getattribute__``: red-team F1)."""
    t = type(obj)
    if t.__flags__ & _HEAPTYPE == 0 and t not in _ATTR_WRITABLE_STDLIB and not issubclass(t, BaseException):
        return not hasattr(obj, "__dict__")  # C types without an instance dict: nothing to plant
    return t in _ATTR_WRITABLE_STDLIB or issubclass(t, BaseException) or any(
        c in SANDBOX_CLASSES for c in t.__mro__)


_HEAPTYPE = 1 << 9
_ATTR_WRITABLE_STDLIB: set = set()  # filled by _build_modules: decimal.Context, textwrap.TextWrapper


class _ItemsOnly:
    """What ``_write_`` returns for a stdlib instance: items can be set (``counter[k] = 1``,
    ``userdict[k] = v``), attributes cannot."""

    __slots__ = ("_o",)

    def __init__(self, obj):
        object.__setattr__(self, "_o", obj)

    def __setitem__(self, key, value):
        object.__getattribute__(self, "_o")[key] = value

    def __delitem__(self, key):
        del object.__getattribute__(self, "_o")[key]

    def _refuse(self, *args):
        t = type(object.__getattribute__(self, "_o"))
        raise TypeError(f"cannot set attributes of {t.__name__} objects in the sandbox (the class was not "
                        "defined in the sandbox)")

    __setattr__ = __delattr__ = _refuse


def guarded_write(obj):
    """The ``_write_`` hook: ``a.b = c`` and ``a[b] = c`` write through what this returns."""
    if is_writable(obj):
        return obj if _attrs_writable(obj) else _ItemsOnly(obj)
    return _ReadOnly(_what(obj))


def guarded_setattr(obj, name, value) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if name.startswith("_") or name in BLOCKED_ATTRS:
        raise _deny(name)
    setattr(guarded_write(obj), name, value)


def guarded_delattr(obj, name) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if name.startswith("_") or name in BLOCKED_ATTRS:
        raise _deny(name)
    delattr(guarded_write(obj), name)


def guarded_getitem(obj, key):
    return obj[key]


def guarded_setitem(obj, key, value) -> None:
    guarded_write(obj)[key] = value


def guarded_delitem(obj, key) -> None:
    del guarded_write(obj)[key]


_AUG_OPS = {
    ast.Add: "+=", ast.Sub: "-=", ast.Mult: "*=", ast.Div: "/=", ast.FloorDiv: "//=",
    ast.Mod: "%=", ast.Pow: "**=", ast.LShift: "<<=", ast.RShift: ">>=", ast.BitOr: "|=",
    ast.BitXor: "^=", ast.BitAnd: "&=", ast.MatMult: "@=",
}

_INPLACE = {
    "+=": _operator.iadd, "-=": _operator.isub, "*=": _operator.imul, "/=": _operator.itruediv,
    "//=": _operator.ifloordiv, "%=": _operator.imod, "**=": _operator.ipow,
    "<<=": _operator.ilshift, ">>=": _operator.irshift, "|=": _operator.ior,
    "^=": _operator.ixor, "&=": _operator.iand, "@=": _operator.imatmul,
}


def guarded_inplacevar(op, x, y):
    fn = _INPLACE.get(op) if type(op) is str else None
    if fn is None:
        raise SyntaxError(f"unsupported augmented assignment {op!r}")
    return fn(x, y)


def guarded_apply(f, *args, **kwargs):
    return f(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Format strings: a stand-alone formatter (no string.Formatter base: cls.mro() would hand out
# the unguarded original) that resolves "{0.attr}" with guarded_getattr.


class Formatter:
    """``string.Formatter`` for the sandbox: attribute lookups in fields go through the guards."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)

    def format(self, format_string, /, *args, **kwargs):
        return self.vformat(format_string, args, kwargs)

    def vformat(self, format_string, args, kwargs):
        used_args: set = set()
        result, _ = self._vformat(format_string, args, kwargs, used_args, 2)
        self.check_unused_args(used_args, args, kwargs)
        return result

    def _vformat(self, format_string, args, kwargs, used_args, recursion_depth, auto_arg_index=0):
        if recursion_depth < 0:
            raise ValueError("Max string recursion exceeded")
        result = []
        for literal_text, field_name, format_spec, conversion in self.parse(format_string):
            if literal_text:
                result.append(literal_text)
            if field_name is None:
                continue
            if field_name == "":
                if auto_arg_index is False:
                    raise ValueError("cannot switch from manual field specification to automatic field numbering")
                field_name = str(auto_arg_index)
                auto_arg_index += 1
            elif field_name.isdigit():
                if auto_arg_index:
                    raise ValueError("cannot switch from manual field specification to automatic field numbering")
                auto_arg_index = False
            obj, arg_used = self.get_field(field_name, args, kwargs)
            used_args.add(arg_used)
            obj = self.convert_field(obj, conversion)
            format_spec, auto_arg_index = self._vformat(
                format_spec, args, kwargs, used_args, recursion_depth - 1, auto_arg_index=auto_arg_index
            )
            result.append(self.format_field(obj, format_spec))
        return "".join(result), auto_arg_index

    def get_value(self, key, args, kwargs):
        if isinstance(key, int):
            return args[key]
        return kwargs[key]

    def check_unused_args(self, used_args, args, kwargs):
        pass

    def format_field(self, value, format_spec):
        return format(value, format_spec)

    def convert_field(self, value, conversion):
        if conversion is None:
            return value
        if conversion == "s":
            return str(value)
        if conversion == "r":
            return repr(value)
        if conversion == "a":
            return ascii(value)
        raise ValueError(f"Unknown conversion specifier {conversion!s}")

    def parse(self, format_string):
        if type(format_string) is not str:
            format_string = str(format_string)
        return _string.formatter_parser(format_string)

    def get_field(self, field_name, args, kwargs):
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, i in rest:
            obj = guarded_getattr(obj, i) if is_attr else obj[i]
        return obj, first


_FORMATTER = Formatter()


def safe_str_format(self, /, *args, **kwargs):
    if not issubclass(type(self), str):
        raise TypeError("format() needs a str")
    return _FORMATTER.vformat(str.__str__(self), args, kwargs)


def safe_str_format_map(self, mapping, /):
    if not issubclass(type(self), str):
        raise TypeError("format_map() needs a str")
    return _FORMATTER.vformat(str.__str__(self), (), mapping)


def _bound_format(s, name):
    if name == "format":
        def format(*args, **kwargs):
            return safe_str_format(s, *args, **kwargs)
        return format

    def format_map(mapping):
        return safe_str_format_map(s, mapping)
    return format_map


# ---------------------------------------------------------------------------------------------
# Replacements inside allowed modules


def safe_attrgetter(attr, *attrs):
    paths = []
    for a in (attr, *attrs):
        if type(a) is not str:
            raise TypeError("attribute name must be a string")
        parts = a.split(".")
        for p in parts:
            check_attr_name(p)
        paths.append(parts)

    def resolve(obj, parts):
        for p in parts:
            obj = guarded_getattr(obj, p)
        return obj

    if len(paths) == 1:
        (only,) = paths

        def attrgetter(obj):
            return resolve(obj, only)
    else:
        def attrgetter(obj):
            return tuple(resolve(obj, p) for p in paths)
    return attrgetter


def safe_methodcaller(name, /, *args, **kwargs):
    check_attr_name(name)

    def methodcaller(obj):
        return guarded_getattr(obj, name)(*args, **kwargs)
    return methodcaller


def _sandbox_made(obj) -> bool:
    t = type(obj)
    if t is types.FunctionType:
        return obj.__globals__ is SANDBOX_GLOBALS
    return issubclass(t, type) and obj in SANDBOX_CLASSES


def safe_update_wrapper(wrapper, wrapped, assigned=_functools.WRAPPER_ASSIGNMENTS,
                        updated=_functools.WRAPPER_UPDATES):
    """``functools.update_wrapper`` for the sandbox. The original copies ``wrapped.__dict__``
    into ``wrapper.__dict__``: with ``wrapped=object`` that planted ``__getattribute__`` (a
    slot wrapper) in an instance dict, with ``wrapped=str`` the original ``str.format``
    (red-team F1/F1b). Here ``wrapper`` must be a function or class made in the sandbox; only
    string values of the assigned names are copied; the updated dicts (``__dict__``) and
    ``__wrapped__`` only when ``wrapped`` is the sandbox's own too, and then only public keys
    (what the cell could set with setattr itself), no foreign descriptors."""
    assigned, updated = tuple(assigned), tuple(updated)
    if any(type(a) is not str or a not in _functools.WRAPPER_ASSIGNMENTS for a in assigned) or any(
        type(u) is not str or u not in _functools.WRAPPER_UPDATES for u in updated
    ):
        raise ValueError("update_wrapper()/wraps(): only the default assigned/updated names are allowed in the sandbox")
    if not is_writable(wrapper) or not _sandbox_made(wrapper):
        raise TypeError("update_wrapper()/wraps(): the wrapper must be a function or class defined in the sandbox")
    own = _sandbox_made(wrapped)
    for a in assigned:
        try:
            v = getattr(wrapped, a)
        except AttributeError:
            continue
        if type(v) is str or (a == "__annotations__" and type(v) is dict and not v):
            try:
                setattr(wrapper, a, v)
            except (AttributeError, TypeError):
                pass
    for u in updated if own else ():
        src = getattr(wrapped, u, None)
        if type(src) is not dict and type(src) is not types.MappingProxyType:
            continue
        for k, v in list(src.items()):
            if type(k) is not str or k.startswith("_") or k in BLOCKED_ATTRS:
                continue
            if hasattr(type(v), "__get__") and not _sandbox_made(v):  # no foreign descriptors
                continue
            setattr(wrapper, k, v)
    if own:
        wrapper.__wrapped__ = wrapped
    return wrapper


def safe_wraps(wrapped, assigned=_functools.WRAPPER_ASSIGNMENTS, updated=_functools.WRAPPER_UPDATES):
    def decorator(wrapper):
        return safe_update_wrapper(wrapper, wrapped, assigned, updated)
    return decorator


# copy / deepcopy. ``copy`` calls whatever ``__reduce_ex__`` a type has, then calls the
# callable it returns: a bound method reduces to ``(getattr, (obj, func.__name__))``, so a
# method whose name the cell chose was a real ``getattr``. The module's own functions are
# replaced in place (stdlib code such as ``UserDict.copy`` and copy's own recursion go
# through the module globals too), and every object is checked before a reducer runs.

_COPY_REFUSED = (
    types.MethodType, types.ModuleType, types.MappingProxyType, types.GeneratorType,
    types.CoroutineType, types.AsyncGeneratorType, types.MethodWrapperType,
) + OPAQUE_TYPES
_REDUCER_NAMES = ("__reduce_ex__", "__reduce__", "__copy__", "__deepcopy__", "__getstate__",
                  "__setstate__", "__getnewargs__", "__getnewargs_ex__")
_REAL_COPY: dict = {}


def check_copyable(x) -> None:
    """Refuse, before any reducer runs, what copy would rebuild through a callable the cell
    could steer: interpreter objects (bound methods, frames, modules...) and classes made in
    the sandbox that define a reducer hook of their own."""
    t = type(x)
    if issubclass(t, _COPY_REFUSED):
        raise TypeError(f"copying {t.__name__} objects is not allowed in the sandbox; copy the data they hold instead")
    for cls in t.__mro__:
        if cls in SANDBOX_CLASSES and any(n in cls.__dict__ for n in _REDUCER_NAMES):
            raise TypeError(f"copying {t.__name__} objects is not allowed in the sandbox (the class defines a reducer)")
    # copy looks __deepcopy__/__reduce_ex__ up on the instance too (red-team F1c: a reducer
    # planted in an instance dict rebuilt objects through the real setattr): an instance
    # whose own dict has a private or non-string key is refused, at every level of a deep copy
    try:
        d = object.__getattribute__(x, "__dict__")
    except (AttributeError, TypeError):
        d = None
    if type(d) is dict and d:
        import enum

        # enum members keep _value_/_name_/__objclass__ in their own dict (the class copies
        # them as themselves); nothing else the sandbox can copy has a private instance key
        member = isinstance(x, enum.Enum) or t is SandboxModule  # a module copies as itself
        for k in d:
            if type(k) is not str or k in _REDUCER_NAMES or (k.startswith("_") and not member):
                raise TypeError(f"copying this {t.__name__} object is not allowed in the sandbox (it has "
                                "private attributes of its own)")


def guarded_copy(x, /):
    """``copy.copy`` for the sandbox (see check_copyable)."""
    check_copyable(x)
    return _REAL_COPY["copy"](x)


def _guarded_deepcopy(x, memo=None, _nil=[]):  # noqa: B006 - copy.deepcopy's own signature
    check_copyable(x)
    return _REAL_COPY["deepcopy"](x, memo, _nil)


def safe_deepcopy(x, /):
    """``copy.deepcopy`` without the ``memo`` argument: the memo a caller passes in keeps the
    originals it met (an instance's ``__dict__``, a bound method's ``__self__``)."""
    return _guarded_deepcopy(x)


def _guarded_register(cls, subclass):
    """``ABCMeta.register`` for the sandbox: only ABCs the sandbox defined may be extended
    (``Mapping.register(Z)`` would change a registry the stdlib and the host code share)."""
    if cls not in SANDBOX_CLASSES:
        raise TypeError(f"cannot register a virtual subclass of {getattr(cls, '__name__', '?')} in the sandbox "
                        "(it was not defined in the sandbox); subclass it instead")
    return _REAL_COPY["register"](cls, subclass)


def _guarded_enum_call(cls, value, names=None, *args, **kwargs):
    """``Enum('X', {...})`` (the functional API) builds a class from a dict, dunders included,
    outside the class-statement checks: refused; ``Color(1)`` (a value lookup) still works."""
    if names is not None or args or kwargs:
        raise TypeError("the Enum functional API is not available in the sandbox; define the enum with a class "
                        "statement")
    return _REAL_COPY["enum_call"](cls, value)


_NOT_FOUND = object()


def _cached_property_get(self, instance, owner=None):
    """``functools.cached_property.__get__`` for the sandbox: the value goes into the instance's
    dict under ``attrname``, a name the stdlib takes from the instance and that the cell can set
    on its own subclass (``attrname = '__deepcopy__'`` planted a private key: issue 26). The name
    is read once (a property cannot answer a public name to a check and a private one to the
    write) and, for a class made in the sandbox, must be a public one."""
    if instance is None:
        return self
    name = self.attrname
    owned = any(c in SANDBOX_CLASSES for c in type(instance).__mro__) or any(
        c in SANDBOX_CLASSES for c in type(self).__mro__)
    if owned and (type(name) is not str or name.startswith("_") or name in BLOCKED_ATTRS):
        raise TypeError("cached_property: the attribute name must be a public name in the sandbox")
    if name is None:
        raise TypeError("Cannot use cached_property instance without calling __set_name__ on it.")
    func = self.func
    try:
        cache = instance.__dict__
    except AttributeError:
        raise TypeError(f"No '__dict__' attribute on {type(instance).__name__!r} instance to cache "
                        f"{name!r} property.") from None
    val = cache.get(name, _NOT_FOUND)
    if val is _NOT_FOUND:
        val = func(instance)
        try:
            cache[name] = val
        except TypeError:
            raise TypeError(f"The '__dict__' attribute on {type(instance).__name__!r} instance does not support "
                            f"item assignment for caching {name!r} property.") from None
    return val


def _userstring_format(self, /, *args, **kwargs):
    return guarded_getattr(self.data, "format")(*args, **kwargs)


def _userstring_format_map(self, mapping):
    return guarded_getattr(self.data, "format_map")(mapping)


def _patch_stdlib() -> None:
    """Stdlib methods that call ``str.format`` on a string the sandbox chose are patched in
    place (this process is the sandbox's own): a replacement in the module's namespace could
    be bypassed through ``cls.mro()``, which hands out the original class."""
    import abc
    import collections
    import copy
    import enum

    collections.UserString.format = _userstring_format
    _functools.cached_property.__get__ = _cached_property_get
    collections.UserString.format_map = _userstring_format_map
    if not _REAL_COPY:
        _REAL_COPY.update(copy=copy.copy, deepcopy=copy.deepcopy, register=abc.ABCMeta.register,
                          enum_call=enum.EnumType.__call__)
    copy.copy = guarded_copy
    copy.deepcopy = _guarded_deepcopy
    # copy's helpers bind deepcopy as a default argument (``deepcopy=deepcopy``): rebind them
    # too, so that every level of a deep copy is checked, not only the top one
    real = _REAL_COPY["deepcopy"]
    for fn in list(vars(copy).values()):
        if type(fn) is types.FunctionType:
            if fn.__defaults__ and any(d is real for d in fn.__defaults__):
                fn.__defaults__ = tuple(_guarded_deepcopy if d is real else d for d in fn.__defaults__)
            if fn.__kwdefaults__ and any(d is real for d in fn.__kwdefaults__.values()):
                fn.__kwdefaults__ = {k: _guarded_deepcopy if d is real else d for k, d in fn.__kwdefaults__.items()}
    abc.ABCMeta.register = _guarded_register
    enum.EnumType.__call__ = _guarded_enum_call


def safe_total_ordering(cls):
    if cls not in SANDBOX_CLASSES:
        raise TypeError("total_ordering() only applies to classes defined in the sandbox")
    return _functools.total_ordering(cls)


# ---------------------------------------------------------------------------------------------
# Modules


class SandboxModule:
    """What ``import x`` gives sandboxed code: a frozen bag of a module's public names."""

    def __init__(self, label: str, names: dict):
        d = object.__getattribute__(self, "__dict__")
        d.update(names)
        d["_sandbox_label"] = label

    def __init_subclass__(cls, **kw):
        raise TypeError("cannot subclass a sandbox module")

    def __getattr__(self, name):
        # Never defines __name__ (see invariant 3 in the module doc); a fresh error, no .obj.
        label = object.__getattribute__(self, "__dict__").get("_sandbox_label", "?")
        raise AttributeError(f"module '{label}' has no attribute '{name}' (or it is not available in the sandbox)")

    def __setattr__(self, name, value):
        raise TypeError("cannot modify a module in the sandbox")

    __delattr__ = __setattr__

    def __repr__(self):
        return f"<module '{object.__getattribute__(self, '__dict__')['_sandbox_label']}' (sandboxed)>"

    def __dir__(self):
        return sorted(k for k in object.__getattribute__(self, "__dict__") if not k.startswith("_"))

    def __reduce_ex__(self, protocol):
        raise TypeError("cannot copy or pickle a module")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


_SAFE_CONSTANT_TYPES = (int, float, complex, str, bytes, bool, type(None))


def _plain_constant(v, depth=0):
    t = type(v)
    if t in _SAFE_CONSTANT_TYPES:
        return True
    if t in (tuple, frozenset) and depth < 3:
        return all(_plain_constant(i, depth + 1) for i in v)
    return False


def _module_names(mod, allow=None, deny=(), replace=None, extra_constant_types=()) -> dict:
    import enum

    replace = replace or {}
    names = allow if allow is not None else [n for n in vars(mod) if not n.startswith("_")]
    out = {}
    for n in names:
        if n in deny or n == "GenericAlias" or n.startswith("_"):
            continue
        if n in replace:
            out[n] = replace[n]
            continue
        v = getattr(mod, n)
        t = type(v)
        if t is types.ModuleType:
            continue
        if issubclass(t, type):
            if issubclass(v, type):  # a metaclass
                continue
            out[n] = v
        elif t in (types.FunctionType, types.BuiltinFunctionType, types.MethodType):
            out[n] = v
        elif _plain_constant(v):
            out[n] = v
        elif t in (set, list) and all(_plain_constant(i) for i in v):
            out[n] = frozenset(v) if t is set else tuple(v)
        elif isinstance(v, enum.Enum) or t in extra_constant_types:
            out[n] = v
        # anything else (capsules, shared mutable registries, ...) stays out
    return out


def _strptime():
    """``time.strptime``: the C function imports ``_strptime`` on every call, through the
    caller's ``__import__`` (the sandbox's, which refuses it); this calls the same function
    directly (``datetime.strptime`` keeps the module it imported once, in _preload)."""
    import _strptime

    real = _strptime._strptime_time

    def strptime(string, format="%a %b %d %H:%M:%S %Y", /):
        return real(string, format)

    strptime.__doc__ = ("strptime(string, format) -> struct_time\n\n"
                        "Parse a string to a time tuple according to a format.")
    return strptime


def _build_modules() -> dict[str, SandboxModule]:
    import base64
    import bisect
    import cmath
    import collections
    import copy
    import csv
    import datetime
    import decimal
    import difflib
    import fractions
    import hashlib
    import heapq
    import html
    import io
    import itertools
    import json
    import math
    import pprint
    import random
    import re
    import statistics
    import string
    import textwrap
    import time
    import unicodedata

    spec = {
        "math": (math, {}),
        "cmath": (cmath, {}),
        "re": (re, {}),
        "json": (json, {}),
        "collections": (collections, {}),
        "itertools": (itertools, {}),
        "functools": (_functools, {
            "deny": {"singledispatch", "singledispatchmethod", "RLock", "get_cache_token", "namedtuple"},
            "replace": {"update_wrapper": safe_update_wrapper, "wraps": safe_wraps,
                        "total_ordering": safe_total_ordering},
        }),
        "operator": (_operator, {
            "replace": {"attrgetter": safe_attrgetter, "methodcaller": safe_methodcaller,
                        "setitem": guarded_setitem, "delitem": guarded_delitem},
        }),
        "statistics": (statistics, {}),
        "string": (string, {"replace": {"Formatter": Formatter}}),
        "textwrap": (textwrap, {}),
        "random": (random, {}),
        "datetime": (datetime, {"deny": {"datetime_CAPI"}, "extra": (datetime.timezone,)}),
        "heapq": (heapq, {}),
        "bisect": (bisect, {}),
        "difflib": (difflib, {}),
        "unicodedata": (unicodedata, {"extra": (type(unicodedata.ucd_3_2_0),)}),
        "fractions": (fractions, {}),
        "decimal": (decimal, {"extra": (decimal.Context,)}),
        "html": (html, {"allow": ["escape", "unescape"]}),
        "base64": (base64, {}),
        "hashlib": (hashlib, {}),
        "pprint": (pprint, {}),
        "csv": (csv, {}),
        "copy": (copy, {"allow": ["copy", "deepcopy", "Error"],
                         "replace": {"copy": guarded_copy, "deepcopy": safe_deepcopy}}),
        "io": (io, {"allow": ["StringIO", "BytesIO"]}),
        "time": (time, {"allow": [
            "time", "time_ns", "perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns",
            "process_time", "process_time_ns", "sleep", "strftime", "strptime", "gmtime",
            "localtime", "mktime", "asctime", "ctime", "struct_time", "timezone", "altzone",
            "daylight", "tzname"], "replace": {"strptime": _strptime()}}),
    }
    _ATTR_WRITABLE_STDLIB.update((decimal.Context, textwrap.TextWrapper))
    out = {}
    for label, (mod, opts) in spec.items():
        names = _module_names(mod, allow=opts.get("allow"), deny=opts.get("deny", ()),
                              replace=opts.get("replace"), extra_constant_types=opts.get("extra", ()))
        out[label] = SandboxModule(label, names)
    return out


def _preload() -> None:
    """Warm what allowed modules load lazily: cells run with no free file descriptors."""
    import datetime
    import hashlib
    import re
    import time

    time.strptime("2024", "%Y")
    datetime.datetime.strptime("2024-01-02", "%Y-%m-%d")
    datetime.datetime.now().astimezone()
    time.localtime()
    for algo in ("md5", "sha1", "sha256", "sha512", "blake2b"):
        hashlib.new(algo, b"x").hexdigest()
    re.compile(r"(?i)\w+\s*\d").findall("warm up 1")
    for enc in ("utf-8", "utf-16", "utf-32", "latin-1", "ascii", "cp1252", "utf-8-sig", "idna",
                "unicode_escape", "raw_unicode_escape", "rot13", "hex", "base64"):
        try:
            import codecs

            codecs.lookup(enc)
        except LookupError:
            pass
    "x".encode("utf-16").decode("utf-16")


MODULES: dict[str, SandboxModule] = {}


def safe_import(name, globals=None, locals=None, fromlist=(), level=0):
    if type(name) is not str or level != 0:
        raise ImportError("relative imports are not available in the sandbox")
    mod = MODULES.get(name)
    if mod is None:
        raise ImportError(
            f"import of '{name}' is not allowed in the sandbox (available: {', '.join(sorted(MODULES))})"
        )
    return mod


# ---------------------------------------------------------------------------------------------
# Builtins


class _TypeMeta(type):
    def __call__(cls, *args):
        if len(args) != 1:
            raise TypeError(
                "type() takes exactly one argument in the sandbox "
                "(to create a class, use a class statement)"
            )
        t = type(args[0])
        if issubclass(t, type):  # the class of a class: never hand out a real metaclass
            return SafeType if (t is type or t is _TypeMeta) else _MetaclassView(t)
        if t in INTERPRETER_TYPES or t in _HIDDEN_TYPES:  # types.MethodType, the module type...
            return _type_view(t)
        if t in EXPORTED_TYPES or t in SANDBOX_CLASSES or issubclass(t, BaseException):
            return t
        return _type_view(t)  # a class the cell cannot name (_json.Scanner...): compared, not called

    def __instancecheck__(cls, obj):
        return issubclass(type(obj), type)

    def __subclasscheck__(cls, sub):
        return issubclass(type(sub), type) and issubclass(sub, type)

    def __repr__(cls):
        return "<class 'type'>"


class SafeType(metaclass=_TypeMeta):
    """``type`` for sandboxed code: ``type(x)`` works, ``type(name, bases, dict)`` does not."""

    def __init_subclass__(cls, **kw):
        raise TypeError("cannot subclass type in the sandbox")


class _MetaclassView:
    __slots__ = ("_r",)

    def __init__(self, meta):
        object.__setattr__(self, "_r", f"<class '{meta.__module__}.{meta.__qualname__}'>")

    def __repr__(self):
        return object.__getattribute__(self, "_r")

    def __init_subclass__(cls, **kw):
        raise TypeError("cannot subclass this")

    def __reduce_ex__(self, protocol):
        raise TypeError("cannot copy or pickle a metaclass")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


# Types whose constructors build interpreter objects (a method bound to any object, a function
# from a code object and a globals dict, a code object...): type(x) gives a _TypeView instead,
# which compares, prints and works with isinstance() but cannot be called or subclassed.
INTERPRETER_TYPES = frozenset({
    types.MethodType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
    types.FrameType, types.TracebackType, types.CellType, types.GeneratorType,
    types.CoroutineType, types.AsyncGeneratorType, types.MethodWrapperType,
    types.WrapperDescriptorType, types.MethodDescriptorType, types.ClassMethodDescriptorType,
    types.GetSetDescriptorType, types.MemberDescriptorType, types.MappingProxyType,
    types.ModuleType, weakref.ref, weakref.ProxyType, weakref.CallableProxyType,
    types.GenericAlias,  # GenericAlias(f, ())() calls f and writes __orig_class__ on what it returns
})
_VIEWS: dict = {}
# The classes whose real class type() hands out, besides the sandbox's own classes and exceptions:
# those the cell can already name (a builtin, or a class an allowed module exports). Any other
# class gives a view (filled by build_namespace): its constructor was never the cell's to call.
EXPORTED_TYPES: set = set()


class _TypeView:
    """What ``type(x)`` returns for an interpreter type: not callable, not subclassable."""

    __slots__ = ("_t",)

    def __init__(self, t: type):
        object.__setattr__(self, "_t", t)

    @property
    def __name__(self) -> str:  # a readable dunder, as on a class
        return object.__getattribute__(self, "_t").__name__

    def __repr__(self) -> str:
        return f"<class '{object.__getattribute__(self, '_t').__name__}'>"

    def __call__(self, *args, **kwargs):
        raise TypeError(f"cannot create {self.__name__} objects in the sandbox")

    def __instancecheck__(self, obj) -> bool:
        return isinstance(obj, object.__getattribute__(self, "_t"))

    def __subclasscheck__(self, sub) -> bool:
        t = object.__getattribute__(self, "_t")
        if type(sub) is _TypeView:
            sub = object.__getattribute__(sub, "_t")
        return isinstance(sub, type) and issubclass(sub, t)

    def __setattr__(self, name, value):
        raise TypeError("cannot modify a type in the sandbox")

    __delattr__ = __setattr__

    def __init_subclass__(cls, **kw):
        raise TypeError("cannot subclass this")

    def __reduce_ex__(self, protocol):
        raise TypeError("cannot copy or pickle a type view")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _type_view(t: type) -> _TypeView:
    v = _VIEWS.get(t)
    if v is None:
        v = _VIEWS[t] = _TypeView(t)
    return v


_FORBIDDEN_BASES = (SandboxModule, SafeType, _MetaclassView, _ReadOnly, _TypeView)
# The policy's own classes: their constructors are not the cell's to call (SandboxModule(label,
# names) built a module with any names, private ones included).
_HIDDEN_TYPES = frozenset({SandboxModule, _TypeView, _MetaclassView, _ReadOnly, _ItemsOnly})


def _class_meta(bases, kwargs):
    for b in bases:
        if not issubclass(type(b), type):
            raise TypeError(f"class bases must be classes, not {type(b).__name__}")
        if issubclass(b, _FORBIDDEN_BASES):
            raise TypeError(f"cannot subclass {b.__name__} in the sandbox")
    if kwargs:
        raise TypeError(f"class keyword arguments ({', '.join(kwargs)}) are not supported in the sandbox")
    meta = type
    for b in bases:
        mb = type(b)
        if issubclass(mb, meta):
            meta = mb
    return meta


def sandbox_metaclass(name, bases, namespace, **kwargs):
    """Every ``class`` statement ends here (RestrictedPython compiles them with
    ``metaclass=__metaclass__``); classes made here are the sandbox's own (writable)."""
    meta = _class_meta(bases, kwargs)
    cls = meta(name, bases, namespace)
    SANDBOX_CLASSES.add(cls)
    return cls


def _sandbox_prepare(name, bases, **kwargs):
    """``__build_class__`` asks the metaclass for the class body's namespace: the real
    metaclass's own (``class E(Enum)`` needs enum's _EnumDict), checked as above."""
    meta = _class_meta(bases, kwargs)
    return meta.__prepare__(name, bases) if meta is not type else {}


sandbox_metaclass.__prepare__ = _sandbox_prepare


def _unavailable(name: str, why: str):
    def f(*args, **kwargs):
        raise PermissionError(f"{name}() is not available in the sandbox: {why}")

    f.__name__ = f.__qualname__ = name
    return f


def safe_dir(*args):
    if not args:
        return sorted(k for k in SANDBOX_GLOBALS if not k.startswith("_"))
    if len(args) != 1:
        raise TypeError("dir expected at most 1 argument")
    return sorted(n for n in dir(args[0]) if not n.startswith("_") and n not in BLOCKED_ATTRS)


HELP_TEXT = """\
Sandboxed Python (RestrictedPython in a separate, resource-limited process).
  - no files, network, processes or interpreter internals; names starting with '_' are private
  - import one of: {modules}
  - primitives: {primitives}
  - help(obj) shows obj's documentation; dir(obj) lists its public attributes"""

PRIMITIVE_NAMES: list[str] = []


def safe_help(*args):
    if not args:
        print(HELP_TEXT.format(modules=", ".join(sorted(MODULES)),
                               primitives=", ".join(PRIMITIVE_NAMES) or "(none)"))
        return
    obj = args[0]
    doc = None if type(obj) is SandboxModule else getattr(obj, "__doc__", None)
    if type(doc) is not str:
        doc = getattr(type(obj), "__doc__", None)
    if type(doc) is not str or not doc.strip():
        print(f"No documentation for {type(obj).__name__} object")
        return
    print(doc.strip()[:4000])


def _build_builtins() -> dict:
    b = {}
    for n in (
        "None False True Ellipsis NotImplemented abs all any ascii bin bool bytearray bytes "
        "callable chr classmethod complex dict divmod enumerate filter float format frozenset "
        "hash hex id int isinstance issubclass iter len list map max min next object oct ord "
        "pow property range repr reversed round set slice sorted staticmethod str sum tuple zip"
    ).split():
        b[n] = getattr(_builtins, n)
    for n, v in vars(_builtins).items():
        if isinstance(v, type) and issubclass(v, BaseException) and not n.startswith("_"):
            b[n] = v
    b.update(
        __build_class__=_builtins.__build_class__,
        __import__=safe_import,
        getattr=guarded_getattr,
        hasattr=guarded_hasattr,
        setattr=guarded_setattr,
        delattr=guarded_delattr,
        type=SafeType,
        dir=safe_dir,
        help=safe_help,
        open=_unavailable("open", "there is no file system access"),
        input=_unavailable("input", "there is no stdin"),
        compile=_unavailable("compile", "code runs only as cells"),
        globals=_unavailable("globals", "use dir() to list your names"),
        locals=_unavailable("locals", "use dir() to list your names"),
        vars=_unavailable("vars", "use dir(obj)"),
        exit=_unavailable("exit", "the session ends from the host (in the console: %quit)"),
        quit=_unavailable("quit", "the session ends from the host (in the console: %quit)"),
        memoryview=_unavailable("memoryview", "not needed for text work"),
        super=_unavailable("super", "call the base class method explicitly"),
    )
    return b


class PrintScope:
    """What ``print`` becomes (RestrictedPython rewrites ``print(...)`` to
    ``_print._call_print(...)`` with ``_print = _print_(_getattr_)`` per scope)."""

    __slots__ = ("_chunks", "_n")

    def __init__(self, _getattr_=None):
        self._chunks = []
        self._n = 0

    def write(self, text):
        OUTPUT.current.write(text)
        if self._n < 100_000:
            self._chunks.append(text)
            self._n += len(text)

    def _call_print(self, *objects, sep=" ", end="\n", file=None, flush=False):
        if file is None:
            print(*objects, sep=sep, end=end, file=self)
        else:
            guarded_getattr(file, "write")
            print(*objects, sep=sep, end=end, file=file, flush=flush)

    def __call__(self):  # the 'printed' name
        return "".join(self._chunks)

    def __init_subclass__(cls, **kw):
        raise TypeError("cannot subclass this")


class _Sink:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


class _OutputHolder:
    current = _Sink()


OUTPUT = _OutputHolder()


# ---------------------------------------------------------------------------------------------
# Compilation


class CellSyntaxError(Exception):
    def __init__(self, msg: str, lineno: int | None, etype: str = "SyntaxError"):
        super().__init__(msg)
        self.msg = msg
        self.lineno = lineno
        self.etype = etype


class SandboxPolicy(RestrictingNodeTransformer):
    def __init__(self):
        super().__init__()
        self.located: list[tuple[int | None, str]] = []

    def error(self, node, info):
        self.located.append((getattr(node, "lineno", None), info))
        super().error(node, info)

    def check_name(self, node, name, allow_magic_methods=False):
        if (
            allow_magic_methods
            and name in ALLOWED_DUNDER_DEFS
            and getattr(node, "col_offset", 0) != 0
        ):
            return
        super().check_name(node, name, allow_magic_methods)

    def visit_ClassDef(self, node):
        for kw in node.keywords:
            if kw.arg != "metaclass":  # RestrictedPython reports metaclass= itself
                what = f"{kw.arg}=..." if kw.arg else "**kwargs"
                self.error(node, f"class keyword arguments ({what}) are not supported; remove them "
                                 "and set the value as a class attribute instead")
        # RestrictedPython rebuilds the class node from parsed text (line 1): keep our lines.
        new = super().visit_ClassDef(node)
        if isinstance(new, ast.ClassDef):
            for kw in new.keywords:
                for sub in ast.walk(kw):
                    if "lineno" in sub._attributes:
                        ast.copy_location(sub, node)
            ast.copy_location(new, node)
        return new

    def visit_AugAssign(self, node):
        """RestrictedPython refuses ``a[k] += v`` and ``o.x += v``; rewrite them through the
        guards instead (each sub-expression evaluated once, as in Python)::

            _tmpA = a; _tmpB = k
            _write_(_tmpA)[_tmpB] = _inplacevar_('+=', _getitem_(_tmpA, _tmpB), v)
            del _tmpA, _tmpB
        """
        target = node.target
        if not isinstance(target, (ast.Subscript, ast.Attribute)):
            return super().visit_AugAssign(node)
        if isinstance(target, ast.Attribute) and (
            (target.attr.startswith("_") and target.attr != "_") or target.attr in BLOCKED_ATTRS
        ):
            self.error(node, f'"{target.attr}" is an invalid attribute name because it starts with "_"'
                       if target.attr.startswith("_") else f'"{target.attr}" is a restricted name')
            return node
        obj = self.visit(target.value)
        value = self.visit(node.value)
        op = ast.Constant(_AUG_OPS[type(node.op)])
        tmp_obj = self.gen_tmp_name()
        stmts = [ast.Assign(targets=[ast.Name(tmp_obj, ast.Store())], value=obj)]
        temps = [tmp_obj]
        if isinstance(target, ast.Subscript):
            tmp_key = self.gen_tmp_name()
            temps.append(tmp_key)
            key = _slice_as_value(self.visit(target.slice))
            stmts.append(ast.Assign(targets=[ast.Name(tmp_key, ast.Store())], value=key))
            current = ast.Call(func=ast.Name("_getitem_", ast.Load()),
                               args=[ast.Name(tmp_obj, ast.Load()), ast.Name(tmp_key, ast.Load())], keywords=[])
            store = ast.Subscript(value=ast.Call(func=ast.Name("_write_", ast.Load()),
                                                 args=[ast.Name(tmp_obj, ast.Load())], keywords=[]),
                                  slice=ast.Name(tmp_key, ast.Load()), ctx=ast.Store())
        else:
            current = ast.Call(func=ast.Name("_getattr_", ast.Load()),
                               args=[ast.Name(tmp_obj, ast.Load()), ast.Constant(target.attr)], keywords=[])
            store = ast.Attribute(value=ast.Call(func=ast.Name("_write_", ast.Load()),
                                                 args=[ast.Name(tmp_obj, ast.Load())], keywords=[]),
                                  attr=target.attr, ctx=ast.Store())
        new_value = ast.Call(func=ast.Name("_inplacevar_", ast.Load()), args=[op, current, value], keywords=[])
        stmts.append(ast.Assign(targets=[store], value=new_value))
        stmts.append(ast.Delete(targets=[ast.Name(t, ast.Del()) for t in temps]))
        for s in stmts:
            for sub in ast.walk(s):
                if "lineno" in sub._attributes and not hasattr(sub, "lineno"):
                    ast.copy_location(sub, node)
            ast.copy_location(s, node)
            ast.fix_missing_locations(s)
        return stmts

    def visit_Attribute(self, node):
        if node.attr in READABLE_DUNDERS and isinstance(node.ctx, ast.Load):
            node = self.node_contents_visit(node)
            new = ast.Call(func=ast.Name("_getattr_", ast.Load()),
                           args=[node.value, ast.Constant(node.attr)], keywords=[])
            ast.copy_location(new, node)
            ast.fix_missing_locations(new)
            return new
        return super().visit_Attribute(node)


def _slice_as_value(node):
    """``a[1:2] += x`` keeps its key in a temporary: a slice must become a ``slice()`` value."""
    if isinstance(node, ast.Slice):
        parts = [p if p is not None else ast.Constant(None) for p in (node.lower, node.upper, node.step)]
        return ast.Call(func=ast.Name("slice", ast.Load()), args=parts, keywords=[])
    if isinstance(node, ast.Tuple):
        return ast.Tuple(elts=[_slice_as_value(e) for e in node.elts], ctx=ast.Load())
    return node


class _BindingChecker(ast.NodeVisitor):
    """Refuse, before running anything, cells that rebind or delete a primitive."""

    def __init__(self, protected):
        self.protected = protected
        self.errors: list[tuple[int | None, str]] = []
        self.scopes = ["module"]

    def _module_level(self) -> bool:
        for s in reversed(self.scopes):
            if s != "comp":
                return s == "module"
        return True

    def _bind(self, name, node, verb="rebind"):
        if name in self.protected and self._module_level():
            self.errors.append((getattr(node, "lineno", None),
                                f"cannot {verb} '{name}': it is a sandbox primitive"))

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Del):
            self._bind(node.id, node, "delete")
        elif isinstance(node.ctx, ast.Store) and self.scopes[-1] != "comp":
            self._bind(node.id, node)

    def visit_NamedExpr(self, node):
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._bind(node.target.id, node)

    def visit_Global(self, node):
        for n in node.names:
            if n in self.protected:
                self.errors.append((node.lineno, f"cannot declare '{n}' global: it is a sandbox primitive"))

    def _scoped(self, kind, nodes):
        self.scopes.append(kind)
        try:
            for n in nodes:
                self.visit(n)
        finally:
            self.scopes.pop()

    def visit_FunctionDef(self, node):
        self._bind(node.name, node)
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        if node.returns:
            self.visit(node.returns)
        self._scoped("function", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arguments(self, node):
        for d in node.defaults + [d for d in node.kw_defaults if d is not None]:
            self.visit(d)

    def visit_Lambda(self, node):
        self.visit(node.args)
        self._scoped("function", [node.body])

    def visit_ClassDef(self, node):
        self._bind(node.name, node)
        for n in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(n)
        self._scoped("class", node.body)

    def _comp(self, node, elts):
        self.visit(node.generators[0].iter)
        self.scopes.append("comp")
        try:
            for i, g in enumerate(node.generators):
                self.visit(g.target)
                if i:
                    self.visit(g.iter)
                for cond in g.ifs:
                    self.visit(cond)
            for e in elts:
                self.visit(e)
        finally:
            self.scopes.pop()

    def visit_ListComp(self, node):
        self._comp(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node):
        self._comp(node, [node.key, node.value])

    def visit_ExceptHandler(self, node):
        if node.type:
            self.visit(node.type)
        if node.name:
            self._bind(node.name, node)
        for n in node.body:
            self.visit(n)

    def visit_Import(self, node):
        for a in node.names:
            self._bind(a.asname or a.name.split(".")[0], node)

    def visit_ImportFrom(self, node):
        for a in node.names:
            self._bind(a.asname or a.name, node)


def compile_cell(source: str, filename: str, protected) -> tuple[types.CodeType, types.CodeType | None]:
    """Compile a cell: (code for all statements but a trailing expression, code for that
    expression or None). Raises CellSyntaxError."""
    try:
        tree = ast.parse(source, filename, "exec")
    except SyntaxError as e:
        raise CellSyntaxError(str(e.msg), e.lineno, type(e).__name__) from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise CellSyntaxError(f"cannot parse the cell: {type(e).__name__}: {e}", None) from None
    try:
        checker = _BindingChecker(protected)
        checker.visit(tree)
        if checker.errors:
            lineno, msg = checker.errors[0]
            raise CellSyntaxError(msg, lineno, "PermissionError")
        policy = SandboxPolicy()
        tree = policy.visit(tree)
        if policy.located:
            lineno, msg = policy.located[0]
            raise CellSyntaxError(f"not allowed in the sandbox: {msg.rstrip('.')}", lineno)
        expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop()
            expr = ast.Expression(body=last.value)
            ast.copy_location(expr, last)
        body_code = compile(tree, filename, "exec", dont_inherit=True)
        expr_code = compile(expr, filename, "eval", dont_inherit=True) if expr is not None else None
    except RecursionError:
        raise CellSyntaxError("the cell is nested too deeply to compile", None) from None
    except SyntaxError as e:  # from compile(): e.g. 'return' outside function
        raise CellSyntaxError(str(e.msg), e.lineno, type(e).__name__) from None
    return body_code, expr_code


# ---------------------------------------------------------------------------------------------
# Namespace

HOOKS = {
    "_getattr_": guarded_getattr,
    "_getitem_": guarded_getitem,
    "_getiter_": iter,
    "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
    "_unpack_sequence_": guarded_unpack_sequence,
    "_write_": guarded_write,
    "_inplacevar_": guarded_inplacevar,
    "_apply_": guarded_apply,
    "_print_": PrintScope,
    "__metaclass__": sandbox_metaclass,
    "__name__": "__main__",
}


def build_namespace(primitives: dict) -> dict:
    """Create the (single, process-wide) sandbox namespace with the given primitives."""
    MODULES.update(_build_modules())
    _preload()
    _patch_stdlib()  # after every import: stdlib modules register ABCs and build enums on import
    ns = SANDBOX_GLOBALS
    ns.clear()
    ns["__builtins__"] = _build_builtins()
    EXPORTED_TYPES.clear()
    for values in [ns["__builtins__"].values()] + [object.__getattribute__(m, "__dict__").values()
                                                   for m in MODULES.values()]:
        EXPORTED_TYPES.update(v for v in values if isinstance(v, type) and v not in _HIDDEN_TYPES)
    ns.update(HOOKS)
    ns.update(primitives)
    PRIMITIVE_NAMES[:] = sorted(primitives)
    # trusted code sees a harmless __main__ (nothing in the sandbox can reach it anyway)
    sys.modules["__main__"] = types.ModuleType("__main__")
    gc.collect()
    return ns


RESERVED = frozenset(HOOKS) | {"__builtins__"}
