"""Red-team suite for the sandbox: every escape attempt must fail cleanly (an error result, no
access obtained) and leave the session usable with its namespace intact.

One session serves the whole table (fast); placeholders SECRET_PATH / MARKER_PATH are replaced
by a file holding a secret and a path that must never come to exist.
"""

from __future__ import annotations

import os
import time

import pytest

from repl import Sandbox, SandboxConfig, SandboxError

SECRET = "s3cr3t-7f1c2b"

ESCAPES: list[tuple[str, str]] = [
    # --- dunder walks and dynamic attribute names
    ("dunder_subclasses", "().__class__.__bases__[0].__subclasses__()"),
    ("getattr_built_name", "getattr((), '__cla' + 'ss__')"),
    ("getattr_chain_subclasses",
     "u = '_' * 2\nc = getattr((), u + 'class' + u)\ngetattr(getattr(c, u + 'base' + u), u + 'subclasses' + u)()"),
    ("getattr_default_leak", "x = getattr(1, '__class__', None)\nx.mro"),
    ("hasattr_then_getattr", "assert hasattr(1, '__class__')"),
    ("getattr_str_subclass_name",
     "class S(str):\n    def startswith(self, p):\n        return False\ngetattr(1, S('__class__'))"),
    ("class_dict", "class A:\n    pass\ngetattr(A, '__dict__')"),
    ("object_subclasses_dynamic", "getattr(object, '__subclasses__')()"),
    ("reduce_ex", "getattr(1, '__reduce_ex__')(2)"),
    ("primitive_globals", "getattr(worker, '__glo' + 'bals__')['os']"),
    ("primitive_closure", "getattr(worker, '__closure__')"),
    ("print_self", "p = print\ngetattr(p, '__self__')"),
    ("random_bound_self", "import random\ngetattr(random.random, '__self__')"),
    ("unicode_normalized_dunder", "(1).\uff3f\uff3fclass\uff3f\uff3f"),
    ("unicode_normalized_exec", "\uff45\uff58\uff45\uff43('1')"),
    ("function_type_from_code", "F = type(worker)\nF(getattr(worker, '__code__'), {})"),
    ("async_coroutine_frame", "async def c():\n    pass\nc().cr_frame"),
    # --- namespaces and builtins
    ("vars", "vars()"),
    ("globals", "globals()['__builtins__']"),
    ("locals", "locals()"),
    ("builtins_name", "__builtins__['open']"),
    ("dir_builtins", "[n for n in dir() if 'builtins' in n][0]"),
    ("open_read", "open('SECRET_PATH').read()"),
    ("open_write", "open('MARKER_PATH', 'w').write('x')"),
    ("print_to_file", "print('x', file=open('MARKER_PATH', 'w'))"),
    ("exec", "exec('import os')"),
    ("eval", "eval('1 + 1')"),
    ("exec_as_value", "e = exec\ne('1')"),
    ("compile", "compile('1', 'x', 'eval')"),
    ("breakpoint", "breakpoint()"),
    ("input", "input('?')"),
    ("help_globals", "getattr(help, '__globals__')['__builtins__']"),
    ("exit", "exit()"),
    ("super", "class A:\n    def f(self):\n        return super()\nA().f()"),
    # --- format strings
    ("format_attr", "'{0.__class__.__mro__}'.format(1)"),
    ("format_map_attr", "'{x.__class__}'.format_map({'x': 1})"),
    ("str_format_unbound", "str.format('{0.__globals__}', lambda: 0)"),
    ("format_via_getattr", "getattr('{0.__class__}', 'format')(1).index('int')\n1/0"),
    ("string_formatter", "import string\nstring.Formatter().format('{0.__class__.__base__}', 0)"),
    ("string_formatter_mro",
     "import string\nF = string.Formatter.mro()[-2]\nF.get_field(string.Formatter(), '0.__class__', (1,), {})"),
    ("fstring_dunder", "f'{(1).__class__}'"),
    ("userstring_format",
     "import collections\ncollections.UserString('{0.__globals__}').format(collections.namedtuple)"),
    ("userstring_format_map", "import collections\ncollections.UserString('{x.__class__}').format_map({'x': 1})"),
    ("userstring_format_mro",
     "import collections\nU = collections.UserString\nU.mro()[0].format(U('{0.__class__.__mro__}'), 1)"),
    # --- frames, tracebacks, exceptions
    ("gen_frame_static", "def g():\n    yield 1\nx = g()\nx.gi_frame.f_globals"),
    ("gen_frame_dynamic", "def g():\n    yield 1\nx = g()\ngetattr(x, 'gi_' + 'frame')"),
    ("gen_code_dynamic", "def g():\n    yield 1\ngetattr(g(), 'gi_code')"),
    ("traceback_attr",
     "try:\n    1/0\nexcept Exception as e:\n    tb = getattr(e, '__trace' + 'back__')\ntb"),
    ("exit_traceback_frame",
     "class C:\n    def __enter__(self):\n        return self\n"
     "    def __exit__(self, t, v, tb):\n        self.f = getattr(tb, 'tb_' + 'frame')\n        return True\n"
     "with C() as c:\n    1/0\nc.f"),
    ("exit_traceback_any_attr",
     "class C:\n    def __enter__(self):\n        return self\n"
     "    def __exit__(self, t, v, tb):\n        self.n = getattr(tb, 'tb_lineno')\n        return True\n"
     "with C() as c:\n    1/0\nc.n"),
    ("attributeerror_obj",
     "import json\ntry:\n    json.nope\nexcept AttributeError as e:\n    o = getattr(e, 'obj')\no"),
    ("try_star", "try:\n    raise ExceptionGroup('x', [ValueError()])\nexcept* ValueError:\n    pass"),
    # --- classes, metaclasses, decorators, parameters
    ("init_subclass", "class A:\n    def __init_subclass__(cls):\n        pass"),
    ("getattr_dunder_def", "class A:\n    def __getattr__(self, n):\n        return n"),
    ("metaclass_keyword", "class M:\n    pass\nclass A(metaclass=M):\n    pass"),
    ("subclass_type", "class M(type):\n    pass"),
    ("type_three_args", "type('X', (), {'__getattribute__': lambda s, n: 1})"),
    ("type_of_type", "T = type(type(1))\nT('X', (object,), {})"),
    ("subclass_sandbox_module", "import json\nclass X(type(json)):\n    pass"),
    ("decorator_globals",
     "def deco(f):\n    return getattr(f, '__glo' + 'bals__')\n@deco\ndef g():\n    pass\ng['__builtins__']"),
    ("lambda_default_guard_name", "f = lambda _getattr_=getattr: _getattr_((), '__class__')"),
    ("lambda_default_getattr", "f = lambda g=getattr: g((), '__class__')\nf()"),
    ("posonly_guard_name", "def f(_getattr_, /):\n    return _getattr_\nf(1)"),
    ("kwargs_guard_name",
     "def f(**kw):\n    return getattr(1, '__class__')\nf(_getattr_=lambda o, n: 1, getattr=lambda o, n: 1)"),
    ("setattr_code", "def f():\n    pass\nsetattr(f, '__code__', None)"),
    ("setattr_builtin_class", "setattr(str, 'format', 1)"),
    ("write_module", "import json\njson.loads = 1"),
    ("class_attr_on_builtin", "int.x = 1"),
    # --- operator / functools / copy helpers
    ("operator_attrgetter", "import operator\noperator.attrgetter('__class__.__mro__')(1)"),
    ("operator_attrgetter_str_subclass",
     "import operator\nclass S(str):\n    pass\noperator.attrgetter(S('__class__'))(1)"),
    ("operator_methodcaller", "import operator\noperator.methodcaller('__reduce_ex__', 2)(1)"),
    ("operator_setitem_module", "import operator, json\noperator.setitem(json, 'x', 1)"),
    ("functools_update_wrapper_globals",
     "import functools, json\ndef f():\n    pass\n"
     "functools.update_wrapper(f, json.dumps, assigned=(), updated=('__globals__',))"),
    ("functools_wraps_names",
     "import functools\ndef f():\n    pass\nfunctools.wraps(f, assigned=('__code__',))(f)"),
    ("functools_partial_getattr", "import functools\nfunctools.partial(getattr, (), '__class__')()"),
    ("functools_total_ordering_builtin", "import functools\nfunctools.total_ordering(dict)"),
    ("deepcopy_memo_leak",
     "import copy, random\nm = {}\ncopy.deepcopy(random.random, m)\n[v for v in m.values() if type(v) is list][0]"),
    ("copy_module", "import copy, json\ngetattr(copy.copy(json), '__dict__')"),
    # --- module attribute chains and imports
    ("statistics_sys", "import statistics\nstatistics.sys.modules['os'].system('touch MARKER_PATH')"),
    ("getattr_module_sys", "import statistics\ngetattr(statistics, 'sys')"),
    ("from_json_import_decoder", "from json import decoder\ndecoder"),
    ("from_statistics_import_sys", "from statistics import sys\nsys"),
    ("fractions_re", "import fractions\nfractions.re"),
    ("datetime_capsule", "import datetime\ndatetime.datetime_CAPI"),
    ("import_dotted", "import collections.abc"),
    ("import_os", "import os\nos.system('touch MARKER_PATH')"),
    ("import_sys", "import sys\nsys.modules"),
    ("import_subprocess", "import subprocess"),
    ("import_builtins", "import builtins\nbuiltins.open('SECRET_PATH').read()"),
    ("dunder_import", "__import__('os')"),
    ("import_via_getattr", "getattr(__builtins__, '__import__')('os')"),
    ("importlib", "import importlib\nimportlib.import_module('os')"),
    ("pickle", "import pickle"),
    ("ctypes", "import ctypes"),
    ("codecs_open", "import codecs\ncodecs.open('SECRET_PATH').read()"),
    ("io_fileio", "import io\nio.FileIO('SECRET_PATH').read()"),
    ("io_open", "import io\nio.open('SECRET_PATH').read()"),
    ("typing_eval", "import typing"),
    ("inspect", "import inspect"),
    ("gc_referrers", "import gc"),
    ("relative_import", "from . import x"),
    # --- the primitives
    ("del_primitive", "del worker"),
    ("rebind_primitive", "worker = None"),
    ("rebind_primitive_global", "def f():\n    global worker\n    worker = 1\nf()"),
    ("rebind_primitive_for", "for worker in [1]:\n    pass"),
    ("rebind_primitive_import", "import json as worker"),
    ("rebind_primitive_walrus", "[(worker := i) for i in range(2)]"),
    ("rebind_primitive_def", "def worker():\n    return 1"),
    ("primitive_non_plain_arg", "worker(lambda: 0)"),
    ("primitive_unencodable_int", "worker(10 ** 5000)"),
]

