"""The reachability walk (tests/reach_walk.py): no escape primitive is reachable from the
sandbox's builtins and allowed modules, and the walk does find a leak planted on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WALK = Path(__file__).with_name("reach_walk.py")


def _walk(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(WALK), *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_escape_primitive_is_reachable():
    res = _walk()
    print(f"reachability walk: {res['visited']} objects, {res['edges']} edges, depth {res['depth']}, "
          f"{res['seconds']} s")
    assert res["found"] == {}, f"escape primitives reachable from the sandbox: {res['found']}"
    assert res["depth"] >= 5 and res["visited"] >= 10_000  # the walk really walked
    assert res["seconds"] < 60


@pytest.mark.parametrize("plant,expected", [
    ("getattr", {"getattr"}),  # a real getattr left in an allowed module
    ("weak-type", {"MethodType", "FunctionType", "GenericAlias", "SandboxModule"}),  # type() handing them out again
    ("old-update-wrapper", {"str.format", "str.format_map"}),  # red team F1b, as on branch issue9
    ("stdlib-writes", {"attribute-writable stdlib instance (functools.cached_property)"}),  # red team F1
])
def test_the_walk_finds_a_planted_leak(plant, expected):
    res = _walk("--plant", plant)
    assert expected <= set(res["found"]), res