# Issue 9: the copy/reduce/MethodType family and its variants, policy bypasses (Enum
# functional API, ABC registration, class keywords) and the interpreter-type constructors.
_A = "class A:\n    def m(self):\n        pass\n"
_N = "import copy, collections, functools, re\nN = collections.namedtuple('__globals__', 'a')\n"
_E = "import re\nE = re.RegexFlag.mro()[5]\n"
ISSUE9: list[tuple[str, str]] = [
    ("i9_copy_method_namedtuple_getattr",
     _N + _A + "g = copy.copy(type(A().m)(N, getattr))\ng['sys'].modules['os'].system('touch MARKER_PATH')"),
    ("i9_copy_method_rlimit_then_open",
     _N + _A + "g = copy.copy(type(A().m)(N, getattr))\nr = g['sys'].modules['resource']\n"
     "r.setrlimit(r.RLIMIT_NOFILE, (1024, 1024))\ng['_builtins'].open('SECRET_PATH').read()"),
    ("i9_deepcopy_method_namedtuple", _N + _A + "copy.deepcopy(type(A().m)(N, getattr))"),
    ("i9_method_type_call", _A + "type(A().m)(print, 1)"),
    ("i9_method_type_bind_primitive", _A + "type(A().m)(worker, 1)()"),
    ("i9_function_type", "type(worker)(None, {})"),
    ("i9_function_type_lambda", "F = type(lambda: 0)\nF(None, {})"),
    ("i9_builtin_function_type", "type(len)('x')"),
    ("i9_generator_type", "def g():\n    yield 1\ntype(g())(None)"),
    ("i9_subclass_method_type", _A + "class X(type(A().m)):\n    pass"),
    ("i9_subclass_function_type", "class X(type(worker)):\n    pass"),
    ("i9_type_three_args", "type('X', (), {'__getattr__': print})"),
    ("i9_type_of_type_three_args", "type(type(1))('X', (), {})"),
    ("i9_type_of_view", "type(type(len))(object)()"),
    ("i9_metaclass_view_call", "import re\ntype(re.RegexFlag)('X', (), {})"),
    ("i9_view_private_attr", "getattr(type(len), '_t')"),
    ("i9_partial_method_type", _N + _A + "functools.partial(type(A().m), N)(getattr)"),
    ("i9_map_method_type", _N + _A + "list(map(type(A().m), [N], [getattr]))"),
    ("i9_operator_call_method_type", "import operator\n" + _A + "operator.call(type(A().m), print, 1)"),
    ("i9_copy_bound_method", "import copy\n" + _A + "copy.copy(A().m)"),
    ("i9_copy_classmethod_bound",
     "import copy\nclass A:\n    @classmethod\n    def m(cls):\n        pass\ncopy.copy(A.m)"),
    ("i9_copy_renamed_method_update_wrapper",
     _N + "def f(self):\n    pass\nfunctools.update_wrapper(f, N)\nclass A:\n    m = f\ncopy.copy(A().m)"),
    ("i9_copy_renamed_method_wraps",
     _N + "@functools.wraps(N)\ndef f(self):\n    pass\nclass A:\n    m = f\ncopy.copy(A().m)['sys']"),
    ("i9_deepcopy_list_with_method", "import copy\n" + _A + "copy.deepcopy([1, {'k': A().m}])"),
    ("i9_deepcopy_ordereddict_with_method",
     "import copy, collections\n" + _A + "copy.deepcopy(collections.OrderedDict(a=A().m))"),
    ("i9_deepcopy_instance_with_method",
     "import copy\n" + _A + "class B:\n    pass\nb = B()\nb.x = A().m\ncopy.deepcopy(b)"),
    ("i9_userdict_deepcopy_with_method",
     "import copy, collections\n" + _A + "class U(collections.UserDict):\n    pass\ncopy.deepcopy(U(x=A().m))"),
    ("i9_copy_generator", "import copy\ndef g():\n    yield 1\ncopy.copy(g())"),
    ("i9_deepcopy_generator_frame", "import copy\ndef g():\n    yield 1\ngetattr(copy.deepcopy(g()), 'gi_frame')"),
    ("i9_copy_globals", "import copy\ngetattr(copy.copy, '__globals__')"),
    ("i9_copy_reduce_direct", _A + "getattr(A().m, '__reduce__')()"),
    ("i9_method_get_descriptor", "def f(self):\n    pass\ngetattr(f, '__get__')(json)"),
    ("i9_class_defines_reduce_ex", "class A:\n    def __reduce_ex__(self, p):\n        return (print, ('x',))"),
    ("i9_class_attr_reduce", "class A:\n    __reduce__ = print"),
    ("i9_setattr_reduce_ex", "class A:\n    pass\nsetattr(A, '__reduce_ex__', print)"),
    ("i9_enum_reachable_functional", _E + "E('X', 'a b')"),
    ("i9_enum_functional_getattr", _E + "X = E('X', {'__getattr__': lambda s, n: 1})\nX.a.anything"),
    ("i9_enum_functional_reduce_ex_plant",
     _E + "import copy, json\n"
     "X = E('X', {'__reduce_ex__': lambda s, p: (setattr, (json.JSONDecoder, 'planted', 1))})\n"
     "copy.copy(X.a)\njson.JSONDecoder.planted"),
    ("i9_enum_functional_name_global", _E + "import copy\nX = E('__globals__', 'a')\nX"),
    ("i9_enum_functional_type_kw", _E + "E('X', 'a', type=int)"),
    ("i9_intflag_functional", "import re\nF = re.RegexFlag.mro()[1]\nF('X', 'a b')"),
    ("i9_flag_functional", "import re\nF = re.RegexFlag.mro()[4]\nF('X', {'_missing_': print})"),
    ("i9_abc_register_mapping",
     "import collections\nM = collections.UserDict.mro()[2]\nclass Z:\n    pass\nM.register(Z)"),
    ("i9_abc_register_mutable_mapping",
     "import collections\nM = collections.UserDict.mro()[1]\nclass Z:\n    pass\nM.register(Z)\nisinstance(Z(), M)"),
    ("i9_abc_register_builtin",
     "import collections\nM = collections.UserDict.mro()[3]\nM.register(int)"),
    ("i9_class_keyword", "class B:\n    pass\nclass C(B, flag=1):\n    pass"),
    ("i9_class_keyword_splat", "class C(**{'flag': 1}):\n    pass"),
    ("i9_class_keyword_nested", "def f():\n    class C(flag=1):\n        pass\n    return C\nf()"),
]
ESCAPES += ISSUE9

# ---------------------------------------------------------------------------------------------
# Independent red team (after issue 9): each row escaped or stalled the host on branch issue9.

_CP = "import functools\ndef f(self):\n    return None\n"
REDTEAM: list[tuple[str, str]] = [
    # F1: a stdlib instance's attribute used as a name (cached_property.attrname), after
    # update_wrapper copied object.__dict__ (its __getattribute__ slot wrapper) into an instance
    ("rt_f1_cached_property_getattribute",
     (_CP + "class B:\n    x = functools.cached_property(f)\nb = B()\nfunctools.update_wrapper(b, object)\n"
     "B.x.attrname = '__getattribute__'\nga = b.x\ng = ga(getattr, '__globals__')\n"
     "g['sys'].modules['os'].system('touch MARKER_PATH')")),
    ("rt_f1_cached_property_attrname_write",
     "import functools\nclass C:\n    x = functools.cached_property(lambda s: 1)\nC.x.attrname = '__dict__'\nC().x"),
    # F1b: the real str.format under a public name in an instance dict
    ("rt_f1b_update_wrapper_str_format",
     ("import functools\nclass B:\n    pass\nb = B()\nfunctools.update_wrapper(b, str)\n"
     "b.format('{0.__globals__[sys].modules[os]}', getattr)")),
    ("rt_f1b_update_wrapper_function_str_format",
     ("import functools\ndef w():\n    pass\nfunctools.update_wrapper(w, str)\n"
     "w.format('{0.__globals__[sys].modules[os]}', getattr)")),
    ("rt_f1b_wraps_str_format",
     "import functools\n@functools.wraps(str)\ndef w():\n    pass\nw.format('{0.__globals__}', getattr)"),
    # F1c: a reducer planted in an instance dict, then copy's _reconstruct calls the real setattr
    ("rt_f1c_deepcopy_plants_on_stdlib_class",
     ("import copy, functools, json\ndef red(p):\n    return (lambda: json.JSONDecoder, (), (None, {'planted': 1}))\n"
     "class B:\n    x = functools.cached_property(lambda s: red)\nB.x.attrname = '__reduce_ex__'\nb = B()\nb.x\n"
     "copy.deepcopy(b)\njson.JSONDecoder.planted")),
    ("rt_f1c_reconstruct_sandboxmodule_repr",
     ("import copy, functools, json\nM = type(json)\n"
     "def red(p):\n    return (lambda: M, (), (None, {'__repr__': lambda s: 'pwned'}))\n"
     "class D:\n    x = functools.cached_property(lambda s: red)\nD.x.attrname = '__reduce_ex__'\nd = D()\nd.x\n"
     "copy.deepcopy(d)\nrepr(json)")),
    ("rt_f1c_reconstruct_guard_defaults",
     ("import copy, functools\ndef red(p):\n    return (lambda: getattr, (), (None, {'__defaults__': ('DEFAULT',)}))\n"
     "class D2:\n    x = functools.cached_property(lambda s: red)\nD2.x.attrname = '__reduce_ex__'\nd = D2()\nd.x\n"
     "copy.deepcopy(d)\nassert getattr(1, '__class__') == 'DEFAULT'")),
    ("rt_f1c_copy_shallow_reduce_ex",
     ("import copy, functools, json\ndef red(p):\n    return (lambda: json.JSONDecoder, (), (None, {'planted2': 1}))\n"
     "class B:\n    x = functools.cached_property(lambda s: red)\nB.x.attrname = '__reduce_ex__'\nb = B()\nb.x\n"
     "copy.copy(b)\njson.JSONDecoder.planted2")),
    # F5: one primitive call, inside the policy, held the host ~10 s decoding 4M empty lists
    ("rt_f5_wire_bomb_4M", "worker([[]] * 4_000_000)"),
    ("rt_f5_wire_bomb_dicts", "worker([{}] * 2_000_000)"),
]
ESCAPES += REDTEAM

# Issue 26: three writes the policy refused only further down (closed at the type views and
# constructors), and a C type the cell could not name (type() hands out a view of it now).
_CPS = "import functools\nclass CP(functools.cached_property):\n    pass\n"
ISSUE26: list[tuple[str, str]] = [
    ("i26_generic_alias_wraps_any_object",
     "import json\nd = json.JSONDecoder()\ntype(list[int])(lambda: d, ())()"),
    ("i26_generic_alias_view_subclass", "class G(type(list[int])):\n    pass"),
    ("i26_cached_property_subclass_private_attrname",
     _CPS + "class B:\n    x = CP(lambda s: 'planted')\nB.x.attrname = '__deepcopy__'\nB().x"),
    ("i26_cached_property_subclass_dunder_dict",
     _CPS + "class B:\n    x = CP(lambda s: {})\nB.x.attrname = '__dict__'\nB().x"),
    ("i26_cached_property_subclass_non_str_name",
     _CPS + "class B:\n    x = CP(lambda s: 1)\nB.x.attrname = 7\nB().x"),
    ("i26_module_type_constructs_a_module", "import json\ntype(json)('fake', {'_private': 1})"),
    ("i26_module_type_builds_from_copy",
     "import json, copy\nM = type(json)\nm = copy.copy(json)\nM('x', {'__deepcopy__': print})"),
    ("i26_unexported_c_type_constructor", "import json\nS = type(json.JSONDecoder().scan_once)\nS(json.JSONDecoder())"),
    ("i26_strptime_stays_sandboxed", "import time\ngetattr(time.strptime, '__globals__')"),
]
ESCAPES += ISSUE26

# (name, code, acceptable limits or error types)
RESOURCES: list[tuple[str, str, set[str]]] = [
    ("infinite_loop", "while True:\n    pass", {"timeout"}),
    ("sleep", "import time\ntime.sleep(100)", {"timeout"}),
    ("bigint_in_c", "x = 10 ** 10 ** 9", {"timeout", "memory"}),
    ("regex_backtracking", "import re\nre.match('(a+)+$', 'a' * 64 + 'b')", {"timeout"}),
    ("recursion_bomb", "def f():\n    try:\n        f()\n    except RecursionError:\n        f()\nf()",
     {"timeout", "RecursionError"}),
    ("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)", {"RecursionError"}),
    ("memory_string", "s = 'x' * 10 ** 10", {"memory"}),
    ("memory_list", "l = [0] * 10 ** 10", {"memory"}),
    ("memory_growth", "l = []\nwhile True:\n    l.append('x' * 10 ** 6)", {"memory"}),
    ("memory_growth_small_items", "l = []\nwhile True:\n    l.append([0] * 1000)", {"memory", "timeout"}),
    ("memory_dict_bomb", "d = {i: str(i) * 50 for i in range(10 ** 9)}", {"memory", "timeout"}),
    ("memory_bytearray", "b = bytearray(10 ** 10)", {"memory"}),
    ("huge_comprehension", "l = [i for i in range(10 ** 10)]", {"memory", "timeout"}),
    ("output_flood", "while True:\n    print('x' * 1000)", {"timeout"}),
    ("fork_bomb_os", "import os\nwhile True:\n    os.fork()", {"ImportError"}),
    ("fork_bomb_multiprocessing", "import multiprocessing", {"ImportError"}),
    ("threads", "import threading", {"ImportError"}),
    ("fork_via_subprocess", "import subprocess\nsubprocess.Popen(['sh'])", {"ImportError"}),
    ("deep_nesting_compile", "x = " + "-" * 100_000 + "1", {"SyntaxError", "RecursionError", "MemoryError"}),
    ("nested_parens", "x = " + "(" * 10_000 + ")" * 10_000, {"SyntaxError"}),
]


# The timeout of a case that must touch every page up to the memory limit before it reaches it.
# memory_growth fills 256 MB a megabyte at a time: about 60,000 page faults, 0.15-0.5 s on the
# 2-core VM CI runs on (system time, runnable throughout). But that VM hands free pages back to
# its hypervisor (virtio-balloon free page reporting), and a first touch of such a page costs
# 10-30 us instead of 2-3 (60,000 x 25 us is 1.5 s), for root and non-root hosts alike: while
# other jobs loaded the machine, 3 of 22 runs of this table (2 as 'nobody', 1 as root) took over
# 1 s and were stopped by the timeout instead.
# The case tests the memory limit, so it gets a timeout that leaves the limit room to act: a
# timeout result still fails it.
REACH_MEMORY_S = {"memory_growth": 5.0}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("redteam")
    secret = d / "secret.txt"
    secret.write_text(SECRET)
    marker = d / "marker"
    calls: list = []
    sb = Sandbox(
        primitives={"worker": lambda *a, **k: calls.append(a) or "ok", "context": "ctx"},
        config=SandboxConfig(timeout_s=1.0, memory_mb=256, output_limit=2000),
    )
    assert sb.run("canary = [1, 2, 3]").ok
    yield sb, secret, marker
    sb.close()


def _sub(code: str, secret, marker) -> str:
    return code.replace("SECRET_PATH", str(secret)).replace("MARKER_PATH", str(marker))


def _assert_alive(sb):
    after = sb.run("1+1")
    assert after.value == "2", after
    assert sb.get("canary") == [1, 2, 3]
    assert sb.run("worker").value.startswith("<function worker")


def test_table_is_big_enough():
    assert len(ESCAPES) >= 40
    assert len(ISSUE9) >= 40
    assert len({n for n, _ in ESCAPES}) == len(ESCAPES)


@pytest.mark.parametrize("name,code", ESCAPES, ids=[n for n, _ in ESCAPES])
def test_escape_fails_cleanly(env, name, code):
    sb, secret, marker = env
    res = sb.run(_sub(code, secret, marker))
    assert not res.ok, f"{name} did not fail: {res}"
    assert res.error and res.error_type
    assert "Traceback" not in res.error
    assert "/repl/" not in res.error and ".venv" not in res.error  # no host paths
    blob = f"{res.stdout}\n{res.value}\n{res.error}"
    assert SECRET not in blob
    assert not marker.exists()
    _assert_alive(sb)


@pytest.mark.parametrize("name,code,expected", RESOURCES, ids=[n for n, _, _ in RESOURCES])
def test_resource_attack_is_stopped(env, name, code, expected):
    sb, secret, marker = env
    timeout = REACH_MEMORY_S.get(name, 1.0)
    res = sb.run(code, timeout_s=timeout)
    assert not res.ok, f"{name} did not fail: {res}"
    got = {res.limit, res.error_type} - {None}
    assert got & expected, f"{name}: expected one of {expected}, got {res.limit=} {res.error_type=} {res.error=}"
    assert res.duration_s < timeout + 1.5, f"{name} took {res.duration_s:.2f}s"
    assert len(res.stdout) < 2000 + 200
    _assert_alive(sb)


def test_get_and_call_refuse_what_the_host_would_refuse():
    """A value the wire cannot carry (an int json cannot write, a message over max_message_mb)
    is refused by the sandbox before sending: a clean error, never a dead worker or a lost
    namespace (the host's get() runs outside any cell, where there is no backup)."""
    with Sandbox(primitives={"worker": lambda *a: "ok"},
                 config=SandboxConfig(timeout_s=2.0, memory_mb=256, max_message_mb=1)) as sb:
        assert sb.run("canary = [1, 2, 3]\nhuge = 10 ** 5000\nbig = ['y' * 1000] * 3000").ok
        for name in ("huge", "big"):
            with pytest.raises(TypeError, match="not plain data"):
                sb.get(name)
            _assert_alive(sb)
        res = sb.run("worker(big)")
        assert res.error_type == "TypeError" and "over the limit" in res.error and not res.restored
        _assert_alive(sb)


def test_console_dash_c_is_closed_too(tmp_path):
    """Issue 9: ``python -m repl -c ...`` printed a planted secret through the same escape."""
    import subprocess
    import sys
    from pathlib import Path

    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    code = ISSUE9[1][1].replace("SECRET_PATH", str(secret))
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "repl", "--no-history", "-c", code], cwd=root,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 1, proc
    assert SECRET not in proc.stdout + proc.stderr
    assert proc.stdout.strip().count("\n") == 0 and proc.stdout.startswith("TypeError: cannot create method")




def test_redteam_rows_fail_fast(env):
    """F5: the item cap holds on the sending side: refused in the sandbox, before the host
    decodes anything (it took 16 s, 9.5 s of it decoding in the host, on issue9)."""
    sb, _, _ = env
    t0 = time.monotonic()
    res = sb.run("worker([[]] * 4_000_000)")
    assert res.error_type == "TypeError" and "items" in res.error, res
    assert time.monotonic() - t0 < 3.0 and res.decode_s < 0.5, res
    _assert_alive(sb)


def test_policy_defence_in_depth_units():
    """Each F1 defence on its own, below the first one that stops the reproducers."""
    import types as _types

    from repl import _policy

    class Holder:
        pass

    h = Holder()
    h.__dict__.update(ga=object.__getattribute__, fmt=str.format, bound="{0}".format, fine=len)
    for name in ("ga", "fmt", "bound"):
        with pytest.raises(AttributeError):
            _policy.guarded_getattr(h, name)
    assert _policy.guarded_getattr(h, "fine") is len
    _policy.SANDBOX_CLASSES.add(Holder)
    try:
        h2 = Holder()
        h2.__dict__["__reduce_ex__"] = lambda p: (print, ("x",))
        with pytest.raises(TypeError, match="private attributes"):
            _policy.check_copyable(h2)
        with pytest.raises(TypeError):  # a stdlib instance: attributes read-only, items writable
            _policy.guarded_write(_types.SimpleNamespace()).a = 1
        import collections

        c = collections.Counter()
        _policy.guarded_write(c)["k"] = 1
        assert c["k"] == 1
    finally:
        _policy.SANDBOX_CLASSES.discard(Holder)


# --- host-level rows: the escape is simulated with the test hook (real builtins in cells) ----

_SLEEPER = ["sleep", "60"]


def _escaped_box(**cfg):
    import warnings

    c = {"timeout_s": 1.0, "memory_mb": 256, "unsafe_real_builtins": True, **cfg}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sandbox(primitives={"bigdoc": lambda: "x" * 8_000_000}, config=SandboxConfig(**c))


_LYING_BACKUP = '''
import sys
child = sys.modules['repl._child']
def _backup_wait(fd, child=child, TARGET=TARGET):
    import socket, os
    child.S.chan.close()
    sock = socket.socket(fileno=fd)
    msg, _ = child.recv_msg(sock)
    if msg.get("op") != "takeover":
        os._exit(0)
    child.S.chan = sock
    child.send_msg(sock, {"op": "ready", "pid": TARGET})
child._backup_wait = _backup_wait
'''


@pytest.mark.parametrize("target", ["victim", "victim_group", "supervisor", "host"])
def test_f2_backup_claiming_a_foreign_pid(target):
    """F2: the host SIGKILLed whatever pid the (compromised) backup put in its 'ready' frame:
    an unrelated process, a process group (os.kill(-pgid) fallback), the host itself. The pid
    now comes from SCM_CREDENTIALS and is checked to be a live process of the session."""
    import subprocess

    victim = subprocess.Popen(_SLEEPER, start_new_session=(target == "victim_group"))
    try:
        with _escaped_box() as sb:
            pid = {"victim": victim.pid, "victim_group": -victim.pid, "supervisor": sb._proc.pid,
                   "host": os.getpid()}[target]
            res = sb.run(f"TARGET = {pid}\n" + _LYING_BACKUP)
            assert res.ok, res
            for _ in range(2):  # the lying backup takes over, then is killed in turn
                res = sb.run("while True:\n    pass")
                assert res.limit == "timeout" and res.restored, res
                assert sb._pid not in (victim.pid, sb._proc.pid, os.getpid()) and sb._pid > 1
            time.sleep(0.2)
            assert victim.poll() is None, "the host killed a process that is not the sandbox's"
            assert sb.alive and sb.run("1+1").value == "2"
    finally:
        victim.kill()
        victim.wait()


def test_f2_frame_from_a_forked_process_is_refused():
    """F6/F2: a process forked by a cell wrote a 'done' with the right nonce on the shared
    channel and the host took it. Frames are accepted only from the worker's pid (root
    sandbox here, so that RLIMIT_NPROC does not stop the fork first)."""
    with _escaped_box(drop_privileges=False, timeout_s=3.0) as sb:
        res = sb.run(
            _RAISE_NPROC + "import os, sys, time\nc = sys.modules['repl._child']\n"
            "if os.fork() == 0:\n"
            "    c.send_msg(c.S.chan, {'op': 'done', 'nonce': c.S.nonce, 'stdout': 'forged', 'value': 'forged',"
            " 'error': None})\n    os._exit(0)\n"
            "time.sleep(2)\n'honest'")
        assert res.value != "forged" and res.stdout != "forged", res
        assert res.restored and "protocol error" in (res.error or ""), res
        assert sb.run("1+1").value == "2"


# An escaped cell first raises its soft RLIMIT_NPROC (0 during a cell) to the hard limit, so that
# the layer under test is the host's, not the rlimit: a no-op for a root sandbox (drop_privileges
# =False), the real escape for a non-root host (tests/test_repl_nonroot.py), where the hard limit is
# the host uid's own.
_RAISE_NPROC = ("import resource\n"
                "resource.setrlimit(resource.RLIMIT_NPROC, (resource.getrlimit(resource.RLIMIT_NPROC)[1],) * 2)\n")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("then", ["next_cell", "timeout"])
def test_f6_forked_processes_do_not_outlive_the_cell(then):
    """F6: a process forked by an escaped cell kept running after the cell and after a
    timeout + restore. Everything but the worker is killed after each cell and takeover."""
    with _escaped_box(drop_privileges=False, timeout_s=2.0) as sb:
        res = sb.run(_RAISE_NPROC + "import os, time\npid = os.fork()\n"
                     "if pid == 0:\n    time.sleep(30)\n    os._exit(0)\npid")
        assert res.ok, res
        child = int(res.value)
        if then == "timeout":
            assert sb.run("while True:\n    pass").limit == "timeout"
        deadline = time.monotonic() + 3.0
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "a process forked by a cell outlived it"
        assert sb.run("1+1").value == "2"


def test_f6_no_fork_during_a_cell_for_a_session_uid():
    """F6: with a session uid (root host), RLIMIT_NPROC's hard cap is worker + backup: a cell
    that raises its soft limit back to the hard one still cannot fork."""
    if os.getuid() != 0:
        pytest.skip("the per-session uid (and so the NPROC cap) needs a root host")
    with _escaped_box() as sb:
        res = sb.run("import os, resource\nresource.setrlimit(resource.RLIMIT_NPROC, "
                     "(resource.getrlimit(resource.RLIMIT_NPROC)[1],) * 2)\nos.fork() or os._exit(0)")
        assert res.error_type == "BlockingIOError", res
        for _ in range(3):  # backups still work, kill and restore included
            assert sb.run("x = 1").ok
            assert sb.run("while True:\n    pass").restored
        assert sb.run("x").value == "1"


def test_f3_queued_calls_do_not_stall_the_host():
    """F3: calls queued for a primitive with a large result, replies never read: each reply
    send blocked 30 s (timeout_s=1 took 60 s). Sends now end at the cell's deadline."""
    with _escaped_box() as sb:
        t0 = time.monotonic()
        res = sb.run("import sys, time\nc = sys.modules['repl._child']\nfor i in range(3):\n"
                     "    c.send_msg(c.S.chan, {'op': 'call', 'nonce': c.S.nonce, 'name': 'bigdoc', "
                     "'args': [], 'kwargs': {}})\ntime.sleep(600)")
        assert time.monotonic() - t0 < 6.0, res
        assert res.restored and res.limit == "timeout", res
        assert sb.run("1+1").value == "2"


def test_f4_forged_done_is_cut_on_the_host():
    """F4: a forged 'done' carried 100 M characters of stdout past output_limit=2000. The
    host cuts what it is given, and refuses a control frame larger than any honest one."""
    with _escaped_box(output_limit=2000, timeout_s=5.0) as sb:
        send = ("import sys, time\nc = sys.modules['repl._child']\n"
                "c.send_msg(c.S.chan, {'op': 'done', 'nonce': c.S.nonce, 'stdout': 'A' * N, 'value': 'v' * N, "
                "'error': None})\ntime.sleep(1)\n")
        res = sb.run("N = 50_000\n" + send)
        assert len(res.stdout) <= 2200 and len(res.value or "") <= 2200, (len(res.stdout), len(res.value or ""))
        t0 = time.monotonic()
        res = sb.run("N = 20_000_000\n" + send)
        assert time.monotonic() - t0 < 3.0 and len(res.stdout) <= 2200 and res.restored, res
        assert sb.run("1+1").value == "2"


def test_f4_json_bomb_frame_is_refused_before_decoding():
    """F4: a 24 MB frame of empty lists held the host 9 s in json.loads (665 MB). Counted
    before decoding now, and refused."""
    def status_kb(field: str) -> int:
        line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
        return int(line.split()[1])

    with _escaped_box(timeout_s=10.0) as sb:
        try:
            with open("/proc/self/clear_refs", "w") as f:  # resets this process's peak RSS (VmHWM) to its current RSS
                f.write("5")
            rss_before = status_kb("VmRSS")
        except PermissionError:  # a non-root host, not dumpable (protect_host_proc): its /proc files are root's
            rss_before = status_kb("VmHWM")  # the peak so far: only a higher peak counts (a weaker check)
        t0 = time.monotonic()
        res = sb.run("import sys, struct, time\nc = sys.modules['repl._child']\n"
                     "body = b'{\"op\":\"call\",\"nonce\":\"' + c.S.nonce.encode()"
                     " + b'\",\"name\":\"bigdoc\",\"args\":['"
                     " + b'[],' * 4_000_000 + b'[]],\"kwargs\":{}}'\n"
                     "c.S.chan.sendall(struct.pack('>I', len(body)) + body)\ntime.sleep(5)")
        assert time.monotonic() - t0 < 4.0, res
        assert res.restored and "protocol error" in res.error, res
        assert res.decode_s < 1.0, res
        assert status_kb("VmHWM") - rss_before < 200_000  # KB: the host's peak grew by less than 200 MB (was 665 MB)
        assert sb.run("1+1").value == "2"


def test_f7_console_escapes_control_characters(capsys):
    """F7: the console wrote OSC 52 (clipboard) and clear-screen sequences raw."""
    from repl.console import main as console_main

    rc = console_main(["--no-history", "-q", "-c",
                       "print(chr(27) + ']52;c;aGk=' + chr(7) + chr(27) + '[2J')\nchr(27) + '[31m' + chr(0x9b)"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b]52;c;aGk=\\x07\\x1b[2J" in out and "\\x1b[31m\\x9b" in out


def test_f7_final_prints_are_escaped(capsys):
    from repl.console import main as console_main

    console_main(["--no-history", "-q", "-c", "s = 'a' + chr(27) + '[2J'\nFINAL(s)\nFINAL_VAR('s')"])
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("a\\x1b[2J") >= 2, out


def test_class_statement_enum():
    """Not security: class E(Enum) failed (the sandbox's metaclass skipped __prepare__)."""
    with Sandbox() as sb:
        res = sb.run("import re\nEnum = re.RegexFlag.mro()[5]\nclass C(Enum):\n    a = 1\n    b = 2\n[C(1), C.b.value]")
        assert res.value == "[<C.a: 1>, 2]", res


def test_f2_set_worker_refuses_pids_outside_the_session():
    """F2, the check itself: no pid outside the session's process group (and uid) is adopted,
    whatever the number (0 and -1 were os.kill(0/-1) on issue9: the host's group, everything)."""
    import subprocess

    victim = subprocess.Popen(_SLEEPER)
    try:
        with Sandbox() as sb:
            worker = sb._pid
            for pid in (-1, 0, 1, os.getpid(), sb._proc.pid, victim.pid, -victim.pid, 2**40, "7"):
                assert not sb._set_worker(pid), pid
                assert sb._pidfd is None and sb._pid == 0
            assert sb._set_worker(worker) and sb.run("1+1").value == "2"
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


# --- issue 26: the host side. Target: nothing a cell or a compromised child sends keeps the host
# busy past the cell timeout + 1 s (asserted with + 2 s here: this machine is shared and noisy).

_STREAM = '''
import sys, struct, time
c = sys.modules['repl._child']
nonce = c.S.nonce if GOOD else 'f' * 32
item = ITEM
n = TOTAL // (len(item) + 1)
pre = ('{"op":"call","nonce":"' + nonce + '","name":"bigdoc","args":[[').encode()
post = b'0]],"kwargs":{}}'
chunk = (item + ',').encode() * max(1, (1 << 20) // (len(item) + 1))
reps = n * (len(item) + 1) // len(chunk)
c.S.chan.sendall(struct.pack('>I', len(pre) + reps * len(chunk) + len(post)) + pre)
for _ in range(reps):
    c.S.chan.sendall(chunk)
    time.sleep(PAUSE)
c.S.chan.sendall(post)
time.sleep(600)
'''


def _stream(sb, good: bool, item: str, total: int = 254 * 2**20, pause: float = 0.0):
    code = f"GOOD = {good}\nITEM = {item}\nTOTAL = {total}\nPAUSE = {pause}\n" + _STREAM
    t0 = time.monotonic()
    res = sb.run(code)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("item", ["'9' * 3612", "'\"' + 'x' * 1000 + '\"'"], ids=["big-ints", "strings"])
def test_i26_a_254_mb_frame_is_read_and_decoded_under_the_deadline(item):
    """Issue 26, 3: a compromised child streamed a 254 MB frame and the host read and decoded all of
    it (12.2 s with a 2 s timeout; 5.9 s for big ints on this branch before the fix). Reading,
    counting and json.loads now stop at the cell's deadline; the namespace survives. The read
    stopped only when the socket was momentarily empty, so a sender that never paused was read to
    the frame's end: 4.1-4.9 s in about 1 run of 3 (root and 'nobody' alike). Now 266 MB, charged
    5.3 s to decode, is refused from its header with 2 s left."""
    with _escaped_box(timeout_s=2.0, memory_mb=512) as sb:
        assert sb.run("keep = 26").ok
        res, took = _stream(sb, True, item)
        print(f"254 MB frame of {item}: run() returned after {took:.2f} s (timeout 2 s), decode {res.decode_s:.2f} s")
        # the issue's target itself (timeout + 1 s), not this file's noisy-machine + 2 s
        assert took < 2.0 + 1.0, (took, res)
        assert res.restored and res.error_type in ("TimeoutError", "SandboxError"), res
        assert sb.run("keep").value == "26"


def test_i26_a_frame_with_a_wrong_nonce_is_refused_before_its_body():
    """Issue 26, 3: a frame with a wrong nonce was decoded (8.8 s) before the nonce was checked.
    The header, op and nonce are checked from the frame's first bytes, before its body is read."""
    with _escaped_box(timeout_s=2.0, memory_mb=512) as sb:
        assert sb.run("keep = 26").ok
        res, took = _stream(sb, False, "'9' * 3612")
        print(f"254 MB frame with a wrong nonce: refused after {took:.3f} s")
        assert took < 1.0 and res.restored, (took, res)
        assert "nonce" in res.error and "before reading" in res.error, res
        # an op the host does not expect now (a 'got' during a cell) is refused the same way
        res = sb.run("import sys, struct, time\nc = sys.modules['repl._child']\n"
                     "c.S.chan.sendall(struct.pack('>I', 200 * 2**20) + b'{\"op\":\"got\",\"nonce\":\"' "
                     "+ c.S.nonce.encode() + b'\",')\ntime.sleep(600)")
        assert res.restored and "before reading" in res.error and res.duration_s < 1.0, res
        assert sb.run("keep").value == "26"


def test_i26_a_slow_frame_is_read_only_until_the_deadline():
    """A frame that trickles in (1 MB every 0.2 s) is read under the cell's deadline, not to its end:
    40 MB (charged 0.8 s to decode) until less than 0.8 s is left."""
    with _escaped_box(timeout_s=2.0) as sb:
        res, took = _stream(sb, True, "'1' * 100", total=40 * 2**20, pause=0.2)
        assert res.limit == "timeout" and took < 2.0 + 1.0, (took, res)
        assert sb.run("1 + 1").value == "2"


def test_i26_colliding_dict_keys_do_not_delay_the_cell(monkeypatch):
    """Issue 26, 2: dicts with colliding key hashes made run() return 2.7-5.7 s past its timeout
    (the host rebuilt them, under a fixed 5 s decode limit and 256 collisions per dict). Now more
    than 32 colliding keys in a dict are refused, and decoding stops at the cell's deadline."""
    from repl import _wire

    rebuild = [0.0]  # host seconds in from_wire, where colliding keys cost (json.loads does not hash)
    from_wire = _wire.from_wire

    def timed(*a, **k):
        t0 = time.monotonic()
        try:
            return from_wire(*a, **k)
        finally:
            rebuild[0] += time.monotonic() - t0

    monkeypatch.setattr(_wire, "from_wire", timed)
    calls = []
    with Sandbox(primitives={"worker": lambda *a: calls.append(1) or "ok"},
                 config=SandboxConfig(timeout_s=2.0, memory_mb=512)) as sb:
        assert sb.run("M = 2**61 - 1\nfew = {i * M: 0 for i in range(1, 31)}\n"
                      "many = {i * M: 0 for i in range(1, 40)}\nkeep = 26").ok
        assert sb.run("worker(few)").ok and calls == [1]  # 29 collisions: still plain data
        t0 = time.monotonic()
        res = sb.run("worker([many] * 2000)")
        assert res.error_type == "TypeError" and "collide" in res.error and time.monotonic() - t0 < 2.0 + 2.0, res
        with pytest.raises(SandboxError, match="collide"):
            sb.get("many")
        assert sb.get("keep") == 26 and calls == [1]
    # a compromised child sends, at once, a call whose dicts have colliding tuple keys with long
    # equal prefixes (each comparison then walks 100 KB), and reads the reply. The 66 MB frame gets
    # 5 s, so that it is always decoded (charged 1.3 s at the rate of cold memory); what is timed is
    # the rebuild. decode_s, which also holds counting and json.loads, is not: 0.5-1.9 s on the CI VM
    # (counting runs at 200 MB/s in Debian's -O2 Python, the non-root venv's; json.loads of 66 MB of
    # strings into cold memory took 0.1-1.6 s), whatever the keys.
    build = ("import sys, json\nM = 2**61 - 1\n"
             "d = {'$d': [[{'$t': ['x' * 100_000, 7 + i * M]}, 0] for i in range(1, KEYS)]}\n"
             "body = json.dumps({'op': 'call', 'nonce': 'N' * 32, 'name': 'bigdoc', 'args': [[d] * 20], "
             "'kwargs': {}}, separators=(',', ':')).encode()\nlen(body)")
    send = ("import sys, struct, time\nc = sys.modules['repl._child']\nhead = body[:body.index(b'N' * 32)]\n"
            "c.S.chan.sendall(struct.pack('>I', len(body)) + head + c.S.nonce.encode())\n"
            "c.S.chan.sendall(memoryview(body)[len(head) + 32:])\nbody = None\n"
            "c.recv_msg(c.S.chan)[0].get('message')")
    with _escaped_box(timeout_s=5.0, memory_mb=1024) as sb:
        # 32 collisions per dict (the most allowed: decoded, and bigdoc() refuses the argument), then 33
        for keys, answer in ((33, "positional"), (34, "collide")):
            assert sb.run(build.replace("KEYS", str(keys + 1)), timeout_s=60).ok
            rebuild[0] = 0.0
            t0 = time.monotonic()
            res = sb.run(send)
            took = time.monotonic() - t0
            print(f"20 dicts of {keys} colliding tuple keys: run() returned after {took:.2f} s (timeout 5 s), "
                  f"decode {res.decode_s:.2f} s, of which rebuilding {rebuild[0]:.2f} s")
            assert res.ok and answer in res.value and took < 5.0, (took, res)
            assert rebuild[0] < 0.5, rebuild
            assert sb.run("1 + 1").value == "2"


def test_i26_get_of_big_ints_comes_back_within_the_timeout():
    """Issue 26, 1: ``x = [int('9' * 3612)] * 70000`` then ``get('x')`` kept the host busy 21 s with
    a 2 s timeout (18.6 s on this branch before the fix): the sender counted each int as 8 bytes
    and nothing bounded the time. get() is now bounded by the cell timeout; the namespace survives."""
    with Sandbox(config=SandboxConfig(timeout_s=2.0, memory_mb=1024)) as sb:
        assert sb.run("canary = [1, 2]\nx = [int('9' * 3612)] * 70000\ny = [int('9' * 3612)] * 80000").ok
        t0 = time.monotonic()
        try:
            sb.get("x")
        except SandboxError as e:
            assert "2 s" in str(e) and "restored" in str(e), e
        took = time.monotonic() - t0
        print(f"get('x'): came back after {took:.2f} s (timeout 2 s)")
        assert took < 2.0 + 2.0
        # 289 MB of digits: refused by the sender at once, by its real size (not 80,000 x 8 bytes)
        t0 = time.monotonic()
        with pytest.raises(TypeError, match="over the limit"):
            sb.get("y")
        assert time.monotonic() - t0 < 2.0
        assert sb.get("canary") == [1, 2] and sb.stats().restarts == 0


def test_i26_ctrl_c_during_get_keeps_the_session():
    """Issue 26, 6: an interrupt while get() waits leaves no answer behind in the channel: the
    worker is stopped and its backup takes over, the names are kept (the next cell used to fail
    with a frame that did not belong to it)."""
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt

    with Sandbox(config=SandboxConfig(timeout_s=10.0, memory_mb=1024)) as sb:
        assert sb.run("canary = 5\nslow = [int('9' * 3612)] * 20000").ok
        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(KeyboardInterrupt):
                sb.get("slow")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert sb.get("canary") == 5 and sb.run("canary + 1").value == "6"
        assert sb.stats().restarts == 0
